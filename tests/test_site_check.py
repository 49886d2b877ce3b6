"""`fedicu site check`: every problem in a site's folder is named (file and line),
everything else is counted exactly, and the command exits 0 only for usable data.

The generated sets and their corruptions come from tests/test_bad_input.py; the
expected counts are read off the documented format rules there
(`expected_stay`), not off the parser. Examples are derandomized and bounded.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fedicu.shared import site_check
from fedicu.shared.cohort import Cohort
from fedicu.shared.datasets import DataSource, physionet2012, synthetic
from fedicu.shared.errors import DataError
from fedicu.shared.federation import load_site
from fedicu.shared.preprocessing import clean
from fedicu.shared.variables import PHYSIOLOGICAL_LIMITS, TIME_SERIES
from tests.cohorts import random_cohort
from tests.conftest import PHYSIONET_DIR, requires_physionet
from tests.test_bad_input import (
    CLI_DATASET,
    NOT_FINITE,
    STATIC,
    DataSet,
    bad_times,
    checked,
    datasets,
    expected_stay,
    extra_members,
    layouts,
    outcome_line,
    set_line,
    split,
    tar_gz,
    write,
    written,
)
from tests.test_physionet2012 import make_tarball


def check_folder(path: Path, val_fraction: float = 0.2, strict: bool = False) -> site_check.SiteReport:
    """The site check of a PhysioNet 2012 folder."""
    return site_check.check(DataSource(format="physionet2012", data_dir=str(path), strict=strict), val_fraction)


# ------------------------------------------------------------------ corruptions
# Each breaks one record file and returns the line the first problem is on (None: the
# whole file) and words of the loader's message (None: any message).


def data_line(dataset: DataSet, record_id: int, data) -> int:
    return data.draw(st.integers(2, len(dataset.records[record_id])))  # line 1 is the header


def with_value(dataset: DataSet, record_id: int, data, values) -> int:
    line = data_line(dataset, record_id, data)
    fields = split(dataset, record_id, line)
    set_line(dataset, record_id, line, b",".join([fields[0], fields[1], data.draw(values)]))
    return line


def wrong_field_count(dataset, record_id, data):
    line = data_line(dataset, record_id, data)
    count = data.draw(st.sampled_from([1, 2, 4, 5]))
    set_line(dataset, record_id, line, b",".join([*split(dataset, record_id, line), b"x", b"y"][:count]))
    return line, f"found {count}"


def wrong_header(dataset, record_id, data):
    header = data.draw(st.sampled_from([b"Time,Param,Value", b"time,parameter,value", b"Time;Parameter;Value",
                                        b"00:00,RecordID,1", b"Time,Parameter,Value,Unit"]))  # fmt: skip
    set_line(dataset, record_id, 1, header)
    return 1, "header must be"


def non_numeric_value(dataset, record_id, data):
    values = st.sampled_from([b"seventy", b"1.2.3", b"--5", b"1e", b"0x10", b'"73"', b"12%", b"n/a"])
    return with_value(dataset, record_id, data, values), "is not a number"


def not_finite_value(dataset, record_id, data):
    return with_value(dataset, record_id, data, st.sampled_from(NOT_FINITE)), "not a finite number"


def bad_time(dataset, record_id, data):
    time, words = data.draw(bad_times)  # beyond 48:00, negative, not HH:MM, garbage
    line = data_line(dataset, record_id, data)
    fields = split(dataset, record_id, line)
    set_line(dataset, record_id, line, b",".join([time, fields[1], fields[2]]))
    return line, words


def duplicated_descriptor(dataset, record_id, data):
    lines = dataset.records[record_id]
    static = [i for i, text in enumerate(lines) if i and text.split(b",")[1].decode() in STATIC]
    original = data.draw(st.sampled_from(static))
    lines.append(lines[original])
    name = lines[original].split(b",")[1].decode()
    return len(lines), f"{name} given twice (first on line {original + 1})"


def empty_file(dataset, record_id, data):
    dataset.raw_records[record_id] = data.draw(st.sampled_from([b"", b"\n", b"\r\n\r\n", b"\xef\xbb\xbf"]))
    return None, "empty file"


RECORD_CORRUPTIONS = {
    "malformed line": wrong_field_count,
    "wrong header": wrong_header,
    "non-numeric value": non_numeric_value,
    "NaN or inf": not_finite_value,
    "bad time": bad_time,
    "duplicated descriptor": duplicated_descriptor,
    "empty file": empty_file,
}
OUTCOME_CORRUPTIONS = ("no Outcomes line", "Outcomes row without record")


@dataclass
class Damage:
    """What was broken: record files (id -> line, words), stays without an
    Outcomes line, RecordIDs listed in Outcomes without a record file."""

    records: dict[int, tuple[int | None, str | None]] = field(default_factory=dict)
    unlabelled: list[int] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.records) + len(self.unlabelled) + len(self.orphans)


def damage(dataset: DataSet, data, kinds: list[str]) -> Damage:
    """Break a random non-empty subset of the stays, each one way out of `kinds`."""
    ids = sorted(s.record_id for s in dataset.stays)
    done = Damage()
    for record_id in data.draw(st.lists(st.sampled_from(ids), min_size=1, unique=True)):
        kind = data.draw(st.sampled_from(kinds))
        if kind == "no Outcomes line":
            del dataset.outcomes[outcome_line(dataset, record_id) - 1]
            done.unlabelled.append(record_id)
        elif kind == "Outcomes row without record":
            taken = set(ids) | set(done.orphans)

            def untaken(v: int, taken: set[int] = taken) -> bool:
                return v not in taken

            orphan = data.draw(st.integers(0, 2**63 - 1).filter(untaken))
            position = data.draw(st.integers(2, len(dataset.outcomes) + 1))
            dataset.outcomes.insert(position - 1, b"%d,1,2,3,-1,%d" % (orphan, data.draw(st.integers(0, 1))))
            done.orphans.append(orphan)
        else:
            done.records[record_id] = RECORD_CORRUPTIONS[kind](dataset, record_id, data)
    done.unlabelled.sort()
    return done


# -------------------------------------------------------------------- the oracle


def finding(report: site_check.SiteReport, check: str, severity: str | None = None) -> site_check.Finding:
    """The one finding of `check` (with `severity`, if given)."""
    found = [f for f in report.findings if f.check == check and severity in (None, f.severity)]
    assert len(found) == 1, [f.to_dict() for f in report.findings]
    return found[0]


def problems(report: site_check.SiteReport, check: str) -> list[tuple[str | None, int | None, str]]:
    found = [f for f in report.findings if f.check == check and f.severity == site_check.ERROR]
    return [(p.path, p.line, p.message) for f in found for p in f.problems]


def assert_problems(got, want) -> None:
    """`got` (path, line, message) matches `want` (path, line, words or None) in order."""
    assert [(path, line) for path, line, _ in got] == [(path, line) for path, line, _ in want], got
    for (_, _, message), (_, _, words) in zip(got, want, strict=True):
        assert words is None or words in message, (message, words)


def expected_counts(stays) -> dict:
    """Counts and out-of-range values of valid stays, by the documented rules."""
    counts = {"stays": len(stays), "deaths": 0, "measurements": 0, "descriptors_only": 0}
    outside: dict[str, int] = {}
    observed = set()
    for stay in stays:
        descriptors, measurements = expected_stay(stay)
        counts["deaths"] += stay.label
        counts["measurements"] += len(measurements)
        counts["descriptors_only"] += not measurements
        for _, name, value in measurements:
            observed.add(name)
            low, high = PHYSIOLOGICAL_LIMITS[name]
            if not low <= value <= high:
                outside[name] = outside.get(name, 0) + 1
        for name in ("Age", "Height", "Weight"):
            low, high = PHYSIOLOGICAL_LIMITS[name]
            value = descriptors[name]
            if not math.isnan(value) and not low <= value <= high:
                outside[f"{name} (descriptor)"] = outside.get(f"{name} (descriptor)", 0) + 1
    never = [v for v in TIME_SERIES if v not in observed]
    return {**counts, "outside_limits": outside, "never_observed": never}


def as_reported(removed: dict[str, int]) -> dict[str, int]:
    """`clean`'s counts named as the report names them (descriptors marked)."""
    return {k if k in TIME_SERIES else f"{k.capitalize()} (descriptor)": v for k, v in removed.items()}


