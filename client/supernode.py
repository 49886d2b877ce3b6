"""A site's Flower SuperNode: `python -m fedicu.client.supernode [flower-supernode options]`.

Flower's own SuperNode, run with every option it takes, except for its waits
(`shared.compat.run_supernode`): it looks for the ClientApp's replies every 0.2 s instead of
0.5 s, and asks the SuperLink for the next message 0.2 s after the last one, then less often
while none comes, up to once a second, instead of every 3 s: the waits were most of a deployed round."""

import sys

from fedicu.shared.compat import run_supernode

if __name__ == "__main__":
    run_supernode(sys.argv[1:])
