"""Files written so that a crash never leaves a half-written one.

Everything goes to a temporary file in the same directory, is flushed to disk,
and is renamed into place (atomic on POSIX): readers see the old file or the new
one, never a part.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write; it replaces `path` only if the block completes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def safe_name(name: str) -> str:
    """`name` as a file or folder name: every character but letters, digits, - and _ becomes _
    (a site's name may hold any)."""
    return re.sub(r"[^\w-]", "_", name)