def loader_error(data_dir: Path) -> DataError:
    with pytest.raises(DataError) as caught:
        physionet2012.load(data_dir, sets="a", cache=False)
    return caught.value


# ------------------------------------------------------- corruptions, generated


@pytest.mark.parametrize("kinds", [[k] for k in (*RECORD_CORRUPTIONS, *OUTCOME_CORRUPTIONS)]
                         + [[*RECORD_CORRUPTIONS, *OUTCOME_CORRUPTIONS]], ids=lambda k: k[0] if len(k) == 1 else "mixed")  # fmt: skip
@checked(8)
@given(dataset=datasets(max_stays=5), layout=layouts, data=st.data())
def test_every_problem_is_named_and_the_rest_counted(kinds, dataset, layout, data):
    broken = damage(dataset, data, kinds)
    with written(dataset, layout) as files:
        report = check_folder(files.data_dir)  # never raises: the test would fail

        (summary,) = report.sets
        assert not report.usable
        assert summary.record_files == len(dataset.stays)
        assert summary.unusable_records == len(broken.records)
        assert summary.without_outcome == len(broken.unlabelled)
        assert summary.outcomes_without_record == len(broken.orphans)
        assert summary.outcome_rows == len(dataset.stays) - len(broken.unlabelled) + len(broken.orphans)
        assert summary.unusable_outcome_rows == 0
        assert_problems(
            problems(report, "set-a records"),
            [(files.record(rid), line, words) for rid, (line, words) in sorted(broken.records.items())],
        )
        orphans = sorted(broken.orphans, key=lambda rid: outcome_line(dataset, rid))
        assert_problems(problems(report, "set-a labels"),
                        [(files.record(rid), None, f"record {rid} has no line in {files.outcomes}")
                         for rid in broken.unlabelled]
                        + [(files.outcomes, outcome_line(dataset, rid), f"RecordID {rid} has no record file")
                           for rid in orphans])  # fmt: skip

        usable = [
            s for s in dataset.stays if s.record_id not in broken.records and s.record_id not in broken.unlabelled
        ]
        want = expected_counts(usable)
        for key in ("stays", "deaths", "measurements", "descriptors_only"):
            assert getattr(summary, key) == want[key], key
        if usable:
            assert report.outside_limits == want["outside_limits"]
            assert report.never_observed == want["never_observed"]

        # The first error is the one loading the folder stops at (when that is unambiguous:
        # with several bad record files the loader names the first by kind of problem).
        if len(broken.records) <= 1 or broken.unlabelled or broken.orphans:
            error = loader_error(files.data_dir)
            first = report.first_error
            assert first is not None
            assert (first.path, first.line, first.message) == (error.path, error.line, error.message)


