"""The built-in synthetic cohort: hospitals that differ, patients whose fate is known.

`generate(hospitals, stays, seed)` builds a complete `Cohort` without any
download, so every part of fedicu runs out of the box. The world it simulates:

- Hospitals differ in size, case mix (ICU types and how sick their patients
  are), in-hospital mortality, how often they chart vitals and draw labs, and
  in the bias of some of their devices (a thermometer reading 0.4 degC high, a
  blood-pressure cuff reading 5 mmHg high). `hospital_profiles` returns these
  site parameters; the same seed always gives the same hospitals.
- Each stay follows a latent severity trajectory over the 48 hours: a baseline
  set by ICU type, the hospital's case mix and age, plus a drift (improving or
  deteriorating) and smooth fluctuations. Vitals and labs are noisy readings
  of that state around each patient's own baseline, in PhysioNet 2012 units.
- The outcome is drawn from a known probability of death, `risk`, driven by
  the severity over the last hours, age, ICU type and the hospital. `risk` is
  kept as an extra stays column: roc_auc_score(label, risk) is the best any
  model can achieve on the cohort.
- Missingness is informative, as in real ICUs: sicker patients are measured
  more often, blood gases and lactate are drawn mainly when patients are
  severe or ventilated, and arterial lines go to ventilated and surgical
  patients while the others get a cuff.
- A few readings are recording errors outside the physiological limits, and a
  few stays have descriptors only, so cleaning has real work to do.

Everything is drawn from `numpy.random.Generator`s seeded by `seed`: the same
arguments give bit-for-bit identical tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from fedicu.shared.cohort import VARIABLE_DTYPE, Cohort
from fedicu.shared.tasks import DEFAULT_TASK
from fedicu.shared.variables import PHYSIOLOGICAL_LIMITS, TIME_SERIES

if TYPE_CHECKING:
    from fedicu.shared.datasets import DataSource

SOURCE = "synthetic"
MINUTES = 48 * 60
MIN_STAYS_PER_HOSPITAL = 20
FIRST_STAY_ID = 100000


class Variable(NamedTuple):
    """How one time series reads the latent state of a patient."""

    name: str
    panel: str  # readings of one panel are taken together (see PANELS)
    center: float  # typical value of a stable patient (geometric centre if log)
    between: float  # sd of a patient's own baseline around the centre
    noise: float  # sd of one reading around the patient's current state
    severity: float  # shift per unit of latent severity (the sign is the direction)
    log: bool  # centre, sds and shift act on log(value): right-skewed labs
    decimals: int  # charting precision
    offsets: tuple[float, ...] = ()  # device biases a hospital's equipment may have
    error: tuple[str, float] | None = None  # recording error: ("set", v) or ("times", k)


# The model of the world, one row per variable. Values are in PhysioNet 2012
# units and roughly match the medians and spreads of the real challenge data.
# MAP and NIMAP are not drawn on their own: they follow from the systolic and
# diastolic readings of the same measurement (their rows give errors only).
# Weight is centred on the stay's own admission weight (centre unused).
# fmt: off
VARIABLES: tuple[Variable, ...] = (
    #        name          panel        centre between noise  severity log    dec offsets      error
    Variable("HR",         "vitals",     82.0, 10.0,  5.0,    9.0,  False, 0, (),            ("set", 0.0)),
    Variable("RespRate",   "breathing",  18.0,  3.0,  2.0,    3.0,  False, 0, (),            ("set", 0.0)),
    Variable("SysABP",     "line",      122.0, 14.0,  7.0,   -9.0,  False, 0, (),            ("set", 0.0)),
    Variable("DiasABP",    "line",       60.0,  8.0,  4.0,   -5.0,  False, 0, (),            ("set", 0.0)),
    Variable("MAP",        "line",        0.0,  0.0,  0.0,    0.0,  False, 0, (),            ("set", 0.0)),
    Variable("NISysABP",   "cuff",      120.0, 14.0,  8.0,   -9.0,  False, 0, (5.0, -5.0),   ("set", 0.0)),
    Variable("NIDiasABP",  "cuff",       60.0,  8.0,  5.0,   -5.0,  False, 0, (),            ("set", 0.0)),
    Variable("NIMAP",      "cuff",        0.0,  0.0,  0.0,    0.0,  False, 2, (),            ("set", 0.0)),
    Variable("Temp",       "temperature",37.0,  0.3,  0.3,    0.4,  False, 1, (0.4, -0.4),   ("set", -17.8)),
    Variable("GCS",        "neuro",      14.5,  0.6,  0.8,   -2.5,  False, 0, (),            None),
    Variable("Urine",      "urine",      90.0,  0.4,  0.5,   -0.45, True,  0, (),            ("set", -1.0)),
    Variable("MechVent",   "ventilator",  1.0,  0.0,  0.0,    0.0,  False, 0, (),            None),
    Variable("FiO2",       "ventilator",  0.45, 0.08, 0.05,   0.08, False, 2, (),            ("times", 100.0)),
    Variable("pH",         "gas",         7.39, 0.03, 0.03,  -0.045,False, 2, (),            ("times", 100.0)),
    Variable("PaCO2",      "gas",        40.0,  5.0,  4.0,    1.5,  False, 0, (),            None),
    Variable("PaO2",       "gas",       120.0,  0.3,  0.25,  -0.15, True,  0, (),            None),
    Variable("SaO2",       "gas",        97.5,  1.0,  1.0,   -1.5,  False, 0, (),            ("set", 0.0)),
    Variable("Lactate",    "lactate",     1.4,  0.3,  0.25,   0.45, True,  1, (),            None),
    Variable("BUN",        "chemistry",  20.0,  0.45, 0.08,   0.25, True,  0, (),            None),
    Variable("Creatinine", "chemistry",   1.0,  0.45, 0.08,   0.22, True,  1, (),            None),
    Variable("Glucose",    "chemistry", 130.0,  0.2,  0.2,    0.08, True,  0, (12.0,),       ("set", 0.0)),
    Variable("HCO3",       "chemistry",  24.0,  2.5,  1.2,   -2.0,  False, 0, (),            None),
    Variable("K",          "chemistry",   4.1,  0.4,  0.3,    0.1,  False, 1, (),            None),
    Variable("Na",         "chemistry", 139.0,  3.5,  1.5,    0.0,  False, 0, (),            None),
    Variable("Mg",         "chemistry",   2.0,  0.25, 0.15,   0.0,  False, 1, (),            None),
    Variable("HCT",        "chemistry",  30.5,  4.0,  1.2,   -0.6,  False, 1, (),            None),
    Variable("Platelets",  "chemistry", 190.0,  0.4,  0.08,  -0.2,  True,  0, (),            None),
    Variable("WBC",        "chemistry",  11.0,  0.35, 0.12,   0.2,  True,  1, (),            None),
    Variable("ALP",        "liver",      90.0,  0.5,  0.1,    0.15, True,  0, (),            None),
    Variable("ALT",        "liver",      40.0,  0.8,  0.15,   0.5,  True,  0, (),            None),
    Variable("AST",        "liver",      55.0,  0.8,  0.15,   0.5,  True,  0, (),            None),
    Variable("Bilirubin",  "liver",       0.9,  0.7,  0.1,    0.35, True,  1, (),            None),
    Variable("Albumin",    "liver",       2.95, 0.5,  0.15,  -0.25, False, 1, (),            None),
    Variable("TroponinI",  "troponin-i",  2.0,  1.2,  0.3,    0.4,  True,  1, (),            None),
    Variable("TroponinT",  "troponin-t",  0.15, 1.3,  0.3,    0.4,  True,  2, (),            None),
    Variable("Cholesterol","lipids",    150.0, 40.0,  5.0,  -10.0,  False, 0, (),            None),
    Variable("Weight",     "weight",      0.0,  0.0,  0.6,    0.8,  False, 1, (),            ("set", -1.0)),
)
# fmt: on
DERIVED_MEAN = {"MAP": ("SysABP", "DiasABP"), "NIMAP": ("NISysABP", "NIDiasABP")}
FEVER_SHARE = 0.75  # the other stays drift towards hypothermia as they worsen
SEDATION_GCS = -5.0  # ventilated patients are sedated


class Panel(NamedTuple):
    """When a group of variables is measured."""

    name: str
    clock: str  # "vital", "lab" (scaled by the hospital's rhythm) or "daily" (the same everywhere)
    interval: float  # minutes between readings at severity 0 in a reference hospital
    urgency: float  # log-rate increase per unit of severity: sicker, measured more often
    complete: float  # chance each variable of the panel is reported at a reading
    # logit of the chance a stay is ever measured: constant, per unit of baseline
    # severity, if ventilated, if surgical (ICU types 2 and 4), if coronary (type 1)
    cover: tuple[float, float, float, float, float]


# fmt: off
PANELS: tuple[Panel, ...] = (
    #     name           clock    interval urgency complete  cover: const  sev   vent  surg  coronary
    Panel("vitals",      "vital",    60.0, 0.15,   1.0,      (5.0,  0.0,  0.0,  0.0,  0.0)),
    Panel("breathing",   "vital",    60.0, 0.15,   1.0,      (-0.3, 0.0, -3.0, -0.5,  0.0)),  # when not ventilated
    Panel("line",        "vital",   240.0, 0.15,   1.0,      (-1.5, 0.6,  2.5,  1.5,  0.0)),  # arterial line
    Panel("cuff",        "vital",   240.0, 0.15,   1.0,      (3.0,  0.0, -1.0, -1.0,  0.0)),  # sparser with a line
    Panel("temperature", "vital",   240.0, 0.1,    1.0,      (4.0,  0.0,  0.0,  0.0,  0.0)),
    Panel("neuro",       "vital",   240.0, 0.1,    1.0,      (4.0,  0.0,  0.0,  0.0,  0.0)),
    Panel("urine",       "vital",   180.0, 0.1,    1.0,      (3.5,  0.0,  0.0,  0.0,  0.0)),
    Panel("ventilator",  "vital",   240.0, 0.1,    0.9,      (6.0,  0.0,  0.0,  0.0,  0.0)),  # while ventilated
    Panel("gas",         "lab",    1440.0, 0.5,    0.95,     (-1.0, 1.2,  3.0,  0.5,  0.0)),
    Panel("lactate",     "lab",    1440.0, 0.5,    1.0,      (-0.5, 1.5,  0.8,  0.0,  0.0)),
    Panel("chemistry",   "lab",    1440.0, 0.3,    0.95,     (4.0,  0.0,  0.0,  0.0,  0.0)),
    Panel("liver",       "daily",  1440.0, 0.3,    0.9,      (-0.6, 0.5,  0.0,  0.0,  0.0)),
    Panel("troponin-i",  "daily",  1440.0, 0.3,    1.0,      (-3.5, 0.3,  0.0,  0.0,  1.5)),
    Panel("troponin-t",  "daily",  1440.0, 0.3,    1.0,      (-2.2, 0.3,  0.0, -0.5,  2.5)),
    Panel("lipids",      "daily",  2880.0, 0.0,    1.0,      (-3.5, 0.0,  0.0,  0.0,  1.5)),
    Panel("weight",      "daily",  1440.0, 0.0,    1.0,      (0.0,  0.0,  1.0,  1.0,  0.0)),
)
# fmt: on

# ICU types 1..4 (coronary, cardiac surgery, medical, surgical): their share in
# an average hospital, their patients' baseline severity, and the extra log-odds
# of death not explained by severity.
ICU_SHARE = np.array([0.15, 0.22, 0.36, 0.27])
ICU_SEVERITY = np.array([0.0, -0.7, 0.35, 0.05])
ICU_RISK = np.array([0.0, -0.5, 0.25, 0.0])

# The outcome: logit P(death) = RISK_INTERCEPT + RISK_SEVERITY * (mean severity
# over the last RISK_LATE_HOURS hours) + RISK_AGE per decade above 65 + ICU_RISK
# + the hospital's care effect. Calibrated for ~14 % mortality and an oracle
# AUROC of ~0.88, leaving room between crude summaries and the best model.
RISK_INTERCEPT = -2.9
RISK_SEVERITY = 1.6
RISK_AGE = 0.25
RISK_LATE_HOURS = 6

ERROR_RATE = 0.001  # share of readings that are recording errors
EMPTY_STAYS = 0.005  # share of stays with descriptors only
HEIGHT_IN_INCHES = 0.005  # share of recorded heights typed in inches


def _spread(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """n values evenly covering [low, high] in random order (the middle when n = 1).

    Hospital traits are spread this way rather than drawn independently, so
    every cohort, even one of two hospitals, shows the heterogeneity.
    """
    values = np.linspace(low, high, n) if n > 1 else np.array([(low + high) / 2])
    return rng.permutation(values)


def hospital_names(hospitals: int) -> list[str]:
    """The synthetic cohort's hospitals: "hospital-1".."hospital-N"."""
    return [f"hospital-{h + 1}" for h in range(hospitals)]


