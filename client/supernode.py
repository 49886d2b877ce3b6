"""A site's Flower SuperNode: `python -m fedicu.client.supernode [flower-supernode options]`.

Flower's own SuperNode, run with every option it takes, except that it asks the SuperLink for
messages and looks for the ClientApp's replies every 0.2 s instead of every 3 s and 0.5 s
(`shared.compat.run_supernode`): the waits were most of a deployed round."""

import sys

from fedicu.shared.compat import run_supernode

if __name__ == "__main__":
    run_supernode(sys.argv[1:])
