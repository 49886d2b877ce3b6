"""The service's own small database (SQLite, one file): the stays it follows in real time and
the counts behind its monitoring. Everything is committed before a request is answered, so a
crash or restart of the service loses nothing it acknowledged. The file is journalled ahead
(WAL) and synced at checkpoints, not at every commit: a power cut may lose the last moments'
writes, which the hospital's own systems still hold; a millisecond per request is saved.
Checkpoints run every few seconds on a thread of their own: SQLite would otherwise run one
inside whichever request's commit fills the journal, and that request would wait for the sync."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

import numpy as np

from fedicu.client.bedside.stays import Descriptors, Measurement
from fedicu.shared.preprocessing import REFERENCE_BINS
from fedicu.shared.variables import TIME_SERIES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stays (stay_id TEXT PRIMARY KEY, static TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS observations (stay_id TEXT NOT NULL, minute INTEGER NOT NULL,
    variable TEXT NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS observations_of_stay ON observations (stay_id);
CREATE TABLE IF NOT EXISTS drift_bins (variable TEXT NOT NULL, bin INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (variable, bin));
CREATE TABLE IF NOT EXISTS drift_stays (variable TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drift_stay (stay_id TEXT PRIMARY KEY, histogram BLOB NOT NULL);
"""
_ALL_STAYS = ""  # drift_stays' row counting every stay scored
CHECKPOINT_SECONDS = 5.0


class _Checkpointer(threading.Thread):
    """Copies the journal into the database file every `seconds`, on a connection of its own
    (a passive checkpoint: it never blocks the service's reads or writes)."""

    def __init__(self, path: Path, seconds: float):
        super().__init__(name="fedicu-store-checkpoint", daemon=True)
        self._path, self._seconds, self._stopped = path, seconds, threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self._path)
        try:
            while not self._stopped.wait(self._seconds):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as error:  # the journal keeps the writes; the next checkpoint tries again
                    logging.getLogger("fedicu.bedside").warning("store %s: checkpoint failed: %s", self._path, error)
        finally:
            db.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join()


class StayStore:
    def __init__(self, path: Path, checkpoint_seconds: float = CHECKPOINT_SECONDS):
        """ValueError naming `path` when it cannot hold the store."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's work, not a request's
            with self._db:
                self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise ValueError(f"--store {path}: cannot use it as the service's database: {error}") from error
        self._lock = threading.Lock()
        self._checkpointer = _Checkpointer(path, checkpoint_seconds)
        self._checkpointer.start()

    def close(self) -> None:
        """Stops the checkpointer; closing the last connection checkpoints what remains."""
        self._checkpointer.stop()
        self._db.close()

    def append(self, stay_id: str, static: Descriptors | None, measurements: list[Measurement]) -> int:
        """Add to a stay (created if new; `static` replaces its descriptors when given); return
        its number of measurements."""
        with self._lock, self._db:
            known = self._db.execute("SELECT 1 FROM stays WHERE stay_id = ?", (stay_id,)).fetchone() is not None
            if not known or static is not None:
                descriptors = (static or Descriptors()).model_dump_json()
                self._db.execute("INSERT OR REPLACE INTO stays VALUES (?, ?)", (stay_id, descriptors))
            self._db.executemany(
                "INSERT INTO observations VALUES (?, ?, ?, ?)",
                [(stay_id, m.minute, m.variable, m.value) for m in measurements],
            )
            (count,) = self._db.execute("SELECT COUNT(*) FROM observations WHERE stay_id = ?", (stay_id,)).fetchone()
        return int(count)

    def stay(self, stay_id: str) -> tuple[Descriptors, list[Measurement]] | None:
        with self._lock:
            row = self._db.execute("SELECT static FROM stays WHERE stay_id = ?", (stay_id,)).fetchone()
            if row is None:
                return None
            rows = self._db.execute(
                "SELECT minute, variable, value FROM observations WHERE stay_id = ? ORDER BY rowid", (stay_id,)
            ).fetchall()
        static = Descriptors.model_validate(json.loads(row[0]))
        return static, [Measurement(minute=m, variable=v, value=x) for m, v, x in rows]

    def record_scored(self, stay_id: str, histogram: np.ndarray) -> None:
        """What monitoring counts of a scored stay: its observed hours per reference bin
        (`FeatureStats.histogram`). A stay scored again replaces what it counted before, so
        each stay counts once, as it stood when last scored."""
        histogram = np.asarray(histogram, dtype=np.int64)
        with self._lock, self._db:
            row = self._db.execute("SELECT histogram FROM drift_stay WHERE stay_id = ?", (stay_id,)).fetchone()
            before = np.frombuffer(row[0], dtype=np.int64).reshape(histogram.shape) if row else np.zeros_like(histogram)
            self._db.execute("INSERT OR REPLACE INTO drift_stay VALUES (?, ?)", (stay_id, histogram.tobytes()))
            changed = np.argwhere(histogram != before)
            self._db.executemany(
                "INSERT INTO drift_bins VALUES (?, ?, ?) ON CONFLICT (variable, bin) DO UPDATE SET n = n + excluded.n",
                [(TIME_SERIES[v], int(b), int(histogram[v, b] - before[v, b])) for v, b in changed],
            )
            measured = (histogram.sum(axis=1) > 0).astype(int) - (before.sum(axis=1) > 0).astype(int)
            increments = [(_ALL_STAYS, int(row is None))] + [
                (TIME_SERIES[v], int(measured[v])) for v in range(len(measured))
            ]
            self._db.executemany(
                "INSERT INTO drift_stays VALUES (?, ?) ON CONFLICT (variable) DO UPDATE SET n = n + excluded.n",
                [(variable, n) for variable, n in increments if n],
            )

    def drift_counts(self) -> tuple[dict[str, np.ndarray], int, dict[str, int]]:
        """Per variable its binned values; the stays scored; per variable the stays measuring it."""
        with self._lock:
            bins = self._db.execute("SELECT variable, bin, n FROM drift_bins").fetchall()
            stays = dict(self._db.execute("SELECT variable, n FROM drift_stays").fetchall())
        counts: dict[str, np.ndarray] = {}
        for variable, index, n in bins:
            counts.setdefault(variable, np.zeros(REFERENCE_BINS, dtype=np.int64))[index] = n
        total = int(stays.pop(_ALL_STAYS, 0))
        return counts, total, {k: int(v) for k, v in stays.items()}
