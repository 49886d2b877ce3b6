"""Stopping a run promptly when its process is asked to stop (Ctrl-C, SIGTERM).

The command line's signal handler calls `request_stop`. Code that waits (the server for the
hospitals' replies, a baseline between epochs) calls `check`, which raises `StopRequested` once
a stop was requested: the round under way is abandoned and the run directory keeps its last
completed checkpoint. One flag per process: a process runs one command.
"""

from __future__ import annotations

import threading

_requested = threading.Event()


class StopRequested(Exception):
    """The process was asked to stop. An Exception, not a KeyboardInterrupt, so that a library
    thread that runs our code (Flower's ServerApp thread) ends quietly and reports it."""


def request_stop() -> None:
    _requested.set()


def stop_requested() -> bool:
    return _requested.is_set()


def check() -> None:
    if _requested.is_set():
        raise StopRequested("the run was asked to stop")


def interrupted(error: BaseException) -> bool:
    """Whether `error` ended a run because the process was asked to stop (not a failure)."""
    return isinstance(error, StopRequested | KeyboardInterrupt)
