"""simulations/cross_site.py: which runs a cross-site matrix scores, and under which names."""

import pytest

from fedicu.shared.run_dir import MODEL_CARD
from fedicu.simulations.cross_site import models_in


def _runs(root, *paths):
    for path in paths:
        (root / path).mkdir(parents=True)
        (root / path / MODEL_CARD).write_text("{}")


def test_a_comparison_s_runs_are_named_by_their_path_below_it(tmp_path):
    _runs(tmp_path, "cmp/federated", "cmp/centralized", "cmp/local/north", "cmp/local/south")
    assert models_in([tmp_path / "cmp"]) == {
        name: tmp_path / "cmp" / name for name in ("centralized", "federated", "local/north", "local/south")
    }


def test_runs_given_one_by_one_are_named_by_their_folder_and_clashing_names_by_their_path(tmp_path):
    _runs(tmp_path, "a/run", "b/run", "cmp/federated")
    assert models_in([tmp_path / "a" / "run"]) == {"run": tmp_path / "a" / "run"}
    assert models_in([tmp_path / "a" / "run", tmp_path / "cmp"]) == {
        "run": tmp_path / "a" / "run", "cmp/federated": tmp_path / "cmp" / "federated"
    }  # fmt: skip
    clashing = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    assert models_in(clashing) == {str(path): path for path in clashing}


def test_a_folder_without_a_completed_run_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"RUN_DIR {tmp_path / 'empty'}: holds no completed run"):
        models_in([tmp_path / "empty"])
    with pytest.raises(ValueError, match=f"RUN_DIR {tmp_path / 'absent'}: no such directory"):
        models_in([tmp_path / "absent"])
