"""Check a hospital's data folder before its SuperNode joins a federation.

`check(source)` reads the folder as `shared.federation.load_site` does, with
the loader's own parser. For PhysioNet 2012 (every set in the folder: `set-X/`
or `set-X.tar.gz`, plus `Outcomes-X.txt`) it does not stop at the first
problem: each record file and each Outcomes line that cannot be used becomes
one `DataError` (file and line, the loader's message) in the report, and
everything else is counted. A set is parsed whole; only when that fails is it
halved until every bad record file is found, so a clean folder costs one parse.
Other formats (long tables, MEDS) are read whole; the first problem is the
report's error. Rows skipped for an empty or unknown variable are a warning
with their counts (an error with `strict`); the statistics cover the time
series the model reads (`variables`).

The report is a list of findings, each `ok`, `warning` (usable, but look) or
`error` (`load_site` would refuse the folder, or training on it makes no
sense). Statistics (counts, labels, variables, physiological limits) cover the
usable stays: records that parse and have an Outcomes line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from fedicu.shared.cohort import Cohort, SkippedRows, merge_skipped, skipped_summary
from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import DataSource, load_cohort, physionet2012
from fedicu.shared.errors import DataError
from fedicu.shared.partition import site_split
from fedicu.shared.preprocessing import STATIC_NUMERIC, clean
from fedicu.shared.tasks import DEFAULT_TASK
from fedicu.shared.variables import ICU_TYPES, PHYSIOLOGICAL_LIMITS, TIME_SERIES

OK, WARNING, ERROR = "ok", "warning", "error"

# Fewest usable stays for a site to train on. At the default validation share (20 %)
# 50 stays leave 40 for training and 10 for validation; at an ICU mortality of 10 %
# that is 5 deaths, of which the stratified split puts round(0.2 x 5) = 1 in validation,
# the least for a validation AUROC to exist. Smaller sites mostly add noise to the
# federation and cannot measure their own model.
MIN_STAYS = 50
# In-hospital mortality outside this range suggests a wrong In-hospital_death column
# (ICU cohorts usually lie between 5 % and 30 %).
PLAUSIBLE_PREVALENCE = (0.02, 0.5)
# More stays without any time series than this share suggests an export that lost them
# (PhysioNet 2012 has 0.2 %).
MAX_DESCRIPTORS_ONLY = 0.05
# Values outside physiological limits are recording errors that cleaning drops; above this
# share of all values they are worth a look (PhysioNet 2012: 0.13 %).
MAX_OUTSIDE_LIMITS = 0.01
# A variable with more than this share of its values outside its physiological limits
# is probably recorded in other units (Temp in Fahrenheit, Weight in pounds, ...).
UNITS_SUSPECT = 0.5
SHOWN = 5  # names listed in a message before "..."


@dataclass(frozen=True)
class Finding:
    """One line of the report; an `error` finding carries at least one problem."""

    check: str
    severity: str  # ok, warning or error
    message: str
    problems: tuple[DataError, ...] = ()

    def to_dict(self) -> dict:
        return {
            "check": self.check,
            "severity": self.severity,
            "message": self.message,
            "problems": [{"file": p.path, "line": p.line, "message": p.message} for p in self.problems],
        }


@dataclass
class SetSummary:
    """Counts for one set; None where the set could not be read far enough to count."""

    name: str  # set-a
    records: str  # the set-X/ folder or set-X.tar.gz read
    outcomes: str
    record_files: int | None = None
    unusable_records: int | None = None  # record files that do not parse
    skipped_files: int | None = None  # entries that are not <RecordID>.txt records
    outcome_rows: int | None = None
    unusable_outcome_rows: int | None = None
    without_outcome: int | None = None  # record files with no Outcomes line
    outcomes_without_record: int | None = None  # Outcomes lines with no record file
    stays: int = 0  # usable: the record parses and has an Outcomes line
    deaths: int = 0
    measurements: int = 0
    descriptors_only: int = 0  # usable stays without any time-series row


@dataclass
class SiteReport:
    data_dir: str
    val_fraction: float
    test_fraction: float = RunConfig.test_fraction
    sets: list[SetSummary] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    outside_limits: dict[str, int] = field(default_factory=dict)  # values per variable
    never_observed: list[str] = field(default_factory=list)
    coverage: dict[str, float] = field(default_factory=dict)  # share of stays observing each variable
    split: dict[str, int] = field(default_factory=dict)  # train/val/test stays and deaths

    @property
    def usable(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    @property
    def first_error(self) -> DataError | None:
        return next((f.problems[0] for f in self.findings if f.severity == ERROR), None)

    @property
    def error_count(self) -> int:
        return sum(len(f.problems) for f in self.findings if f.severity == ERROR)

    def to_dict(self) -> dict:
        first = self.first_error
        return {
            "data_dir": self.data_dir,
            "usable": self.usable,
            "first_error": str(first) if first else None,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "min_stays": MIN_STAYS,
            "sets": {s.name: asdict(s) for s in self.sets},
            "totals": {
                k: sum(getattr(s, k) for s in self.sets)
                for k in ("stays", "deaths", "measurements", "descriptors_only")
            },
            "split": self.split,
            "outside_limits": self.outside_limits,
            "never_observed": self.never_observed,
            "coverage": self.coverage,
            "findings": [f.to_dict() for f in self.findings],
        }


def check(
    source: DataSource,
    val_fraction: float = RunConfig.val_fraction,
    variables: tuple[str, ...] = TIME_SERIES,
    test_fraction: float = RunConfig.test_fraction,
) -> SiteReport:
    """Check the site's data; never raises for bad data (it is in the report)."""
    folder = Path(source.data_dir)
    report = SiteReport(data_dir=str(folder), val_fraction=val_fraction, test_fraction=test_fraction)
    if not folder.is_dir():
        message = "data directory does not exist" if not folder.exists() else "not a directory"
        report.findings.append(_error("data folder", message, DataError(message, folder)))
        return report
    if source.format == "physionet2012":
        cohorts = _check_sets(folder, report, source.task)
    else:
        cohorts = _check_whole(source, report)
    if cohorts:
        report.findings.append(_skipped_finding(merge_skipped(*(c.skipped for c in cohorts)), source.strict))
    if report.sets:
        report.findings += _site_findings(report, cohorts, variables)
    return report


