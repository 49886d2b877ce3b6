"""The processes a command starts: started beside this interpreter, logged, and stopped with
every child they started (found through /proc, Linux)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # Flower's commands, from this environment
STOP_GRACE = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _parents_and_rss() -> tuple[dict[int, int], dict[int, int]]:
    parents, rss = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(pid)] = int(fields[1])
            rss[int(pid)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return parents, rss


def _below(parents: dict[int, int], root: int) -> list[int]:
    found = []
    for pid in parents:
        p = parents[pid]
        while p > 1 and p != root:
            p = parents.get(p, 0)
        if p == root:
            found.append(pid)
    return found


def descendants(root: int) -> list[int]:
    """Every living process below `root` (not `root` itself)."""
    return _below(_parents_and_rss()[0], root)


def tree_rss(root: int) -> int:
    """Resident memory of `root` and all its living descendants, in bytes."""
    parents, rss = _parents_and_rss()
    return sum(rss.get(pid, 0) for pid in [root, *_below(parents, root)])


def running(pid: int) -> bool:
    """Running, as opposed to ended or ended and waiting to be reaped (a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def with_environment(variable: str, value: str) -> list[int]:
    """Running processes whose environment sets `variable` to `value`: children inherit
    their parent's environment, so this finds them even after they were orphaned."""
    marker = f"{variable}={value}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0") and running(int(pid)):
                    found.append(int(pid))
        except OSError:
            continue  # ended meanwhile, or another user's
    return found


def flower_config(values: dict) -> str:
    """Flower's --run-config and --node-config syntax: JSON scalars are valid TOML values."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


class ProcessGroup:
    """Named processes started from this environment's commands, each logged to `logs/<name>.log`;
    `stop` (or leaving the `with` block) ends them and every process below them.

    Every process shares `flwr_home` (Flower's FLWR_HOME): Flower's processes start further
    ones (SuperExec, ClientApps) that inherit it, which finds them even once orphaned."""

    def __init__(self, flwr_home: Path, logs: Path, cwd: Path):
        # absolute: the processes run in `cwd` and resolve a relative FLWR_HOME from there
        flwr_home, self.logs, self.cwd = flwr_home.resolve(), logs.resolve(), cwd.resolve()
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            # Flower's processes start each other by name (flower-superexec, flwr-clientapp):
            # found beside this interpreter, also when the venv is not activated.
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        }

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def tail(self, name: str, lines: int = 15) -> str:
        text = self.log(name).read_text(errors="replace") if self.log(name).exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start `args` (a command of this environment) as `name`, in its own session."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "ab") as log:
            process = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True,
            )  # fmt: skip
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL one process and its children, as a crash or a pulled cable would end them."""
        process = self.processes.pop(name)
        for pid in (process.pid, *descendants(process.pid)):
            _signal(pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> int:
        """End every process started here and all their children; how many there were.

        Processes are found again on each pass, by their parentage and by the FLWR_HOME they
        inherited: a child started late or orphaned is caught, a reused process ID is not."""
        with _signals_held():
            for process in self.processes.values():
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGTERM)
            seen = {process.pid for process in self.processes.values()}
            deadline = time.monotonic() + STOP_GRACE
            while (left := self._ours()) and time.monotonic() < deadline:
                for pid in left - seen:  # once each: a second SIGTERM cuts a clean shutdown short
                    _signal(pid, signal.SIGTERM)
                seen |= left
                for process in self.processes.values():
                    process.poll()  # reap our own children
                time.sleep(0.1)
            for _ in range(50):
                if not (left := self._ours()):
                    break
                seen |= left
                for pid in left:
                    _signal(pid, signal.SIGKILL)
                time.sleep(0.1)
            for process in self.processes.values():
                process.wait()
            return len(seen)

    def _ours(self) -> set[int]:
        roots = [p.pid for p in self.processes.values() if p.poll() is None]
        below = {d for r in roots for d in descendants(r) if running(d)}
        return {*roots, *below, *with_environment("FLWR_HOME", self.env["FLWR_HOME"])}


@contextlib.contextmanager
def _signals_held():
    """Let a second Ctrl-C or SIGTERM wait until the processes are stopped, not cut that short."""
    caught = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
