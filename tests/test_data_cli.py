"""Data in, from the command line: messy exports, --strict, tasks, other formats, one cohort."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from fedicu.simulations.cli import main
from tests.test_tables import folder_records, write_tables


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `fedicu ARGS`."""
    monkeypatch.setattr(sys, "argv", ["fedicu", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data-cli")


@pytest.fixture(scope="module")
def trained(workspace) -> Path:
    """A small model trained on the synthetic cohort (its features are every cohort's)."""
    run_dir = workspace / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["fedicu", "simulate", "--rounds", "1", "--synthetic-stays", "400",
                                    "--hospitals", "2", "--hidden-size", "8", "--out", str(run_dir)])  # fmt: skip
        main()
    return run_dir


@pytest.fixture(scope="module")
def exported(workspace) -> Path:
    """300 synthetic stays written as PhysioNet 2012 set C."""
    folder = workspace / "clean"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["fedicu", "export-synthetic", str(folder), "--synthetic-stays", "300",
                                    "--hospitals", "1", "--seed", "5", "--set", "c"])  # fmt: skip
        main()
    return folder


def _messy_copy(clean: Path, out: Path) -> tuple[Path, str]:
    """A copy with empty-parameter rows in every third record (Windows line ends in some) and the
    file:line of the first such row."""
    shutil.copytree(clean, out)
    records = sorted((out / "set-c").iterdir(), key=lambda p: int(p.stem))
    first = ""
    for i, path in enumerate(records[::3]):
        lines = path.read_text().splitlines()
        lines.insert(8, "10:45,,1.9")
        end = "\r\n" if i % 2 else "\n"
        path.write_bytes((end.join(lines) + end + end).encode())
        first = first or f"{path}:9"
    return out, first


def test_evaluate_scores_every_stay_of_a_messy_export_and_strict_refuses_it(monkeypatch, capsys, trained, exported):
    messy, first = _messy_copy(exported, exported.parent / "messy")
    scored = {}
    for folder in (exported, messy):
        code, out, err = run(monkeypatch, capsys, "evaluate", str(trained), "--dataset", "physionet2012",
                             "--data-dir", str(folder), "--sets", "c", "--json")  # fmt: skip
        assert code == 0, err
        scored[folder] = json.loads(out)
        skipped = [line for line in err.splitlines() if "skipped" in line]
        assert len(skipped) == (folder == messy), err
    assert scored[messy]["n"] == scored[exported]["n"] == 300
    assert scored[messy]["auroc"] == scored[exported]["auroc"]  # the same stays, every good row kept
    code, out, err = run(monkeypatch, capsys, "evaluate", str(trained), "--data-format", "physionet2012",
                         "--data-dir", str(messy), "--sets", "c", "--json", "--strict")  # fmt: skip
    assert code == 2 and not out and "Traceback" not in err
    assert err.startswith(f"error: {first}: "), err


def test_a_model_is_not_scored_on_another_task(monkeypatch, capsys, trained, exported):
    code, _, err = run(monkeypatch, capsys, "evaluate", str(trained), "--data-dir", str(exported),
                       "--sets", "c", "--task", "los_over_3d")  # fmt: skip
    assert code == 2 and "trained for task 'in_hospital_death'" in err and "los_over_3d" in err, err


def test_site_check_warns_about_skipped_rows_and_strict_makes_them_an_error(monkeypatch, capsys, exported):
    messy, first = _messy_copy(exported, exported.parent / "messy-site")
    code, out, _ = run(monkeypatch, capsys, "site", "check", "--data-dir", str(messy), "--json")
    report = json.loads(out)
    skipped = next(f for f in report["findings"] if f["check"] == "skipped rows")
    assert code == 0 and skipped["severity"] == "warning" and "skipped 100 rows" in skipped["message"]
    code, out, _ = run(monkeypatch, capsys, "site", "check", "--data-dir", str(messy), "--strict", "--json")
    assert code == 2 and json.loads(out)["first_error"].startswith(f"{first}: ")