def _check_sets(folder: Path, report: SiteReport, task: str) -> list[Cohort]:
    names = physionet2012.sets_in(folder)
    report.findings += _layout_findings(folder, names)
    cohorts = []
    for name in names:
        summary, cohort, findings = _check_set(folder, name, task)
        report.sets.append(summary)
        report.findings += findings
        if cohort is not None:
            cohorts.append(cohort)
    if len(names) > 1:
        report.findings.append(_duplicates_across_sets(folder, cohorts))
    return cohorts


def _check_whole(source: DataSource, report: SiteReport) -> list[Cohort]:
    """Another format: read it whole with its reader (skipped rows allowed, reported after)."""
    check = f"{source.format} data"
    try:
        cohort = load_cohort(replace(source, strict=False))
    except (DataError, ValueError, OSError) as error:
        problem = error if isinstance(error, DataError) else DataError(str(error), source.data_dir)
        report.findings.append(_error(check, problem.message, problem))
        return []
    summary = SetSummary(source.format, source.data_dir, source.labels or source.data_dir)
    summary.stays, summary.deaths = len(cohort), int(cohort.stays["label"].sum())
    summary.measurements = len(cohort.measurements)
    summary.descriptors_only = len(cohort) - cohort.measurements["stay_id"].nunique()
    report.sets.append(summary)
    report.findings.append(Finding(check, OK, f"read {len(cohort):,} stays for task {cohort.task}"))
    if source.format == "meds":
        report.findings += _unmapped_codes(source)
    return [cohort] if len(cohort) else []


def _unmapped_codes(source: DataSource) -> list[Finding]:
    from fedicu.shared.datasets import meds

    top = meds.unmapped_numeric_codes(source, top=SHOWN)
    if not top:
        return []
    listed = ", ".join(f"{code} ({count:,})" for code, count in top)
    message = f"most frequent numeric codes that map to no variable (add them to --mapping if they are one): {listed}"
    return [Finding("unmapped codes", WARNING, message)]