@checked(20)
@given(dataset=datasets(max_stays=5), layout=layouts, data=st.data())
def test_bad_outcome_lines_are_each_named(dataset, layout, data):
    chosen = data.draw(st.lists(st.sampled_from(dataset.stays), min_size=1, unique=True))
    want, duplicated = [], set()
    for stay in chosen:
        line = outcome_line(dataset, stay.record_id)
        fields = dataset.outcomes[line - 1].split(b",")
        kind = data.draw(st.sampled_from(["label", "fields", "id", "number", "duplicate"]))
        if kind == "duplicate":  # the first line stands; the copy is the problem
            dataset.outcomes.append(dataset.outcomes[line - 1])
            want.append((len(dataset.outcomes), f"appears twice (first on line {line})"))
            duplicated.add(stay.record_id)
            continue
        if kind == "label":
            fields[5], words = data.draw(st.sampled_from([b"2", b"-1", b"yes", b"", b"1.0"])), "must be 0 or 1"
        elif kind == "fields":
            fields, words = fields[:4], "found 4"
        elif kind == "id":
            fields[0], words = data.draw(st.sampled_from([b"x1", b"1.5", b"-3", b""])), "is not a whole number"
        else:
            fields[2], words = data.draw(st.sampled_from([b"x", b"nan", b"inf", b""])), "SOFA"
        dataset.outcomes[line - 1] = b",".join(fields)
        want.append((line, words))
    want.sort()
    unreadable = sorted(s.record_id for s in chosen if s.record_id not in duplicated)
    with written(dataset, layout) as files:
        report = check_folder(files.data_dir)
        (summary,) = report.sets
        assert_problems(problems(report, "set-a outcomes"), [(files.outcomes, line, words) for line, words in want])
        assert summary.unusable_outcome_rows == len(want)
        assert summary.outcome_rows == len(dataset.outcomes) - 1  # all but the header
        assert summary.without_outcome == len(unreadable)
        assert_problems(problems(report, "set-a labels"),
                        [(files.record(rid), None, f"record {rid} has no readable line in") for rid in unreadable])  # fmt: skip
        assert summary.stays == len(dataset.stays) - len(unreadable)
        first = report.first_error
        assert first is not None
        assert (first.path, first.line) == (files.outcomes, want[0][0])
        error = loader_error(files.data_dir)
        assert (error.path, error.line, error.message) == (first.path, first.line, first.message)


