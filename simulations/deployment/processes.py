"""The processes a command started, found through /proc (Linux)."""

from __future__ import annotations

import os


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