def _skipped_finding(skipped: tuple[SkippedRows, ...], strict: bool) -> Finding:
    if not skipped:
        return Finding("skipped rows", OK, "no row with an empty or unknown variable")
    message = skipped_summary(skipped)
    if strict:
        return _error("skipped rows", f"{message} (--strict)", *(rows.error() for rows in skipped))
    return Finding("skipped rows", WARNING, f"{message}; the stays keep their other rows (--strict refuses them)")


# ----------------------------------------------------------------------- one set


def _layout_findings(folder: Path, names: list[str]) -> list[Finding]:
    if not names:
        message = "no set-a, set-b or set-c (folder or .tar.gz) found" + _format_hint(folder)
        return [_error("sets", message, DataError(message, folder))]
    read = [f"set-{s}/" if (folder / f"set-{s}").is_dir() else f"set-{s}.tar.gz" for s in names]
    findings = [Finding("sets", OK, f"reading {', '.join(read)}")]
    for s in names:
        if (folder / f"set-{s}").is_dir() and (folder / f"set-{s}.tar.gz").is_file():
            message = f"both set-{s}/ and set-{s}.tar.gz exist: set-{s}/ is read, the tarball ignored"
            findings.append(Finding("sets", WARNING, message))
    for s in physionet2012.VALID_SETS:
        if s not in names and (folder / f"Outcomes-{s}.txt").is_file():
            message = f"Outcomes-{s}.txt is ignored: there is no set-{s}/ or set-{s}.tar.gz"
            findings.append(Finding("sets", WARNING, message))
    return findings


def _format_hint(folder: Path) -> str:
    """For a folder of another format read as PhysioNet 2012: which --data-format it looks like."""
    if any((folder / f"stays.{kind}").exists() for kind in ("csv", "parquet")):
        return "; it looks like long tables: give --data-format tables"
    if (folder / "data").is_dir():
        return "; it looks like a MEDS dataset: give --data-format meds and --labels"
    return ""


def _check_set(folder: Path, name: str, task: str) -> tuple[SetSummary, Cohort | None, list[Finding]]:
    """Counts, the usable stays (None if there are none) and the findings of one set."""
    label = f"set-{name}"
    try:
        source = physionet2012._locate(folder, name)
    except DataError as error:  # the Outcomes file is missing
        summary = SetSummary(label, "", str(folder / f"Outcomes-{name}.txt"))
        return summary, None, [_error(f"{label} outcomes", error.message, error)]
    assert source.outcomes is not None  # training needs them: `_locate` refuses a set without
    summary = SetSummary(label, str(source.records), str(source.outcomes))
    findings = []

    outcome_problems: list[DataError] = []
    try:
        outcomes = physionet2012._read_outcomes(source.outcomes, outcome_problems)
    except DataError as error:  # unreadable, empty or without the header
        outcomes = None
        findings.append(_error(f"{label} outcomes", "the Outcomes file cannot be read", error))
    if outcomes is not None:
        summary.outcome_rows = len(outcomes) + len(outcome_problems)
        summary.unusable_outcome_rows = len(outcome_problems)
        findings.append(_problems_finding(
            f"{label} outcomes", outcome_problems, summary.outcome_rows, "Outcomes rows",
            f"{summary.outcome_rows:,} rows; header and columns as expected",
        ))  # fmt: skip

    try:
        records, skipped = physionet2012._read_records(source)
        if not records:
            raise DataError(f"no <RecordID>.txt record files in {label}", source.records)
    except DataError as error:  # an unreadable archive, a RecordID given twice, no records
        findings.append(_error(f"{label} records", error.message, error))
        return summary, None, findings
    except OSError as error:  # the folder itself cannot be listed
        problem = DataError(f"cannot read: {error.strerror}", source.records)
        findings.append(_error(f"{label} records", problem.message, problem))
        return summary, None, findings
    summary.record_files, summary.skipped_files = len(records), len(skipped)
    if outcomes is not None:  # before parsing: the loader, too, reports these first
        findings += _matching_findings(summary, source, records, outcomes, bool(outcome_problems))
    parts, record_problems = _parse_leniently(records)
    summary.unusable_records = len(record_problems)
    findings.append(_problems_finding(
        f"{label} records", record_problems, len(records), "record files",
        f"{len(records):,} record files; header {physionet2012.RECORD_HEADER}, 3 fields a line, "
        "times 00:00-48:00, finite values, descriptors once at 00:00",
    ))  # fmt: skip
    if skipped:
        message = f"{len(skipped)} skipped, not <RecordID>.txt records: {_names(skipped)}"
        findings.append(Finding(f"{label} records", WARNING, message))
    if outcomes is None or not parts:
        return summary, None, findings
    rows_skipped = merge_skipped(*(physionet2012.skipped_rows(part) for part in parts))
    per_stay = [key for key in parts[0] if key != physionet2012.SKIPPED_ROWS]
    arrays = {key: np.concatenate([part[key] for part in parts]) for key in per_stay}
    labelled = np.array([rid in outcomes for rid in arrays["stay_id"].tolist()], dtype=bool)
    per_measurement = np.repeat(labelled, arrays["counts"])
    arrays = {
        key: values[per_measurement if key in ("minute", "variable", "value") else labelled]
        for key, values in arrays.items()
    }
    arrays.update(physionet2012.outcome_arrays(outcomes, arrays["stay_id"]))
    arrays.update(physionet2012.skip_arrays(list(rows_skipped)))
    cohort = physionet2012._to_cohort(arrays, label, task)
    summary.stays = len(cohort)
    summary.deaths = int(cohort.stays["label"].sum())
    summary.measurements = len(cohort.measurements)
    summary.descriptors_only = len(cohort) - cohort.measurements["stay_id"].nunique()
    return summary, (cohort if len(cohort) else None), findings