def hospital_profiles(hospitals: int = 4, seed: int = 0) -> pd.DataFrame:
    """The site parameters of the synthetic hospitals, one row per hospital.

    Columns: `share` (expected share of the stays), `icu_1`..`icu_4` (case mix),
    `severity_shift` (added to every patient's baseline severity), `care` (extra
    log-odds of death), `vital_every` and `lab_every` (multipliers of the panel
    intervals), and `offset_<variable>` (device bias added to every reading).
    """
    if hospitals < 1:
        raise ValueError("the synthetic cohort needs at least one hospital")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    n = hospitals
    # Sizes: log-normal around an even spread, so the largest site is ~6x the smallest.
    share = np.exp(_spread(rng, n, -0.9, 0.9) + rng.normal(0.0, 0.1, n))
    profiles = pd.DataFrame({"share": share / share.sum()}, index=pd.Index(hospital_names(n), name="hospital"))
    mix = rng.dirichlet(12.0 * ICU_SHARE, size=n)
    for t in range(4):
        profiles[f"icu_{t + 1}"] = mix[:, t]
    # Sicker and better-cared-for sites, centred on the average patient so the
    # overall mortality does not depend on which site happens to be largest.
    shift = _spread(rng, n, -0.4, 0.4) + rng.normal(0.0, 0.05, n)
    care = _spread(rng, n, -0.25, 0.25)
    profiles["severity_shift"] = shift - profiles["share"] @ shift
    profiles["care"] = care - profiles["share"] @ care
    # Heart rate every ~1 h in the most attentive site, every ~3 h in the least;
    # chemistry every ~10 h in the busiest laboratory, daily in the slowest
    # (sicker patients more often everywhere).
    profiles["vital_every"] = _spread(rng, n, 1.0, 3.0)
    profiles["lab_every"] = _spread(rng, n, 0.4, 1.0)
    # Each biased device type is off in about a quarter of the sites: at least
    # one, and never all of them when there are several.
    biased = max(1, round(n / 4)) if n > 1 else 0
    for var in VARIABLES:
        if not var.offsets:
            continue
        offset = np.zeros(n)
        sites = rng.permutation(n)[:biased]
        offset[sites] = rng.choice(np.array(var.offsets), size=biased)
        profiles[f"offset_{var.name}"] = offset
    return profiles