@checked(10)
@given(dataset=datasets(max_stays=4), layout=layouts, data=st.data())
def test_unusable_outcomes_file_is_one_error_and_records_are_still_checked(dataset, layout, data):
    content, line = data.draw(st.sampled_from([(b"", None), (b"\n\n", None), (b"RecordID,Death\n1,0\n", 1),
                                               (b"\xef\xbb\xbfRecordID;SAPS-I\n", 1)]))  # fmt: skip
    broken = damage(dataset, data, list(RECORD_CORRUPTIONS))
    with written(dataset, layout) as files:
        Path(files.outcomes).write_bytes(content)
        report = check_folder(files.data_dir)
        (summary,) = report.sets
        assert [(p.path, p.line) for p in finding(report, "set-a outcomes").problems] == [(files.outcomes, line)]
        assert summary.outcome_rows is None and summary.without_outcome is None  # not counted, not guessed
        assert summary.record_files == len(dataset.stays)
        assert summary.unusable_records == len(broken.records)
        assert summary.stays == 0
        assert str(report.first_error) == str(loader_error(files.data_dir))


@checked(15)
@given(dataset=datasets(style=False, max_stays=3), data=st.data())
def test_tarball_extra_members_are_skipped_and_counted(dataset, data):
    extras = [(name, content) for name, content, kind in data.draw(extra_members()) if kind == "file"]
    assume(extras)
    members = [(f"set-a/{rid}.txt", dataset.record_bytes(rid)) for rid in sorted(dataset.records)]
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        (data_dir / "set-a.tar.gz").write_bytes(tar_gz(data.draw(st.permutations(members + extras))))
        (data_dir / "Outcomes-a.txt").write_bytes(dataset.outcomes_bytes())
        report = check_folder(data_dir)
        (summary,) = report.sets
        assert summary.skipped_files == len(extras)
        assert summary.record_files == summary.stays == len(dataset.stays)
        skipped = finding(report, "set-a records", site_check.WARNING)
        assert f"{len(extras)} skipped" in skipped.message
        assert all(name in skipped.message for name in sorted(n for n, _ in extras)[: site_check.SHOWN])
        assert finding(report, "set-a records", site_check.OK)
        assert problems(report, "set-a records") == []


@checked(15)
@given(dataset=datasets(style=False, max_stays=3), data=st.data())
def test_broken_tarball_is_named_and_nothing_is_counted(dataset, data):
    with written(dataset, "tarball") as files:
        compressed = files.archive.read_bytes()
        kind = data.draw(st.sampled_from(["truncated", "garbage", "member cut short"]))
        if kind == "truncated":
            files.archive.write_bytes(compressed[: data.draw(st.integers(0, len(compressed) - 1))])
        elif kind == "garbage":
            files.archive.write_bytes(data.draw(st.binary(max_size=64)))
        else:  # a member whose data ends before its size says
            tar = gzip.decompress(compressed)
            with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
                member = data.draw(st.sampled_from([m for m in archive if m.isfile()]))
            cut = data.draw(st.integers(member.offset_data, member.offset_data + max(member.size - 1, 0)))
            files.archive.write_bytes(gzip.compress(tar[:cut]))
        report = check_folder(files.data_dir)
        (summary,) = report.sets
        assert [(p.path, p.line) for p in finding(report, "set-a records").problems] == [(str(files.archive), None)]
        assert summary.record_files is None and summary.unusable_records is None and summary.stays == 0
        assert str(report.first_error) == str(loader_error(files.data_dir))


# ------------------------------------------------------------ site-level checks


def write_site(cohort: Cohort, data_dir: Path, set_name: str = "a", layout: str = "directory") -> Path:
    physionet2012.write(cohort, data_dir, set_name)
    if layout == "tarball":
        make_tarball(data_dir, set_name)
    return data_dir


