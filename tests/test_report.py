"""`fedicu report`: one self-contained HTML page of a finished run, read as text and shown in
headless Chromium."""

import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fedicu.server.federated_run import LogProgress
from fedicu.shared.config import RunConfig
from fedicu.shared.federation import prepare
from fedicu.shared.privacy.audit import AUDIT_JSON, AUDIT_PNG, audit
from fedicu.shared.run_dir import (
    BEST_MODEL,
    CROSS_SITE_JSON,
    CROSS_SITE_PNG,
    FINAL_MODEL,
    HOSPITAL_PRIVACY_FILE,
    MODEL_CARD,
    PRIVACY_FILE,
    RUN_FILE,
    TEST_PREDICTIONS,
    RunDirectory,
)
from fedicu.simulations.cli import main
from fedicu.simulations.cli.common import fmt
from fedicu.simulations.cli.report import REPORT_FILE
from fedicu.simulations.inprocess import run_in_process
from tests.browser import Browser

SECTIONS = ("summary", "learning-curves", "discrimination", "calibration", "hospitals", "cross-site", "privacy",
            "audit", "importance")  # fmt: skip
FIGURES = ("figure-learning-curves", "figure-discrimination", "figure-calibration", "figure-cross-site",
           "figure-audit", "figure-importance")  # fmt: skip
# Both kinds of DP, so that both ledgers are written; the in-process engine needs no Ray.
SMALL = RunConfig(hospitals=3, rounds=2, synthetic_stays=600, hidden_size=16, seed=1, dp=True, noise_multiplier=1.0,
                  hospital_dp_noise=0.3)  # fmt: skip


def fedicu_report(*args: str) -> tuple[int, str]:
    """`fedicu report ARGS` in this process: its exit code and what it printed."""
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(printed):
        patch.setattr(sys, "argv", ["fedicu", "report", *args])
        try:
            main()
        except SystemExit as exit_:
            return int(exit_.code or 0), printed.getvalue()
    return 0, printed.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small finished federated run (seeded, seconds) and a membership-inference audit of it."""
    run_dir = RunDirectory(tmp_path_factory.mktemp("report") / "run").create()
    run_in_process(SMALL, prepare(SMALL), run_dir, LogProgress())
    audit(run_dir.path, shadow_models=0)
    return run_dir.path


@pytest.fixture(scope="module")
def report(run):
    """The report with every section: the built-in cohort is generated again to explain its test stays."""
    code, printed = fedicu_report(str(run), "--data-format", "synthetic")
    assert code == 0, printed
    assert f"written to {run / REPORT_FILE}" in printed
    return (run / REPORT_FILE).read_text()


def test_the_page_holds_everything_it_shows_and_fetches_nothing(report):
    assert not re.search(r"https?://", report)
    assert "<script" not in report and "<link" not in report and "@import" not in report and "url(" not in report
    references = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", report)
    assert references and all(r.startswith(("data:image/png;base64,", "#")) for r in references), references
    assert "default-src 'none'" in report  # its Content-Security-Policy refuses any request
    for figure_id in FIGURES:
        data = re.search(rf'id="{figure_id}"[^>]*src="data:image/png;base64,([^"]+)"', report)
        assert data, figure_id
        assert Image.open(io.BytesIO(base64.b64decode(data.group(1)))).size[0] > 100


def test_each_section_shows_the_run_s_numbers(run, report):
    for section_id in SECTIONS:
        assert f'<section id="{section_id}">' in report
    card = json.loads((run / MODEL_CARD).read_text())
    assert fmt(card["metrics"]["best"]["test_auroc"]) in report
    for ledger in json.loads((run / PRIVACY_FILE).read_text()):
        assert f"<td>{ledger['hospital']}</td><td>{fmt(ledger['epsilon'])}</td>" in report
    assert fmt(json.loads((run / HOSPITAL_PRIVACY_FILE).read_text())["epsilon"]) in report
    assert fmt(json.loads((run / AUDIT_JSON).read_text())["loss_threshold"]["auroc"]) in report
    test_stays = len(json.loads((run / "stays.json").read_text())["test"])
    assert f"over {test_stays:,} stays: the run&#x27;s held-out test stays of synthetic" in report
    assert "absent" not in report.split('<section id="summary">')[1]  # every section had its data


def test_a_section_without_its_file_says_what_is_missing(run, tmp_path):
    bare = _copy(run, tmp_path / "bare")
    for name in (TEST_PREDICTIONS, CROSS_SITE_JSON, CROSS_SITE_PNG, PRIVACY_FILE, HOSPITAL_PRIVACY_FILE, AUDIT_JSON,
                 AUDIT_PNG):  # fmt: skip
        (bare / name).unlink()
    code, printed = fedicu_report(str(bare), "--out", str(tmp_path / "bare.html"))
    assert code == 0, printed
    page = (tmp_path / "bare.html").read_text()
    assert "Run with --data-dir to include variable importance." in page
    for missing in (TEST_PREDICTIONS, CROSS_SITE_JSON, PRIVACY_FILE, HOSPITAL_PRIVACY_FILE, AUDIT_JSON):
        assert f"No {missing}" in page
    assert all(f'<section id="{s}">' in page for s in SECTIONS)
    assert 'id="figure-learning-curves"' in page and 'id="figure-calibration"' not in page


def _copy(run, to):
    """The run directory without the report the `report` fixture wrote into it."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(REPORT_FILE))
    return to


