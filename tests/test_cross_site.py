"""simulations/cross_site.py: which runs a cross-site matrix scores, and under which names."""

import io
import json
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from rich.console import Console

from fedicu.client.client_app import _kept_file
from fedicu.shared.contract import CrossSiteRequest
from fedicu.shared.cross_site import row, worst_auroc
from fedicu.shared.plots import plot_cross_site
from fedicu.shared.run_dir import MODEL_CARD
from fedicu.simulations.cli.common import cross_site_table
from fedicu.simulations.cross_site import models_in
from tests.test_contract import EVALUATE


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


def test_a_hospital_that_could_not_score_a_model_is_a_blank_cell_not_a_crash(tmp_path):
    """As the matrix reads back from cross_site.json: NaN was written as null."""
    rows = [
        row("federated/best", "north", None, failure="no reply within 30 s") | {"status": "failed"},
        row("federated/best", "south", None) | {"auroc": 0.8, "stays": 40, "status": "ok"},
    ]
    rows = json.loads(json.dumps([{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                                  for r in rows]))  # fmt: skip
    assert worst_auroc(rows, "federated/best") == 0.8
    Console(width=80, file=io.StringIO()).print(cross_site_table(rows))
    plot_cross_site(rows, tmp_path / "cross_site.png")
    assert (tmp_path / "cross_site.png").stat().st_size > 0


def test_a_deployed_site_keeps_its_recalibration_in_its_state_dir_whatever_the_server_says(tmp_path):
    context = Context(run_id=7, node_id=1, node_config={"data-dir": "d", "state-dir": str(tmp_path)}, state=RecordDict(),
                      run_config={})  # fmt: skip
    request = CrossSiteRequest(**EVALUATE, model_name="federated/best", threshold=0.2, keep_recalibration=True,
                               site_dir="/etc/elsewhere")  # fmt: skip
    assert _kept_file(request, context, "north", "recalibration.json") == tmp_path / "recalibration-north-run7.json"
    simulated = Context(run_id=7, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    assert _kept_file(request, simulated, "north", "recalibration.json") == Path(
        "/etc/elsewhere/north/recalibration.json"
    )