def relabel(cohort: Cohort, deaths: int) -> Cohort:
    stays = cohort.stays.copy()
    stays["label"] = np.int8(0)
    stays.iloc[:deaths, stays.columns.get_loc("label")] = 1
    return Cohort(stays=stays, measurements=cohort.measurements)


@pytest.mark.parametrize("layout", ["directory", "tarball"])
def test_clean_site_is_usable_and_counted_like_the_loader(tmp_path, layout):
    cohort = synthetic.generate(hospitals=2, stays=120, seed=3)
    data_dir = write_site(cohort.subset(cohort.stays.index[:70]), tmp_path, "a", layout)
    write_site(cohort.subset(cohort.stays.index[70:]), tmp_path, "b", layout)
    report = check_folder(data_dir)
    assert report.usable and report.first_error is None
    assert all(f.severity != site_check.ERROR for f in report.findings)
    loaded = physionet2012.load(data_dir, sets=("a", "b"), cache=False)
    for summary in report.sets:
        mine = loaded.stays[loaded.stays["source"] == summary.name]
        assert summary.stays == summary.record_files == summary.outcome_rows == len(mine)
        assert summary.deaths == int(mine["label"].sum())
        assert summary.measurements == int(loaded.measurements["stay_id"].isin(mine.index).sum())
    assert report.outside_limits == as_reported(clean(loaded)[1])
    assert report.never_observed == [v for v in TIME_SERIES if v not in set(loaded.measurements["variable"])]
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["usable"] and as_json["totals"]["stays"] == len(loaded)
    split = as_json["split"]
    assert split["train_stays"] + split["val_stays"] + split["test_stays"] == len(loaded)
    site = load_site(DataSource("physionet2012", str(data_dir), sets="a,b"), "here", 0.2, 0.2, 0)
    assert (len(site.train), len(site.val), len(site.test)) == (
        split["train_stays"], split["val_stays"], split["test_stays"]
    )  # fmt: skip


@pytest.mark.parametrize("stays", [site_check.MIN_STAYS - 1, site_check.MIN_STAYS])
def test_too_few_stays_for_training(tmp_path, stays):
    data_dir = write_site(relabel(random_cohort(stays, seed=1), deaths=10), tmp_path)
    report = check_folder(data_dir)
    check = finding(report, "stays for training")
    if stays < site_check.MIN_STAYS:
        assert check.severity == site_check.ERROR and not report.usable
        assert str(report.first_error).startswith(f"{data_dir}: {stays} usable stays")
    else:
        assert check.severity == site_check.OK and report.usable
        val, test = report.split["val_stays"], report.split["test_stays"]
        assert check.message.startswith(f"{stays - val - test} for training, {val} for validation")
        assert f"{test} for the site's own test split" in check.message


@pytest.mark.parametrize(
    ("deaths", "severity", "words"),
    [(0, "error", "every stay has label 0"), (60, "error", "every stay has label 1"),
     (2, "warning", "validation AUROC is undefined"), (40, "warning", "check the labels"),
     (9, "ok", "9 deaths in 60 stays (15.00%)")],
)  # fmt: skip
def test_label_prevalence(tmp_path, deaths, severity, words):
    report = check_folder(write_site(relabel(random_cohort(60, seed=2), deaths), tmp_path))
    check = finding(report, "label prevalence")
    assert (check.severity, report.usable) == (severity, severity != "error")
    assert words in check.message


def test_variables_never_observed_and_values_outside_limits(tmp_path):
    cohort = random_cohort(60, seed=4)  # HR and Temp only
    m = cohort.measurements.copy()
    temp = (m["variable"] == "Temp").to_numpy()
    m.loc[temp, "value"] = m.loc[temp, "value"] * 9 / 5 + 32  # Fahrenheit: every Temp is out of range
    m.loc[m.index[~temp][:3], "value"] = 0.0  # HR 0: a detached lead
    stays = cohort.stays.copy()
    stays.loc[stays.index[:2], "height"] = 1.75  # metres, not cm
    report = check_folder(write_site(Cohort(stays=stays, measurements=m), tmp_path))
    assert report.usable
    assert report.never_observed == [v for v in TIME_SERIES if v not in ("HR", "Temp")]
    assert finding(report, "variables").severity == site_check.WARNING
    assert report.outside_limits == {"Temp": int(temp.sum()), "HR": 3, "Height (descriptor)": 2}
    assert finding(report, "physiological limits").severity == site_check.WARNING
    units = finding(report, "units", site_check.WARNING)
    assert "Temp 100% outside 25-45" in units.message and "HR" not in units.message