def _allocate(shares: np.ndarray, total: int) -> np.ndarray:
    """Split `total` stays by `shares`, at least MIN_STAYS_PER_HOSPITAL each (largest remainders)."""
    n = len(shares)
    spare = total - MIN_STAYS_PER_HOSPITAL * n
    exact = shares * spare
    sizes = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[: spare - sizes.sum()]] += 1
    return sizes + MIN_STAYS_PER_HOSPITAL


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _float32_limits(name: str) -> tuple[np.float32, np.float32]:
    """The physiological limits as float32 values that still lie inside them."""
    lo, hi = PHYSIOLOGICAL_LIMITS[name]
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if float(lo32) < lo:
        lo32 = np.nextafter(lo32, np.float32(np.inf))
    if float(hi32) > hi:
        hi32 = np.nextafter(hi32, np.float32(-np.inf))
    return lo32, hi32


class _Stays(NamedTuple):
    """Per-stay quantities the readings are drawn from (arrays of length n)."""

    hospital: np.ndarray  # hospital index
    icu: np.ndarray  # ICU type index 0..3
    severity: np.ndarray  # (n, 49): latent severity at every hour 0..48
    ventilated: np.ndarray  # bool
    extubated_at: np.ndarray  # minute ventilation stops (after MINUTES if it does not)
    weight: np.ndarray  # true admission weight, kg
    fever: np.ndarray  # +1 temperature rises with severity, -1 it falls


