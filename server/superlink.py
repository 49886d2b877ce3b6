"""The coordinator's Flower SuperLink: `python -m fedicu.server.superlink [flower-superlink options]`.

Flower's own SuperLink, run with every option it takes, except that a request waits up to 60 s
for its SQLite database's lock instead of 5 s (`shared.compat.run_superlink`): on a busy
coordinator the shorter wait answered requests with errors that lost messages and runs."""

import sys

from fedicu.shared.compat import run_superlink

if __name__ == "__main__":
    run_superlink(sys.argv[1:])