def test_descriptor_only_stays_and_odd_descriptor_codes(tmp_path):
    cohort = random_cohort(60, seed=5)
    without_series = cohort.stays.index[:6]  # 10 %
    stays = cohort.stays.copy()
    stays.loc[stays.index[10], "gender"] = 2.0
    stays.loc[stays.index[11:13], "icu_type"] = 7.0
    m = cohort.measurements[~cohort.measurements["stay_id"].isin(without_series)].reset_index(drop=True)
    report = check_folder(write_site(Cohort(stays=stays, measurements=m), tmp_path))
    assert report.sets[0].descriptors_only == 6
    assert finding(report, "descriptor-only stays").severity == site_check.WARNING
    descriptors = finding(report, "descriptors")
    assert descriptors.severity == site_check.WARNING
    assert "1 stays with Gender other than 0 or 1" in descriptors.message
    assert "2 stays with ICUType other than 1-4" in descriptors.message


def test_folder_layout_problems(tmp_path):
    cohort = random_cohort(60, seed=6)
    assert not check_folder(tmp_path / "nowhere").usable
    assert (
        str(check_folder(tmp_path / "nowhere").first_error) == f"{tmp_path / 'nowhere'}: data directory does not exist"
    )
    (tmp_path / "file").write_text("x")
    assert str(check_folder(tmp_path / "file").first_error) == f"{tmp_path / 'file'}: not a directory"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no set-a, set-b or set-c" in str(check_folder(empty).first_error)

    site = write_site(cohort, tmp_path / "site", "a", "tarball")
    physionet2012.write(cohort, tmp_path / "extracted", "a")
    shutil.move(tmp_path / "extracted" / "set-a", site / "set-a")  # both set-a/ and set-a.tar.gz
    (site / "Outcomes-c.txt").write_text(physionet2012.OUTCOMES_HEADER + "\n")  # no set-c
    report = check_folder(site)
    assert report.usable
    warnings = [f.message for f in report.findings if f.check == "sets" and f.severity == site_check.WARNING]
    assert any("set-a/ is read, the tarball ignored" in w for w in warnings)
    assert any("Outcomes-c.txt is ignored" in w for w in warnings)

    renumbered = Cohort(stays=cohort.stays.set_axis(cohort.stays.index + 10**6),
                        measurements=cohort.measurements.assign(stay_id=cohort.measurements["stay_id"] + 10**6))  # fmt: skip
    physionet2012.write(renumbered, site, "b")
    (site / "Outcomes-b.txt").unlink()
    report = check_folder(site)
    assert str(report.first_error) == f"{site / 'Outcomes-b.txt'}: outcomes file of set b is missing"


def test_a_stay_in_two_sets(tmp_path):
    cohort = random_cohort(60, seed=7)
    site = write_site(cohort, tmp_path, "a")
    write_site(cohort.subset(cohort.stays.index[:3]), tmp_path, "b")
    report = check_folder(site)
    duplicates = [str(p) for p in finding(report, "RecordIDs").problems]
    assert duplicates == [f"{site}: RecordID {rid} is in both set-a and set-b" for rid in cohort.stays.index[:3]]
    with pytest.raises(DataError, match=f"RecordID {cohort.stays.index[0]} is in both set-a and set-b"):
        physionet2012.load(site, sets=("a", "b"), cache=False)


def test_a_set_folder_that_cannot_be_listed(tmp_path, monkeypatch):
    site = write_site(random_cohort(60, seed=8), tmp_path)

    def refuse(source):
        raise PermissionError(13, "Permission denied", str(source.records))

    monkeypatch.setattr(physionet2012, "_read_records", refuse)
    report = check_folder(site)
    assert str(report.first_error) == f"{site / 'set-a'}: cannot read: Permission denied"
    assert report.sets[0].record_files is None and report.sets[0].stays == 0


# --------------------------------------------------------------------------- CLI