def _unfinished(run, tmp_path):
    copy = _copy(run, tmp_path / "unfinished")
    RunDirectory(copy).set_status("running")
    return copy


def _without_model(run, tmp_path):
    copy = _copy(run, tmp_path / "no-model")
    (copy / BEST_MODEL).unlink()
    (copy / FINAL_MODEL).unlink()
    return copy


def _damaged_card(run, tmp_path):
    copy = _copy(run, tmp_path / "damaged")
    card = json.loads((copy / MODEL_CARD).read_text())
    del card["metrics"]
    (copy / MODEL_CARD).write_text(json.dumps(card))
    return copy


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda run, tmp: tmp / "nowhere", "no such directory"),
        (_damaged_card, "a file of the run does not read as fedicu wrote it (KeyError"),
        (lambda run, tmp: tmp, f"not a run directory (no {RUN_FILE})"),
        (_unfinished, "the run is not complete (status: running)"),
        (_without_model, "no saved model here"),
    ],
    ids=["missing", "damaged", "not-a-run", "unfinished", "no-model"],
)
def test_a_run_it_cannot_report_exits_2_naming_the_directory_and_writes_nothing(run, tmp_path, make, expected):
    run_dir = make(run, tmp_path)
    code, printed = fedicu_report(str(run_dir))
    assert code == 2
    assert str(run_dir) in printed and expected in printed and "Traceback" not in printed
    assert not (run_dir / REPORT_FILE).exists()


def test_an_out_that_is_no_html_file_is_refused_and_the_run_kept(run, tmp_path):
    card = (run / MODEL_CARD).read_bytes()
    code, printed = fedicu_report(str(run), "--out", str(run / MODEL_CARD))
    assert code == 2 and "give an .html file" in printed and (run / MODEL_CARD).read_bytes() == card


def test_an_out_in_a_missing_folder_exits_2_naming_the_option(run, tmp_path):
    out = tmp_path / "missing" / "report.html"
    code, printed = fedicu_report(str(run), "--out", str(out))
    assert code == 2 and f"--out {out}: no folder" in printed
    assert not out.parent.exists()


# --- in a browser -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium, installed with apt-get when it is absent and this is root."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("Chromium is not installed and cannot be here (needs root and apt-get): apt-get install chromium")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=environment)
        if done.returncode != 0:
            pytest.skip(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return shutil.which("chromium") or pytest.skip("apt-get installed chromium, but it is not on PATH")


IMAGES = """Array.from(document.images).map(image => {
  const box = image.getBoundingClientRect();
  return {id: image.id, complete: image.complete, width: image.naturalWidth, height: image.naturalHeight,
          x: box.left + window.scrollX, y: box.top + window.scrollY, w: box.width, h: box.height};
})"""


@pytest.mark.timeout(2400)  # the first run may install Chromium
def test_in_chromium_every_figure_renders_and_nothing_fails(report, run, chromium, tmp_path):
    with Browser(chromium, tmp_path / "browser") as browser:
        tab = browser.open((run / REPORT_FILE).as_uri())
        images = browser.evaluate(tab, IMAGES)
        shot = browser.screenshot(tab)
        problems, requested = browser.problems(), browser.requested_urls()
    assert browser.process.returncode is not None  # stopped
    (tmp_path / "report.png").write_bytes(shot)
    assert problems == []
    assert [u for u in requested if not u.startswith(("file://", "data:"))] == []
    assert sorted(i["id"] for i in images) == sorted(FIGURES)
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in images), images
    rgb = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(np.int32)
    colours = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # one number per pixel
    for image in images:
        top, left = round(image["y"]), round(image["x"])
        area = colours[top : top + round(image["h"]), left : left + round(image["w"])]
        assert area.size and len(np.unique(area)) > 10, image["id"]  # drawn, not one colour


def test_the_browser_check_sees_errors_failed_images_and_requests(chromium, tmp_path):
    """What the test above asserts away would be seen: an uncaught error, a console error, a request."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img id="x" src="http://127.0.0.1:9/x.png">'
                    '<script>console.error("logged"); throw new Error("thrown")</script></body></html>')  # fmt: skip
    with Browser(chromium, tmp_path / "browser") as browser:
        tab = browser.open(page.as_uri())
        images = browser.evaluate(tab, IMAGES)
        problems, requested = browser.problems(), browser.requested_urls()
    assert any("thrown" in p for p in problems) and any("logged" in p for p in problems), problems
    assert "http://127.0.0.1:9/x.png" in requested
    assert images[0]["width"] == 0
