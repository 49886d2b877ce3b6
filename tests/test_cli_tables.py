"""Every table the command line prints reads whole in an 80-column terminal: nothing cut to '…', no line wider.
One exception: the rounds table with its hospitals-failed column needs 89 columns, as its AUROC and AUPRC cells
carry 95 % intervals ("0.811 (0.78–0.84)", on one line from about 95 columns, wrapped under the value below)."""

import io
import math

import pytest
from rich.console import Console

from fedicu.shared.errors import DataError
from fedicu.shared.site_check import Finding, SetSummary, SiteReport
from fedicu.simulations import sweep as study
from fedicu.simulations.cli.common import results_table, rounds_table
from fedicu.simulations.cli.privacy import sweep_tables
from fedicu.simulations.cli.site import site_tables

WIDTH = 80
WIDE = 100  # where the training tables keep every interval on its value's line


def render(renderable, width: int = WIDTH) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def assert_fits(text: str, width: int = WIDTH) -> None:
    assert "…" not in text, text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text


INTERVALS = {"val_auroc_ci_low": 0.8123, "val_auroc_ci_high": 0.8807, "test_auroc_ci_low": 0.7812,
             "test_auroc_ci_high": 0.8391, "test_auprc_ci_low": 0.4816, "test_auprc_ci_high": 0.6004}  # fmt: skip


def round_row(n: int, **changes) -> dict:
    row = {"round": n, "train_loss": 0.483 - 0.01 * n, "val_auroc": 0.849, "test_auroc": 0.811, "test_auprc": 0.542,
           "test_brier": 0.108, "test_event1": 0.421, "hospitals_failed": 0, **INTERVALS}  # fmt: skip
    return row | changes


@pytest.mark.parametrize("failures", [False, True], ids=["all-replied", "with-failed-hospitals"])
def test_rounds_table_fits(failures):
    rows = [round_row(n, hospitals_failed=2 if failures and n == 2 else 0) for n in range(1, 101)]
    rows[4]["train_loss"] = None  # DP: no train loss
    rows[5]["test_event1"] = math.nan
    rows[6] |= {"test_auroc_ci_low": None, "test_auroc_ci_high": None}  # too few stays of a class: no interval
    table = rounds_table("Deployment rehearsal (SecAgg+, INSECURE)", rows, seed=7)
    for width in (WIDE,) if failures else (WIDE, WIDTH):
        text = render(table, width)
        assert_fits(text, width)
        header = text.splitlines()[1:5]
        for word in ("round", "train", "loss", "val", "AUROC", "AUPRC", "Brier", "Event-1"):
            assert any(word in line for line in header), word
        assert ("hospitals" in text) == failures
        assert "100 │" in text and "–" in text
        assert text.count("(0.78–0.84)") == 99 and text.count("(0.48–0.60)") == text.count("(0.81–0.88)") == 100
        assert "95 % CI, stratified bootstrap, 1000 resamples, seed 7" in text
    if not failures:
        assert text.count("│\n") == 2 * 100  # at 80 columns an interval wraps under its value
        assert "0.811 (0.78–0.84)" in render(table, WIDE)  # at 100, on its line


def test_results_table_fits():
    metrics = {"test_auroc": 0.8112, "test_auprc": 0.5421, "test_brier": 0.1083, "test_event1": math.nan, **INTERVALS}
    compare = {
        "federated (fedadam, best round)": metrics,
        "centralized (best round)": metrics,
        "local only (mean of hospitals)": metrics,
    }
    local = {name: metrics for name in ("coronary-care", "cardiac-surgery", "medical-icu", "surgical-icu")}
    for results in (compare, local | {"mean of hospitals": metrics}):
        text = render(results_table(results, seed=0))
        assert_fits(text)
        assert text.count("0.811 (0.78–0.84)") == text.count("0.542 (0.48–0.60)") == len(results)
        assert "95 % CI, stratified bootstrap, 1000 resamples, seed 0" in text
        wide = render(results_table(results, seed=0), WIDE)
        for name in results:
            assert name in wide  # at 80 columns the longest names fold over two lines


def sweep_rows(seeds: int) -> list[dict]:
    """Per-cell rows as `sweep.run` returns them: six epsilons x seeds, plus both baselines."""
    rows: list[dict] = []
    for seed in range(seeds):
        for eps in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, math.inf):
            private = not math.isinf(eps)
            no_dp = 0.829 + 0.011 * seed
            # noise can even help a little at a large epsilon: a negative cost of privacy
            auroc = no_dp + 0.002 + 0.001 * seed if eps == 16 else no_dp - (0.06 / eps if private else 0)
            rows.append({
                "setting": "federated", "epsilon": eps, "seed": seed, "test_auroc": auroc,
                "test_auprc": 0.489 - (0.1 / eps if private else 0) + 0.02 * seed,
                "epsilon_spent": eps * 0.999 if private else math.nan,
                "attack_auroc": 0.509 + 0.002 * seed, "attack_tpr_at_1pct_fpr": 0.017 + 0.004 * seed,
            })  # fmt: skip
        for setting in ("centralized", "local"):
            rows.append({
                "setting": setting, "epsilon": math.inf, "seed": seed, "test_auroc": 0.845 - 0.02 * seed,
                "test_auprc": 0.495, "epsilon_spent": math.nan,
                "attack_auroc": 0.516 if setting == "centralized" else math.nan,
                "attack_tpr_at_1pct_fpr": 0.015 if setting == "centralized" else math.nan,
            })  # fmt: skip
    for row in rows:  # each cell's own intervals
        for key in study.WITH_CI:
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = row[key] - 0.031, row[key] + 0.027
    return rows