def fedicu(monkeypatch, capsys, *args: str) -> tuple[int | str | None, str, str]:
    """Exit code, stdout and stderr of the `fedicu` command line."""
    from fedicu.simulations.cli import main

    monkeypatch.setattr(sys, "argv", ["fedicu", *args])
    try:
        main()
        code: int | str | None = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exit_codes_and_messages(monkeypatch, capsys, tmp_path):
    site = write_site(synthetic.generate(hospitals=2, stays=80, seed=0), tmp_path / "site")
    code, out, err = fedicu(monkeypatch, capsys, "site", "check", "--data-dir", str(site))
    assert (code, out) == (0, "")
    # the terminal folds a long path onto a second line: compare the words
    assert "Findings" in err and f"{site} can be used" in " ".join(err.split()) and "Traceback" not in err

    code, out, err = fedicu(monkeypatch, capsys, "site", "check", "--data-dir", str(site), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["usable"] and report["first_error"] is None and report["sets"]["set-a"]["stays"] == 80

    record = min((site / "set-a").glob("*.txt"), key=lambda p: int(p.stem))
    lines = record.read_text().splitlines()
    lines[3] = "00:00,Gender,male"
    record.write_text("\n".join(lines) + "\n")
    code, out, err = fedicu(monkeypatch, capsys, "site", "check", "--data-dir", str(site))
    assert code == 2 and out == "" and "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(f"error: {record}:4: Value 'male' is not a number")

    code, out, err = fedicu(monkeypatch, capsys, "site", "check", "--data-dir", str(site), "--json")
    assert code == 2
    report = json.loads(out)
    assert not report["usable"] and report["first_error"] == f"{record}:4: Value 'male' is not a number"
    assert report["sets"]["set-a"]["unusable_records"] == 1 and report["sets"]["set-a"]["stays"] == 79

    for args, words in [(["--data-dir", str(tmp_path / "nowhere")], f"{tmp_path / 'nowhere'}: data directory does not exist"),
                        (["--data-dir", str(site), "--val-fraction", "1"], "--val-fraction must lie in (0, 1)"),
                        ([], "Missing option '--data-dir'")]:  # fmt: skip
        code, _, err = fedicu(monkeypatch, capsys, "site", "check", *args)
        assert code == 2 and words in err and "Traceback" not in err, err


# --------------------------------------------------------------------- real data


@requires_physionet
def test_real_sets_a_and_b():
    report = check_folder(PHYSIONET_DIR)
    assert report.usable and report.first_error is None
    sets = {s.name: s for s in report.sets}
    assert (sets["set-a"].stays, sets["set-a"].deaths) == (4000, 554)
    assert (sets["set-b"].stays, sets["set-b"].deaths) == (4000, 568)
    for summary in sets.values():
        assert summary.record_files == summary.outcome_rows == 4000
        assert summary.unusable_records == summary.without_outcome == summary.outcomes_without_record == 0
    assert report.never_observed == []
    loaded = physionet2012.load(PHYSIONET_DIR, sets=("a", "b"), cache=False)
    assert sum(s.measurements for s in report.sets) == len(loaded.measurements)
    assert report.outside_limits == as_reported(clean(loaded)[1])


@pytest.mark.parametrize("layout", ["directory", "tarball"])
def test_skipped_rows_are_a_warning_with_their_counts_and_an_error_when_strict(tmp_path, layout):
    dataset = DataSet(CLI_DATASET.stays, CLI_DATASET.style)
    first, second = sorted(s.record_id for s in dataset.stays)[:2]  # read in this order
    dataset.records[first].insert(3, b"10:45,,1.9")
    dataset.records[second] += [b"11:00,,2", b"12:00,SpO2,97"]
    files = write(dataset, tmp_path / "pn", layout)
    lenient = check_folder(files.data_dir)
    skipped = finding(lenient, "skipped rows", site_check.WARNING)
    assert "skipped 3 rows" in skipped.message and f"'' 2 (first {files.record(first)}:4)" in skipped.message
    assert f"'SpO2' 1 (first {files.record(second)}:{len(dataset.records[second])})" in skipped.message
    assert finding(lenient, "set-a records", site_check.OK)  # the records themselves are fine
    strict = check_folder(files.data_dir, strict=True)
    assert not strict.usable and str(strict.first_error).startswith(f"{files.record(first)}:4: ")
    assert [p.line for p in finding(strict, "skipped rows", site_check.ERROR).problems] == [
        4,
        len(dataset.records[second]),
    ]
