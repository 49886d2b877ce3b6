"""User mistakes: one clear line naming the file, line or option; non-zero exit; nothing written."""

import sys

import pytest

from fedicu.simulations.cli import main


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fedicu", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["simulate", "--dataset", "physionet2012", "--data-dir", "/nonexistent/pn"], "/nonexistent/pn"),
        (["simulate", "--dataset", "physionet2012"], "--data-dir is required"),
        (["simulate", "--strategy", "fedsgd"], "--strategy"),
        (["simulate", "--rounds", "0"], "--rounds"),
        (["simulate", "--dataset", "mimic"], "unknown data format 'mimic'"),
        (["simulate", "--partition", "zip"], "unknown --partition 'zip'"),
        (["simulate", "--no-such-option"], "No such option"),
        (["evaluate", "/nonexistent/run"], "/nonexistent/run"),
        (["simulate", "--dp", "--target-epsilon", "1", "--delta", "0.1"], "--delta 0.1 must be below 1/n"),
        (["simulate", "--dp"], "--dp needs --target-epsilon"),
        (
            ["simulate", "--dp", "--target-epsilon", "1", "--noise-multiplier", "1"],
            "--target-epsilon 1 with --noise-multiplier 1: hospital-1 could not train a single round (privacy budget: "
            "training on would reach epsilon 3.1",
        ),
        (["simulate", "--data-dir", "/data/icu"], "--data-dir has no effect with --data-format synthetic"),
        (["simulate", "--target-epsilon", "1"], "--target-epsilon has no effect without --dp"),
        (["simulate", "--proximal-mu", "0.1"], "--proximal-mu has no effect with --strategy fedavg"),
        (["centralized", "--labels", "l.parquet"], "--labels is for --data-format meds"),
        (["local", "--mapping", "m.toml"], "--mapping is for --data-format tables or meds"),
        (["sweep", "--alpha", "0.1"], "--alpha has no effect with --partition"),
        (["audit", "/nonexistent/run"], "/nonexistent/run"),
        (["simulate", "--min-hospitals", "9"], "--min-hospitals 9 exceeds the 4 hospitals"),
        (["simulate", "--init-from", "/nonexistent/run"], "--init-from /nonexistent/run: no such directory"),
        (["centralized", "--freeze-body"], "--freeze-body has no effect without --init-from"),
        (["simulate", "--augment-mask", "1"], "--augment-mask must lie in [0, 1)"),
        (["deploy-demo", "--out", "demo", "--sites", "1", "--secagg"], "--sites must lie in 2..16 with --secagg"),
        (["deploy-demo", "--out", "demo", "--run-config", 'strategy="fedsgd"'], "run-config strategy must be one of"),
        (["deploy-demo", "--out", "demo", "--run-config", "rounds=many"], "--run-config 'rounds=many': The provided"),
        (["deploy-demo", "--out", "demo", "--run-config", "roundz=3"], "unknown run-config key 'roundz'"),
        (
            ["deploy-demo", "--out", "demo", "--restart-site", "hospital-4"],
            "not one of the sites (hospital-1 to hospital-3)",
        ),
        (
            ["deploy-demo", "--out", "demo", "--restart-site", "hospital-1", "--rounds", "1"],
            "--restart-site needs --rounds 2",
        ),
    ],
)
def test_mistakes_are_reported_without_traceback(monkeypatch, capsys, tmp_path, args, expected):
    monkeypatch.chdir(tmp_path)
    code, err = run(monkeypatch, capsys, *args)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no run directory for a run that never started
    assert not (tmp_path / "demo").exists()


def test_unknown_set_and_missing_outcomes_name_the_problem(monkeypatch, capsys, tmp_path):
    data = tmp_path / "pn"
    (data / "set-a").mkdir(parents=True)
    code, err = run(
        monkeypatch, capsys, "simulate", "--dataset", "physionet2012", "--data-dir", str(data), "--sets", "a,x"
    )
    assert code == 2 and "'x'" in err
    code, err = run(
        monkeypatch, capsys, "simulate", "--dataset", "physionet2012", "--data-dir", str(data), "--sets", "a"
    )
    assert code == 2 and "Outcomes-a.txt" in err


def test_malformed_record_line_is_named(monkeypatch, capsys, tmp_path):
    data = tmp_path / "pn"
    (data / "set-a").mkdir(parents=True)
    (data / "set-a" / "132539.txt").write_text(
        "Time,Parameter,Value\n00:00,RecordID,132539\n00:00,Age,54\n00:00,Gender,0\n00:00,Height,-1\n"
        "00:00,ICUType,4\n00:00,Weight,-1\n00:07,HR,seventy\n"
    )
    (data / "Outcomes-a.txt").write_text(
        "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n132539,6,1,5,-1,0\n"
    )
    code, err = run(
        monkeypatch, capsys, "simulate", "--dataset", "physionet2012", "--data-dir", str(data), "--sets", "a"
    )
    assert code == 2
    assert "132539.txt:8" in err and "Traceback" not in err


def test_version_prints_the_installed_version(monkeypatch, capsys):
    import importlib.metadata

    monkeypatch.setattr(sys, "argv", ["fedicu", "--version"])
    main()  # returns: a success exits 0
    assert capsys.readouterr().out == f"fedicu {importlib.metadata.version('fedicu')}\n"


def test_a_folder_that_is_not_a_run_directory_is_named_as_such(monkeypatch, capsys, tmp_path):
    code, err = run(monkeypatch, capsys, "evaluate", str(tmp_path))
    assert code == 2 and err.strip() == f"error: RUN_DIR {tmp_path}: not a run directory (no run.json)"
    (tmp_path / "run.json").write_text('{"status": "complete"}')  # e.g. a baseline that saves no model
    code, err = run(monkeypatch, capsys, "evaluate", str(tmp_path))
    assert code == 2 and "no saved model here (model_card.json, model_best.pt, model_final.pt missing)" in err
