"""What every command prints to and how it ends: the console and the three ways a command fails.

Kept free of heavy imports: `fedicu --help` loads this module and nothing of the commands.
"""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)  # progress and tables; stdout stays clean for --json


class UserError(Exception):
    """A mistake in the command's input: reported in one line, exit code 2."""


class RunFailed(Exception):
    """A run that started but could not finish (e.g. too few hospitals replied): exit code 1."""


class RunInterrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM, its directory marked `interrupted`: exit code 130 or 143."""