@pytest.mark.parametrize("seeds", [1, 3])
def test_sweep_tables_fit_and_keep_every_cell_on_one_line(seeds):
    cells = study.table_rows(study.summarize(sweep_rows(seeds)))
    assert any(row[4].startswith("-") for row in cells)  # a negative cost of privacy is the widest cell
    text = render(sweep_tables("physionet2012", study.TABLE_HEADER, cells, study.SUMMARY_CI))
    assert_fits(text)
    for row in cells:
        for i, cell in enumerate(row):
            if study.TABLE_HEADER[i] not in ("setting", "seeds"):
                for line in cell.split("\n"):  # "0.769 ± 0.018" over its interval "(0.74–0.80)"
                    assert line in text, line  # never split further
    assert sum("(0." in cell for row in cells for cell in row) == 3 * len(cells) - 1  # local only: no audit
    assert "mean of their bounds" in " ".join(text.split())
    for word in ("federated", "centralized,", "local only", "∞ (no DP)", "attack TPR", "ε spent"):
        assert word in text
    assert ("3 seeds" in text) == (seeds == 3) and ("one seed" in text) == (seeds == 1)


def site_report(data_dir: str, sets: int) -> SiteReport:
    summaries = [
        SetSummary(name=f"set-{s}", records=f"{data_dir}/set-{s}.tar.gz", outcomes=f"{data_dir}/Outcomes-{s}.txt",
                   record_files=4000, unusable_records=3, outcome_rows=4000, stays=3997, deaths=554,
                   measurements=1_764_321, descriptors_only=12)
        for s in "abc"[:sets]
    ]  # fmt: skip
    summaries[-1].record_files = None  # a set that could not be counted
    long_file = f"{data_dir}/set-a/132539.txt"
    findings = [
        Finding("sets", "ok", "reading set-a.tar.gz, set-b/, set-c/"),
        Finding(
            "set-a outcomes",
            "error",
            "1 of 4,000 Outcomes rows cannot be used",
            (
                DataError(
                    "expected 6 comma-separated fields (RecordID,SAPS-I,SOFA,Length_of_stay,Survival,"
                    "In-hospital_death), found 2: '1234,x'",
                    f"{data_dir}/Outcomes-a.txt",
                    6,
                ),
            ),
        ),
        Finding(
            "set-a records",
            "error",
            "3 of 4,000 record files cannot be used",
            tuple(
                DataError(f"unknown parameter 'NoSuchParameterWithAVeryLongName{i}'", long_file, 300 + i)
                for i in range(5)
            ),
        ),
        Finding(
            "descriptor-only stays",
            "warning",
            "12 of 11,991 stays have descriptors only (kept; the model sees their descriptors)",
        ),
        Finding(
            "physiological limits",
            "ok",
            "472 values (0.12%) outside physiological limits, dropped by "
            "cleaning: HR 153, FiO2 63, Urine 50, RespRate 30, NISysABP 28, Temp 28, SysABP 20",
        ),
    ]
    return SiteReport(data_dir=data_dir, val_fraction=0.2, sets=summaries, findings=findings)


@pytest.mark.parametrize("sets", [1, 3])
@pytest.mark.parametrize(
    "data_dir",
    ["/data/pn", "/srv/hospital-data/physionet-challenge-2012/site-north/exported-2024-11-30/ready-for-fedicu"],
    ids=["short-path", "long-path"],
)
def test_site_tables_fit(sets, data_dir):
    report = site_report(data_dir, sets)
    text = render(site_tables(report))
    assert_fits(text)
    for label in ("record files", "unusable record files", "Outcomes rows", "usable stays", "deaths",
                  "measurements", "stays with descriptors only", "1,764,321", "descriptor-only", "... and 2 more"):  # fmt: skip
        assert label in text, label
    for s in report.sets:
        assert s.name in text
    flat = "".join(line.strip(" │┃") for line in text.splitlines())
    assert "NoSuchParameterWithAVeryLongName2" in flat.replace(" ", "")  # folded, not cut
    assert "In-hospital_death" in flat.replace(" ", "")


def test_site_tables_without_sets_show_the_findings():
    report = SiteReport(data_dir="/nonexistent", val_fraction=0.2, findings=[
        Finding("data folder", "error", "data directory does not exist",
                (DataError("data directory does not exist", "/nonexistent"),)),
    ])  # fmt: skip
    text = render(site_tables(report))
    assert_fits(text)
    assert "Sets in" not in text and "data directory does not exist" in text
