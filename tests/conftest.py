from pathlib import Path

import pytest

PHYSIONET_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "physionet2012"

requires_physionet = pytest.mark.skipif(
    not (PHYSIONET_DIR / "set-a.tar.gz").exists(),
    reason=f"PhysioNet 2012 data not found at {PHYSIONET_DIR} (get it from PhysioNet to run this test)",
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's cache."""
    monkeypatch.setenv("FEDICU_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
