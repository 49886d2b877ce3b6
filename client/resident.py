"""A site's ClientApp as one long-lived process: `python -m fedicu.client.resident`.

Flower's SuperNode, started with `--isolation process`, leaves its tasks (one per message the
server sends) to a process outside it. This is that process: it claims each task from the
SuperNode's Runtime API on loopback and runs the fedicu ClientApp for it, one task after the
other, in this one process (`shared.compat.SuperNodeTasks`). Torch, the app and the site's
stays are loaded once, not once per message; the site's folder is read again only when a file
in it changes (`shared.federation.load_site`). What a message's task keeps across rounds (the
privacy ledger, the site's models) lives where it did: in Flower's context and the state-dir.

It ends on SIGINT or SIGTERM, and when the SuperNode given as `--parent-pid` ends. An exception
in one task becomes that task's error reply; the process goes on to the next.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

POLL_SECONDS = 0.05  # between claims while no task waits; Flower's SuperExec waits 1 s
logger = logging.getLogger("fedicu.resident")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fedicu.client.resident",
        description="Run every ClientApp task of a SuperNode (--isolation process) in this one process.",
    )
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    parser.add_argument("--parent-pid", type=int, help="end when this process (the SuperNode) ends")
    return parser.parse_args(argv)


def serve(address: str) -> None:
    """Claim and run tasks until interrupted."""
    from fedicu.shared.compat import SuperNodeTasks

    tasks = SuperNodeTasks(address)
    import fedicu.client.client_app  # noqa: F401 - imported before the first message, not during it

    logger.info("ready: claiming ClientApp tasks from %s", address)
    while True:
        if (token := tasks.next_token()) is None:
            time.sleep(POLL_SECONDS)
            continue
        started = time.perf_counter()
        try:
            tasks.run(token)
        except Exception:  # a task that could not be pulled or answered; the next one may be fine
            logger.exception("a task failed before its reply was sent")
        else:
            logger.info("task answered in %.2f s", time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Runtime API call otherwise
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # leaves through the task's cleanup
    if args.parent_pid:
        from fedicu.shared.compat import watch_parent

        watch_parent(args.parent_pid)
    try:
        serve(args.runtime_api_address)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
