"""The bedside service's store: no request's commit waits for a checkpoint; the checkpointer
copies the journal into the file on its own thread and stops with the store."""

import sqlite3
import threading
from contextlib import closing

from fedicu.client.bedside.stays import Measurement
from fedicu.client.bedside.store import StayStore
from tests.deployments import wait_until

HOURS_OF_HR = [Measurement(minute=minute, variable="HR", value=80.0) for minute in range(2000)]
STAYS = 100  # about 1,500 pages of journal: past SQLite's own checkpoint at 1,000


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fedicu-store-checkpoint"]


def test_commits_leave_the_journal_to_the_checkpointer_which_stops_with_the_store(tmp_path):
    path = tmp_path / "stays.sqlite"
    store = StayStore(path, checkpoint_seconds=3600)
    empty = path.stat().st_size
    for i in range(STAYS):
        store.append(f"stay-{i}", None, HOURS_OF_HR)
    assert path.stat().st_size == empty, "a commit checkpointed the journal"
    store.close()
    assert path.stat().st_size > empty and not _checkpointers()

    store = StayStore(path, checkpoint_seconds=0.01)
    before = path.stat().st_size
    for i in range(STAYS):
        store.append(f"later-{i}", None, HOURS_OF_HR)
    wait_until(lambda: path.stat().st_size > before, 60, "the checkpointer copies the journal into the file")
    store.close()
    assert not _checkpointers()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM observations").fetchone() == (2 * STAYS * len(HOURS_OF_HR),)
