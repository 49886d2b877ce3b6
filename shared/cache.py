"""A small on-disk cache of parsed data, keyed by the files it was parsed from.

- `cache_dir()` is where cached files live: `$FEDICU_CACHE_DIR` if set, else
  `$XDG_CACHE_HOME/fedicu`, else `~/.cache/fedicu`. It is created on first write.
- `fingerprint(paths, salt=...)` is a sha256 hex digest over a salt (a format
  version, say) and each file's resolved path, size and mtime_ns: when a source
  file changes, is replaced or moves, the fingerprint changes and the old entry
  is simply never read again.
- `save_arrays(path, arrays)` writes plain numpy arrays to an `.npz` file
  atomically (temporary file in the same directory, then `os.replace`), so a
  reader never sees half a file.
- `load_arrays(path)` reads them back without pickle. A missing, truncated or
  otherwise unreadable file is a cache miss (`None`), never an error: the caller
  rebuilds and overwrites it.

Store strings as fixed-width unicode arrays (`np.array(["set-a"])`): object
arrays would need pickle and are refused on read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedicu.shared.files import atomic_file

logger = logging.getLogger("fedicu")


def cache_dir() -> Path:
    """The directory for cached files (not created here)."""
    explicit = os.environ.get("FEDICU_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedicu"


def fingerprint(paths: Iterable[str | Path], *, salt: str = "") -> str:
    """sha256 hex digest over `salt` and every file's resolved path, size and mtime_ns.

    The order of `paths` matters; pass them in a deterministic order.
    """
    digest = hashlib.sha256(salt.encode())
    for path in paths:
        stat = os.stat(path)
        entry = f"\0{os.path.realpath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}"
        digest.update(entry.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write `arrays` to the `.npz` file `path`, atomically (no pickled objects)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if np.asarray(array).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; store strings as unicode arrays")
    with atomic_file(path) as file:
        named: dict[str, Any] = dict(arrays)  # Any: the stub cannot tell these names from allow_pickle
        np.savez(file, **named)


def load_arrays(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays stored in `path`, or None if it is missing or cannot be read."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except Exception as error:  # any unreadable cache file is a miss, not a failure
        logger.debug("cache file %s is unreadable (%s); ignoring it", path, error)
        return None