def test_the_same_stays_as_meds_and_as_tables_score_exactly_alike(monkeypatch, capsys, trained, exported):
    meds_dir = exported.parent / "as-meds"
    code, _, err = run(monkeypatch, capsys, "data", "to-meds", str(meds_dir), "--data-format", "physionet2012",
                       "--data-dir", str(exported), "--sets", "c")  # fmt: skip
    assert code == 0, err
    tables_dir = write_tables(folder_records(exported, "c"), exported.parent / "as-tables")  # an independent converter
    sources = {
        "physionet2012": ["--data-dir", str(exported), "--sets", "c"],
        "meds": ["--data-dir", str(meds_dir), "--labels", str(meds_dir / "labels")],
        "tables": ["--data-dir", str(tables_dir)],
    }
    scored = {}
    for data_format, options in sources.items():
        code, out, err = run(monkeypatch, capsys, "evaluate", str(trained), "--data-format", data_format,
                             *options, "--json")  # fmt: skip
        assert code == 0, err
        scored[data_format] = json.loads(out)
    assert scored["meds"]["n"] == scored["tables"]["n"] == scored["physionet2012"]["n"] == 300
    for data_format in ("meds", "tables"):
        assert scored[data_format]["auroc"] == pytest.approx(scored["physionet2012"]["auroc"], abs=1e-6)


def test_training_prints_one_line_about_skipped_rows_and_the_model_card_records_them(
    monkeypatch, capsys, exported, workspace
):
    messy, first = _messy_copy(exported, workspace / "messy-train")
    run_dir = workspace / "messy-run"
    code, _, err = run(monkeypatch, capsys, "simulate", "--dataset", "physionet2012", "--data-dir", str(messy),
                       "--sets", "c", "--partition", "iid", "--hospitals", "2", "--rounds", "1",
                       "--hidden-size", "8", "--out", str(run_dir))  # fmt: skip
    assert code == 0, err
    assert len([line for line in err.splitlines() if "skipped 100 rows" in line]) == 1, err
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["task"] == "in_hospital_death" and len(card["variables"]) == 37
    assert card["data"]["rows_skipped"] == [{"name": "", "count": 100, "first": first}]


def test_evaluate_refuses_sets_for_a_format_without_sets(monkeypatch, capsys, trained, workspace):
    code, out, err = run(monkeypatch, capsys, "evaluate", str(trained), "--data-format", "tables",
                         "--data-dir", str(workspace), "--sets", "c")  # fmt: skip
    assert (code, out) == (2, "") and "--sets has no effect with --data-format tables" in err, err


def test_evaluate_warns_about_stays_that_trained_the_model_and_rescores_its_own_test_split(
    monkeypatch, capsys, trained
):
    used = json.loads((trained / "stays.json").read_text())
    parts = [set(used[part]) for part in ("train", "validation", "test")]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 400  # every stay in exactly one split
    code, out, err = run(monkeypatch, capsys, "evaluate", str(trained), "--dataset", "synthetic",
                         "--synthetic-stays", "400", "--hospitals", "2", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["n"] == 400, err
    words = " ".join(err.split())
    assert f"{len(parts[0])} of these 400 stays trained the model and {len(parts[1])} selected it" in words, err
    code, out, err = run(monkeypatch, capsys, "evaluate", str(trained), "--dataset", "synthetic", "--json")
    assert code == 0 and "trained the model" not in err  # another synthetic cohort: the ids name other stays
    code, out, err = run(monkeypatch, capsys, "evaluate", str(trained), "--split", "test", "--json")
    assert code == 0 and "trained the model" not in err, err
    card = json.loads((trained / "model_card.json").read_text())
    rescored = json.loads(out)
    assert rescored["n"] == len(parts[2]) and rescored["auroc"] == card["metrics"]["best"]["test_auroc"]
    code, out, err = run(monkeypatch, capsys, "evaluate", str(trained), "--split", "test", "--seed", "3")
    assert code == 2 and "--seed has no effect with --split test" in err