def _parse_leniently(records: list) -> tuple[list[dict[str, np.ndarray]], list[DataError]]:
    """Parsed arrays of the records that parse, and the first problem in each that does
    not: the whole list at once, halved on failure (records are parsed independently)."""
    try:
        return [physionet2012._parse_records(records)], []
    except DataError as error:
        if len(records) == 1:
            return [], [error]
    middle = len(records) // 2
    first, first_problems = _parse_leniently(records[:middle])
    second, second_problems = _parse_leniently(records[middle:])
    return first + second, first_problems + second_problems


def _matching_findings(
    summary: SetSummary, source, records: list, outcomes: dict, bad_outcome_lines: bool
) -> list[Finding]:
    """Record files without an Outcomes line and Outcomes lines without a record file,
    worded as the loader words them."""
    label = summary.name
    line = "readable line" if bad_outcome_lines else "line"  # its line may be one of the bad ones
    unlabelled = [
        DataError(f"record {r.record_id} has no {line} in {source.outcomes}", r.where)
        for r in records if r.record_id not in outcomes
    ]  # fmt: skip
    present = {r.record_id for r in records}
    orphans = [
        DataError(f"RecordID {record_id} has no record file in {source.records}", source.outcomes, line)
        for record_id, (_, _, line) in sorted(outcomes.items(), key=lambda item: item[1].line)
        if record_id not in present
    ]  # fmt: skip
    summary.without_outcome, summary.outcomes_without_record = len(unlabelled), len(orphans)
    return [
        _problems_finding(f"{label} labels", unlabelled, len(records), "record files",
                          "every record file has an Outcomes line", "have no Outcomes line"),
        _problems_finding(f"{label} labels", orphans, len(outcomes), "Outcomes rows",
                          "every Outcomes row has a record file", "have no record file"),
    ]  # fmt: skip


def _duplicates_across_sets(folder: Path, cohorts: list[Cohort]) -> Finding:
    problems = []
    for i, first in enumerate(cohorts):
        for second in cohorts[i + 1 :]:
            common = first.stays.index.intersection(second.stays.index)
            a, b = first.stays["source"].iloc[0], second.stays["source"].iloc[0]
            problems += [DataError(f"RecordID {rid} is in both {a} and {b}", folder) for rid in common]
    if problems:
        return _error("RecordIDs", f"{len(problems)} RecordIDs are in two sets", *problems)
    return Finding("RecordIDs", OK, "no RecordID is in two sets")


# -------------------------------------------------------------------- whole site