def _severity_at(severity: np.ndarray, stay: np.ndarray, minute: np.ndarray) -> np.ndarray:
    """Latent severity of `stay` at `minute`, linear between the hourly points."""
    hours = minute / 60.0
    lo = np.minimum(hours.astype(np.int64), severity.shape[1] - 2)
    frac = hours - lo
    return severity[stay, lo] * (1.0 - frac) + severity[stay, lo + 1] * frac


def _covered(rng: np.random.Generator, panel: Panel, world: _Stays) -> np.ndarray:
    """Which stays have `panel` measured at all (bool, length n)."""
    c0, c_sev, c_vent, c_surg, c_cor = panel.cover
    surgical, coronary = np.isin(world.icu, (1, 3)), world.icu == 0
    logit = c0 + c_sev * world.severity[:, 0] + c_vent * world.ventilated + c_surg * surgical + c_cor * coronary
    covered = rng.random(len(logit)) < _sigmoid(logit)
    if panel.name == "ventilator":
        covered &= world.ventilated
    return covered


def _reading_times(
    rng: np.random.Generator, panel: Panel, world: _Stays, covered: np.ndarray, interval: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(stay index, minute) of every reading of `panel` in the `covered` stays.

    `interval` is each stay's expected minutes between readings at severity 0.
    Candidate times come every half interval with jitter; each is kept with a
    probability that grows with the severity at that moment, so sicker patients
    are measured more often.
    """
    stays = np.flatnonzero(covered)
    step = interval[stays] / 2.0
    k = int(np.ceil(MINUTES / step.min())) + 1 if len(stays) else 0
    minute = rng.uniform(0.0, 1.0, (len(stays), 1)) * step[:, None] + np.arange(k) * step[:, None]
    minute += rng.normal(0.0, 0.1, minute.shape) * step[:, None]
    minute = np.rint(minute)
    valid = (minute >= 0) & (minute <= MINUTES)
    if panel.name == "ventilator":
        valid &= minute < world.extubated_at[stays, None]
    row, col = np.nonzero(valid)
    stay, minute = stays[row], minute[row, col]
    keep = 0.5 * np.exp(panel.urgency * _severity_at(world.severity, stay, minute))
    kept = rng.random(len(stay)) < keep
    return stay[kept], minute[kept].astype(np.int32)


def _draw_stays(rng: np.random.Generator, profiles: pd.DataFrame, total: int) -> tuple[pd.DataFrame, _Stays]:
    n_sites = len(profiles)
    sizes = _allocate(profiles["share"].to_numpy(), total)
    hospital = rng.permutation(np.repeat(np.arange(n_sites), sizes))
    mix = profiles[[f"icu_{t + 1}" for t in range(4)]].to_numpy()
    icu = (rng.random(total)[:, None] > np.cumsum(mix, axis=1)[hospital]).sum(axis=1).clip(0, 3)

    # Descriptors: ICU patients are mostly old; PhysioNet caps ages at 90.
    age = np.minimum(np.rint(18.0 + 74.0 * rng.beta(3.0, 1.6, total)), 90.0)
    male = rng.random(total) < 0.56
    height = np.where(male, rng.normal(176.0, 8.0, total), rng.normal(163.0, 7.0, total))
    weight = np.exp(rng.normal(np.where(male, np.log(85.0), np.log(72.0)), 0.22))
    weight = np.clip(weight, 35.0, 250.0)

    # Latent severity: baseline + drift over 48 h + smooth (AR(1), ~8 h memory) wobble.
    shift = profiles["severity_shift"].to_numpy()[hospital]
    baseline = ICU_SEVERITY[icu] + shift + 0.02 * (age - 65.0) + rng.normal(0.0, 0.9, total)
    drift = rng.normal(-0.15, 0.6, total)
    phi, sd = np.exp(-1.0 / 8.0), 0.35
    wobble = np.empty((total, 49))
    wobble[:, 0] = rng.normal(0.0, sd, total)
    shocks = rng.normal(0.0, sd * np.sqrt(1.0 - phi**2), (total, 48))
    for h in range(48):
        wobble[:, h + 1] = phi * wobble[:, h] + shocks[:, h]
    severity = baseline[:, None] + drift[:, None] * np.arange(49) / 48.0 + wobble

    late = severity[:, -RISK_LATE_HOURS - 1 :].mean(axis=1)
    care = profiles["care"].to_numpy()[hospital]
    risk = _sigmoid(RISK_INTERCEPT + RISK_SEVERITY * late + RISK_AGE * (age - 65.0) / 10.0 + ICU_RISK[icu] + care)
    label = (rng.random(total) < risk).astype(np.int8)

    # Ventilation: mostly cardiac surgery and severe patients; the milder ones are
    # weaned within the window.
    ventilated = rng.random(total) < _sigmoid(-1.2 + 1.3 * severity[:, 0] + 2.5 * (icu == 1) + 0.6 * (icu == 3))
    weaned = ventilated & (rng.random(total) < _sigmoid(0.3 - 1.5 * severity[:, 0] + 1.0 * (icu == 1)))
    extubated_at = np.where(weaned, rng.uniform(240.0, 2160.0, total), float(MINUTES + 1))
    fever = np.where(rng.random(total) < FEVER_SHARE, 1.0, -1.0)

    # What the chart shows: a few genders and some heights and weights missing,
    # a few heights typed in inches.
    gender = np.where(rng.random(total) < 0.003, np.nan, male.astype(np.float64))
    recorded_height = np.round(height, 1)
    inches = rng.random(total) < HEIGHT_IN_INCHES
    recorded_height = np.where(inches, np.round(height / 2.54, 0), recorded_height)
    recorded_height = np.where(rng.random(total) < 0.30, np.nan, recorded_height)
    recorded_weight = np.where(rng.random(total) < 0.10, np.nan, np.round(weight, 1))

    table = pd.DataFrame(
        {
            "age": age,
            "gender": gender,
            "height": recorded_height,
            "weight": recorded_weight,
            "icu_type": (icu + 1).astype(np.float64),
            "label": label,
            "hospital": profiles.index.to_numpy()[hospital].astype(object),
            "source": np.full(total, SOURCE, dtype=object),
            "risk": risk,
        },
        index=pd.Index(FIRST_STAY_ID + np.arange(total, dtype=np.int64), name="stay_id"),
    )
    world = _Stays(hospital, icu, severity, ventilated, extubated_at, weight, fever)
    return table, world


def _draw_measurements(rng: np.random.Generator, profiles: pd.DataFrame, world: _Stays) -> pd.DataFrame:
    n = len(world.hospital)
    code = {name: i for i, name in enumerate(TIME_SERIES)}
    own = rng.standard_normal((n, len(TIME_SERIES)))  # each patient's own baselines
    by_panel: dict[str, list[Variable]] = {}
    for var in VARIABLES:
        by_panel.setdefault(var.panel, []).append(var)

    stays, minutes, codes, values = [], [], [], []
    has_line = np.zeros(n, dtype=bool)
    for panel in PANELS:
        covered = _covered(rng, panel, world)
        interval = np.full(n, panel.interval)
        if panel.clock != "daily":
            interval *= profiles[f"{panel.clock}_every"].to_numpy()[world.hospital]
        if panel.name == "line":
            has_line = covered
        if panel.name == "cuff":
            interval *= np.where(has_line, 2.0, 1.0)  # with an arterial line the cuff is a backup
        stay, minute = _reading_times(rng, panel, world, covered, interval)
        sev = _severity_at(world.severity, stay, minute)
        drawn: dict[str, np.ndarray] = {}
        for var in by_panel[panel.name]:
            if var.name in DERIVED_MEAN:
                sys_, dia = (drawn[v] for v in DERIVED_MEAN[var.name])
                x = (sys_ + 2.0 * dia) / 3.0
            elif var.name == "MechVent":
                x = np.ones(len(stay))
            else:
                effect = var.severity * sev
                if var.name == "Temp":
                    effect = effect * world.fever[stay]
                center = np.log(var.center) if var.log else var.center
                if var.name == "Weight":
                    center = world.weight[stay]
                x = center + var.between * own[stay, code[var.name]] + effect
                x = x + var.noise * rng.standard_normal(len(stay))
                if var.name == "GCS":
                    x = x + SEDATION_GCS * (minute < world.extubated_at[stay]) * world.ventilated[stay]
                if var.log:
                    x = np.exp(x)
                if var.name == "DiasABP" or var.name == "NIDiasABP":
                    x = np.minimum(x, drawn["SysABP" if var.name == "DiasABP" else "NISysABP"] - 15.0)
            drawn[var.name] = x
        for var in by_panel[panel.name]:
            x = drawn[var.name]
            column = f"offset_{var.name}"
            if column in profiles:
                x = x + profiles[column].to_numpy()[world.hospital[stay]]
            lo, hi = _float32_limits(var.name)
            x = np.clip(np.round(x, var.decimals).astype(np.float32), lo, hi)
            reported = rng.random(len(stay)) < panel.complete
            stays.append(stay[reported])
            minutes.append(minute[reported])
            codes.append(np.full(len(x[reported]), code[var.name], dtype=np.int8))
            values.append(x[reported])

    stay = np.concatenate(stays)
    minute = np.concatenate(minutes)
    var_code = np.concatenate(codes)
    value = np.concatenate(values)

    # Recording errors: a detached lead reads HR 0, a thermometer -17.8, a
    # missing weight -1, a pH typed without its decimal point.
    # Spread over the variables that have an error pattern, ERROR_RATE overall.
    specs = {v.name: v.error for v in VARIABLES}
    errors = [specs[name] for name in TIME_SERIES]
    replace = np.array([e is not None and e[0] == "set" for e in errors])
    scale = np.array([e is not None and e[0] == "times" for e in errors])
    amount = np.array([0.0 if e is None else e[1] for e in errors], dtype=np.float32)
    eligible = (replace | scale)[var_code]
    rate = ERROR_RATE * len(value) / max(int(eligible.sum()), 1)
    wrong = eligible & (rng.random(len(value)) < rate)
    code_wrong = var_code[wrong]
    value[wrong] = np.where(replace[code_wrong], amount[code_wrong], value[wrong] * amount[code_wrong])

    # A few stays have descriptors only.
    empty = rng.random(n) < EMPTY_STAYS
    keep = ~empty[stay]
    stay, minute, var_code, value = stay[keep], minute[keep], var_code[keep], value[keep]

    order = np.lexsort((var_code, minute, stay))
    return pd.DataFrame(
        {
            "stay_id": (FIRST_STAY_ID + stay[order]).astype(np.int64),
            "minute": minute[order].astype(np.int32),
            "variable": pd.Categorical.from_codes(var_code[order], dtype=VARIABLE_DTYPE),
            "value": value[order],
        }
    )


def generate(hospitals: int = 4, stays: int = 2400, seed: int = 0) -> Cohort:
    """A synthetic cohort of `stays` ICU stays spread over `hospitals` hospitals.

    Hospitals are named "hospital-1".."hospital-N" and each gets at least
    MIN_STAYS_PER_HOSPITAL stays. The stays table carries the extra column
    `risk`, each stay's true probability of in-hospital death.
    """
    if hospitals < 1:
        raise ValueError("the synthetic cohort needs at least one hospital")
    if stays < MIN_STAYS_PER_HOSPITAL * hospitals:
        raise ValueError(
            f"{stays} synthetic stays are too few for {hospitals} hospitals: "
            f"each needs at least {MIN_STAYS_PER_HOSPITAL}"
        )
    profiles = hospital_profiles(hospitals, seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    table, world = _draw_stays(rng, profiles, stays)
    measurements = _draw_measurements(rng, profiles, world)
    return Cohort(stays=table, measurements=measurements)


def from_source(source: DataSource) -> Cohort:
    """The dataset interface: `generate` with the source's size and seed."""
    if source.task != DEFAULT_TASK:
        raise ValueError(f"the synthetic cohort has only the task {DEFAULT_TASK}, not --task {source.task}")
    return generate(hospitals=source.hospitals, stays=source.stays, seed=source.seed)
