"""Stopping a run promptly when its process is asked to stop (Ctrl-C, SIGTERM).

The command line's signal handler calls `request_stop`. Code that waits (the server for the
hospitals' replies, a baseline between epochs) calls `check`, which raises `StopRequested` once
a stop was requested: the round under way is abandoned and the run directory keeps its last
completed checkpoint. One flag per process: a process runs one command.

The handler also interrupts the main thread (KeyboardInterrupt), except inside `noticed_by_flag`:
there the main thread runs code that notices the flag itself and must not be interrupted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested = threading.Event()
_flag_noticed = threading.Event()  # inside `noticed_by_flag`


class StopRequested(Exception):
    """The process was asked to stop. An Exception, not a KeyboardInterrupt, so that a library
    thread that runs our code (Flower's ServerApp thread) ends quietly and reports it."""


def request_stop() -> None:
    _requested.set()


@contextmanager
def noticed_by_flag() -> Iterator[None]:
    """Inside this block a stop request only sets the flag. For Flower's simulation engine: its
    main thread, interrupted, would shut Ray down under threads still waiting on Ray, and Ray
    then ends the whole process (exit code 1). With the flag, the server ends its round, the
    engine waits for the hospitals' steps under way and shuts Ray down itself."""
    _flag_noticed.set()
    try:
        yield
    finally:
        _flag_noticed.clear()


def interrupts_main_thread() -> bool:
    return not _flag_noticed.is_set()


def stop_requested() -> bool:
    return _requested.is_set()


def check() -> None:
    if _requested.is_set():
        raise StopRequested("the run was asked to stop")


def interrupted(error: BaseException) -> bool:
    """Whether `error` ended a run because the process was asked to stop (not a failure)."""
    return isinstance(error, StopRequested | KeyboardInterrupt)