def _site_findings(report: SiteReport, cohorts: list[Cohort], variables: tuple[str, ...]) -> list[Finding]:
    folder = Path(report.data_dir)
    stays = sum(s.stays for s in report.sets)
    deaths = sum(s.deaths for s in report.sets)
    measurements = sum(s.measurements for s in report.sets)
    per_set = "; ".join(f"{s.name}: {s.stays:,} stays, {s.measurements:,} measurements" for s in report.sets)
    findings = [Finding("counts", OK, f"{stays:,} usable stays, {measurements:,} measurements ({per_set})")]

    labels = np.concatenate([c.stays["label"].to_numpy() for c in cohorts]) if cohorts else np.zeros(0)
    # As the site splits them (with the default seed; the counts do not depend on it).
    parts = site_split(labels, report.test_fraction, report.val_fraction, RunConfig.seed)
    test, val = parts["test"], parts["val"]
    test_deaths, val_deaths = int(labels[test].sum()), int(labels[val].sum())
    train = stays - len(val) - len(test)
    report.split = {"train_stays": train, "train_deaths": deaths - val_deaths - test_deaths,
                    "val_stays": len(val), "val_deaths": val_deaths,
                    "test_stays": len(test), "test_deaths": test_deaths}  # fmt: skip
    if stays < MIN_STAYS:
        message = (
            f"{stays} usable stays; a site needs at least {MIN_STAYS} for a training and a "
            f"validation split (validation share {report.val_fraction:g}) that holds a death"
        )
        findings.append(_error("stays for training", message, DataError(message, folder)))
    else:
        message = (
            f"{train:,} for training, {len(val):,} for validation (share {report.val_fraction:g} of the rest), "
            f"{len(test):,} for the site's own test split (share {report.test_fraction:g})"
        )
        findings.append(Finding("stays for training", OK, message))
    if stays:
        task = cohorts[0].task if cohorts else DEFAULT_TASK
        findings.append(_prevalence(stays, deaths, len(val), val_deaths, folder, task))

    if cohorts:
        descriptors_only = sum(s.descriptors_only for s in report.sets)
        findings.append(_descriptors_only(stays, descriptors_only, measurements, folder))
        findings += _variables(report, cohorts, variables)
        findings.append(_descriptors(cohorts))
    return findings


def _prevalence(stays: int, deaths: int, val: int, val_deaths: int, folder: Path, task: str) -> Finding:
    """Deaths (or another task's positive labels): both classes, in validation too, and, for
    in-hospital death, a plausible ICU mortality."""
    share = deaths / stays
    what = "deaths" if task == DEFAULT_TASK else f"positive labels ({task})"
    message = f"{deaths:,} {what} in {stays:,} stays ({share:.2%}); {val_deaths:,} of them in validation"
    if deaths in (0, stays):
        message = f"every stay has label {int(deaths > 0)}: no outcome to learn"
        return _error("label prevalence", message, DataError(message, folder))
    if val_deaths in (0, val):
        return Finding("label prevalence", WARNING, f"{message}: the site's validation AUROC is undefined")
    low, high = PLAUSIBLE_PREVALENCE
    if task == DEFAULT_TASK and not low <= share <= high:
        return Finding("label prevalence", WARNING, f"{message}: outside {low:.0%}-{high:.0%}, check the labels")
    return Finding("label prevalence", OK, message)


def _descriptors_only(stays: int, count: int, measurements: int, folder: Path) -> Finding:
    message = f"{count:,} of {stays:,} stays have descriptors only (kept; the model sees their descriptors)"
    if measurements == 0:
        message = "no stay has any time-series row: the records hold descriptors only"
        return _error("descriptor-only stays", message, DataError(message, folder))
    return Finding("descriptor-only stays", WARNING if count > MAX_DESCRIPTORS_ONLY * stays else OK, message)


def _variables(report: SiteReport, cohorts: list[Cohort], variables: tuple[str, ...]) -> list[Finding]:
    """Variables never observed; values outside physiological limits (what `clean` drops),
    for the time series the model reads."""
    cohorts = [cohort.only_variables(variables) for cohort in cohorts]
    observed = np.zeros(len(TIME_SERIES), dtype=np.int64)
    stays_observed = np.zeros(len(TIME_SERIES), dtype=np.int64)
    removed: dict[str, int] = {}
    for cohort in cohorts:
        m = cohort.measurements
        codes = m["variable"].cat.codes.to_numpy()
        observed += np.bincount(codes, minlength=len(TIME_SERIES))
        pairs = m[["stay_id"]].assign(code=codes).drop_duplicates()
        stays_observed += np.bincount(pairs["code"].to_numpy(), minlength=len(TIME_SERIES))
        for name, count in clean(cohort)[1].items():
            removed[name] = removed.get(name, 0) + count
    stays = sum(len(c) for c in cohorts)
    report.coverage = {v: round(int(stays_observed[TIME_SERIES.index(v)]) / stays, 4) for v in variables}
    report.never_observed = [v for v in variables if observed[TIME_SERIES.index(v)] == 0]
    if report.never_observed:
        message = (f"{len(report.never_observed)} of {len(variables)} variables never observed (their inputs "
                   f"are always missing here): {', '.join(report.never_observed)}")  # fmt: skip
        findings = [Finding("variables", WARNING, message)]
    else:
        lowest = sorted(report.coverage.items(), key=lambda kv: kv[1])[:SHOWN]
        shown = ", ".join(f"{v} {share:.0%}" for v, share in lowest)
        message = f"all {len(variables)} time series observed; least covered (share of stays): {shown}"
        findings = [Finding("variables", OK, message)]

    values = int(observed.sum()) + sum(int(c.stays[list(STATIC_NUMERIC)].notna().sum().sum()) for c in cohorts)
    # clean() names the static descriptors age, height, weight: report them as such
    report.outside_limits = {(k if k in TIME_SERIES else f"{k.capitalize()} (descriptor)"): v
                             for k, v in sorted(removed.items(), key=lambda kv: -kv[1])}  # fmt: skip
    if report.outside_limits:
        total = sum(report.outside_limits.values())
        listed = ", ".join(f"{k} {v:,}" for k, v in report.outside_limits.items())
        message = (f"{total:,} values ({total / values:.2%}) outside physiological limits, dropped by "
                   f"cleaning: {listed}")  # fmt: skip
        severity = WARNING if total > MAX_OUTSIDE_LIMITS * values else OK
        findings.append(Finding("physiological limits", severity, message))
    else:
        findings.append(Finding("physiological limits", OK, "no value outside physiological limits"))
    suspect = [
        f"{v} {removed[v] / n:.0%} outside {_limits(v)}"
        for v, n in zip(TIME_SERIES, observed, strict=True) if n and removed.get(v, 0) > UNITS_SUSPECT * n
    ]  # fmt: skip
    if suspect:
        message = f"mostly outside physiological limits, other units? {'; '.join(suspect)}"
        findings.append(Finding("units", WARNING, message))
    return findings


def _descriptors(cohorts: list[Cohort]) -> Finding:
    stays = [c.stays for c in cohorts]
    missing = {name: sum(int(s[column].isna().sum()) for s in stays) for name, column in
               (("Age", "age"), ("Gender", "gender"), ("Height", "height"), ("Weight", "weight"),
                ("ICUType", "icu_type"))}  # fmt: skip
    odd_gender = sum(int((s["gender"].notna() & ~s["gender"].isin([0, 1])).sum()) for s in stays)
    odd_icu = sum(int((s["icu_type"].notna() & ~s["icu_type"].isin(list(ICU_TYPES))).sum()) for s in stays)
    message = "not recorded: " + ", ".join(f"{k} {v:,}" for k, v in missing.items())
    odd = []
    if odd_gender:
        odd.append(f"{odd_gender} stays with Gender other than 0 or 1")
    if odd_icu:
        odd.append(f"{odd_icu} stays with ICUType other than 1-4")
    if odd:
        return Finding("descriptors", WARNING, f"{'; '.join(odd)} (read as unknown); {message}")
    return Finding("descriptors", OK, message)


# ------------------------------------------------------------------------ helpers


def _error(check: str, message: str, *problems: DataError) -> Finding:
    return Finding(check, ERROR, message, problems)


def _problems_finding(check: str, problems: list[DataError], total: int, what: str, fine: str,
                      verb: str = "cannot be used") -> Finding:  # fmt: skip
    if not problems:
        return Finding(check, OK, fine)
    return _error(check, f"{len(problems)} of {total} {what} {verb}", *problems)


def _names(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


def _limits(variable: str) -> str:
    low, high = PHYSIOLOGICAL_LIMITS[variable]
    return f"{low:g}-{high:g}"
