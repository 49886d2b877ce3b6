"""How a site's own tables and codes map onto the federation's variables: a TOML file.

A mapping is needed only where a site's data differs from the defaults; data named
like PhysioNet 2012 needs none (`mapping=""` is the identity mapping). It has up to
three sections; every key is optional:

```toml
[stays]      # federation column = the site's column (tables only)
stay_id = "icustay_id"
hospital = "site"
Age = "age_years"            # also Gender, Height, Weight, ICUType
admission_time = "intime"    # needed when events carry timestamps instead of minutes
length_of_stay = "los_days"  # los_over_3d / los_over_7d are derived from it when their column is absent
in_hospital_death = "died"   # a label column, by task name (any other key names the label column of that task)

[events]     # federation column = the site's column (tables only)
stay_id = "icustay_id"
time = "charttime"           # timestamps; or minute = "<column>" (minutes since ICU admission)
variable = "itemid"
value = "valuenum"

[variables]  # federation variable = the site's code, or several, optionally with the unit the site records
HR = "220045"
Temp = { codes = ["223761"], unit = "degF" }
Glucose = { codes = ["50931", "LAB//50931//mg/dL"], unit = "mg/dL" }
Weight = { codes = ["226531"], unit = "lb" }
```

`[variables]` keys are the 37 time series of `shared.variables.TIME_SERIES` and the
descriptors Age, Gender, Height and ICUType (Weight is both). A code is a string
(an integer such as `HR = 220045` is read as `"220045"`); a code equal to a
federation name (`HR`, `Temp`, `Age`, `ICUType`, ...) always stands for that
variable, so it may be listed only under it (to give its unit). MEDS datasets use
only `[variables]`.

Values are converted to the federation's units (`FEDERATION_UNITS`, PhysioNet's):
a variable's `unit` is the unit its codes are recorded in; without one the
values are taken as already in the federation's unit. Unit spellings are
normalised (`°F`, `F`, `degF`, `deg F` and `fahrenheit` are one unit; `µ` and
`u` are one letter). The conversions (`allowed_units(variable)` lists them):

- temperature: degF and K to degC
- weight: lb and g to kg; height: in, m and mm to cm
- to mg/dL: glucose mmol/L (x 18.016), creatinine µmol/L (/ 88.42), bilirubin
  µmol/L (/ 17.1), BUN (or urea) mmol/L (x 2.8), cholesterol mmol/L (x 38.67)
- lactate mg/dL to mmol/L (/ 9.008); albumin g/L to g/dL; Na, K and HCO3 in
  mEq/L or mmol/L alike
- FiO2 % to a fraction; HCT and SaO2 fraction to %
- pressures (PaO2, PaCO2 and the blood pressures) kPa to mmHg
- troponin ng/L to µg/L (= ng/mL); urine L to mL; platelets and WBC 10^9/L
  to 10^3/µL

Units apply to events with those codes; the columns of a stays table must hold
federation units (give a descriptor as an event to convert it). A descriptor of
-1 means "not recorded" after conversion, so a site converting units should
leave missing descriptors out rather than write -1.

A mapping that cannot be used (malformed TOML, an unknown section or key, a
variable that is not the federation's, a code mapped to two variables, a unit
that does not convert) raises `DataError` naming the file and the key, with what
is allowed there.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from fedicu.shared.errors import DataError
from fedicu.shared.tasks import BUILT_IN
from fedicu.shared.variables import TIME_SERIES

STATIC_DESCRIPTORS: tuple[str, ...] = ("Age", "Gender", "Height", "ICUType")  # Weight is a time series too
FEDERATION_NAMES: tuple[str, ...] = TIME_SERIES + STATIC_DESCRIPTORS
NAME_DTYPE = pd.CategoricalDtype(list(FEDERATION_NAMES))  # what `Mapping.translate` names codes with

# The unit each variable is modelled in (PhysioNet 2012's).
FEDERATION_UNITS: dict[str, str] = {
    "Albumin": "g/dL", "ALP": "IU/L", "ALT": "IU/L", "AST": "IU/L", "Bilirubin": "mg/dL",
    "BUN": "mg/dL", "Cholesterol": "mg/dL", "Creatinine": "mg/dL", "DiasABP": "mmHg",
    "FiO2": "fraction", "GCS": "points", "Glucose": "mg/dL", "HCO3": "mmol/L", "HCT": "%",
    "HR": "/min", "K": "mEq/L", "Lactate": "mmol/L", "Mg": "mmol/L", "MAP": "mmHg",
    "MechVent": "0/1", "Na": "mEq/L", "NIDiasABP": "mmHg", "NIMAP": "mmHg", "NISysABP": "mmHg",
    "PaCO2": "mmHg", "PaO2": "mmHg", "pH": "pH", "Platelets": "10^3/uL", "RespRate": "/min",
    "SaO2": "%", "SysABP": "mmHg", "Temp": "degC", "TroponinI": "ug/L", "TroponinT": "ug/L",
    "Urine": "mL", "WBC": "10^3/uL", "Weight": "kg",
    "Age": "years", "Gender": "0/1", "Height": "cm", "ICUType": "1-4",
}  # fmt: skip

# Canonical unit -> its other spellings, as `_normalised` leaves them.
_SPELLINGS: dict[str, tuple[str, ...]] = {
    "degC": ("c", "celsius", "centigrade"),
    "degF": ("f", "fahrenheit"),
    "K": ("k", "kelvin"),
    "kg": ("kilogram", "kilograms", "kgs"),
    "g": ("gram", "grams"),
    "lb": ("lbs", "pound", "pounds"),
    "cm": ("centimeter", "centimeters", "centimetre", "centimetres"),
    "m": ("meter", "meters", "metre", "metres"),
    "mm": ("millimeter", "millimeters", "millimetre", "millimetres"),
    "in": ("inch", "inches"),
    "IU/L": ("u/l",),
    "ug/L": ("ng/ml", "mcg/l"),
    "mmHg": ("torr",),
    "%": ("percent", "pct"),
    "fraction": ("ratio",),
    "10^3/uL": ("k/ul", "10^9/l", "x10^9/l", "10*3/ul", "10e3/ul", "1000/ul", "thousand/ul"),
    "/min": ("bpm", "beats/min", "breaths/min", "1/min", "perminute", "permin"),
    "mL": ("cc",),
    "years": ("year", "yr", "yrs", "y"),
}

# (variable, from unit) -> (scale, offset), analyte-specific conversions; then
# (from unit, to unit) -> (scale, offset) for any variable in `to unit`.
_ANALYTE_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("Glucose", "mmol/L"): (18.016, 0.0),
    ("Creatinine", "umol/L"): (1 / 88.42, 0.0),
    ("Bilirubin", "umol/L"): (1 / 17.1, 0.0),
    ("BUN", "mmol/L"): (2.8, 0.0),
    ("Cholesterol", "mmol/L"): (38.67, 0.0),
    ("Lactate", "mg/dL"): (1 / 9.008, 0.0),
    ("Na", "mmol/L"): (1.0, 0.0),
    ("K", "mmol/L"): (1.0, 0.0),
    ("HCO3", "mEq/L"): (1.0, 0.0),
}
_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("degF", "degC"): (5 / 9, -32 * 5 / 9),
    ("K", "degC"): (1.0, -273.15),
    ("lb", "kg"): (0.45359237, 0.0),
    ("g", "kg"): (0.001, 0.0),
    ("in", "cm"): (2.54, 0.0),
    ("m", "cm"): (100.0, 0.0),
    ("mm", "cm"): (0.1, 0.0),
    ("g/L", "g/dL"): (0.1, 0.0),
    ("%", "fraction"): (0.01, 0.0),
    ("fraction", "%"): (100.0, 0.0),
    ("kPa", "mmHg"): (7.50062, 0.0),
    ("ng/L", "ug/L"): (0.001, 0.0),
    ("L", "mL"): (1000.0, 0.0),
}

_SECTIONS = ("stays", "events", "variables")
STAY_COLUMNS: tuple[str, ...] = (
    "stay_id",
    "hospital",
    "admission_time",
    "length_of_stay",
    *STATIC_DESCRIPTORS,
    "Weight",
)
EVENT_COLUMNS: tuple[str, ...] = ("stay_id", "time", "minute", "variable", "value")
_VARIABLE_KEYS = ("codes", "unit")
_TOML_LINE = re.compile(r"at line (\d+)")


def _normalised(unit: str) -> str:
    text = re.sub(r"\s+", "", unit.strip().lower()).replace("µ", "u").replace("μ", "u")
    text = text.replace("°", "").replace("º", "")
    for prefix in ("degrees", "degree", "deg"):
        if text.startswith(prefix) and len(text) > len(prefix):
            return text[len(prefix) :]
    return text


def _spelling_table() -> dict[str, str]:
    """Every normalised spelling -> its canonical unit."""
    units = {*FEDERATION_UNITS.values(), *_SPELLINGS, *(unit for _, unit in _ANALYTE_CONVERSIONS)}
    units |= {unit for pair in _CONVERSIONS for unit in pair}
    table = {_normalised(unit): unit for unit in units}
    for unit, others in _SPELLINGS.items():
        table.update({_normalised(other): unit for other in others})
    return table


_CANONICAL = _spelling_table()


def canonical_unit(unit: str) -> str | None:
    """The canonical spelling of a unit (`"°F"` -> `"degF"`), or None when it is not one fedicu knows."""
    return _CANONICAL.get(_normalised(unit))


def allowed_units(variable: str) -> list[str]:
    """The units a site may record `variable` in: the federation's first, then those that convert."""
    target = FEDERATION_UNITS[variable]
    convertible = [unit for (name, unit) in _ANALYTE_CONVERSIONS if name == variable]
    convertible += [source for (source, to) in _CONVERSIONS if to == target]
    return [target, *convertible]


def conversion(variable: str, unit: str) -> tuple[float, float] | None:
    """`(scale, offset)` with federation value = site value * scale + offset, or None if `unit` does not convert."""
    canonical = canonical_unit(unit)
    target = FEDERATION_UNITS[variable]
    if canonical == target:
        return 1.0, 0.0
    if canonical is None:
        return None
    return _ANALYTE_CONVERSIONS.get((variable, canonical)) or _CONVERSIONS.get((canonical, target))


@dataclass(frozen=True)
class CodeRule:
    """What one site code stands for: a federation variable, recorded in `unit`."""

    variable: str
    unit: str
    scale: float = 1.0
    offset: float = 0.0


def _empty() -> MappingProxyType:
    return MappingProxyType({})


@dataclass(frozen=True)
class Mapping:
    """A site's mapping onto the federation's columns and variables (see the module docstring).

    `stays` and `events` hold the columns the file renames (federation column ->
    site column); `codes` the site codes it names (code -> `CodeRule`). `path` is
    the TOML file, "" for the identity mapping.
    """

    path: str = ""
    stays: MappingProxyType[str, str] = field(default_factory=_empty)
    events: MappingProxyType[str, str] = field(default_factory=_empty)
    codes: MappingProxyType[str, CodeRule] = field(default_factory=_empty)

    def column(self, table: str, name: str) -> str:
        """The site's column for federation column `name` of `table` ("stays" or "events")."""
        columns = {"stays": self.stays, "events": self.events}[table]
        return columns.get(name, name)

    def _rule(self, code: str) -> CodeRule | None:
        """What `code` stands for: the mapping's rule, the federation name itself, or None (unmapped)."""
        rule = self.codes.get(code)
        if rule is None and code in FEDERATION_UNITS:
            return CodeRule(code, FEDERATION_UNITS[code])
        return rule

    def translate(self, codes: Any, values: Any) -> tuple[pd.Categorical, np.ndarray]:
        """The federation name of each code (a categorical of `NAME_DTYPE`, missing where the
        code is unmapped or missing) and `values` converted to federation units (float64;
        unmapped rows unchanged).

        `codes` is any array-like of site codes (strings, integers, a categorical);
        each distinct code is looked up once.
        """
        index, uniques = pd.factorize(codes, use_na_sentinel=True)
        rules = [self._rule(_code_text(code)) for code in uniques]
        name = np.array([FEDERATION_NAMES.index(r.variable) if r else -1 for r in rules] + [-1])
        scale = np.array([r.scale if r else 1.0 for r in rules] + [1.0])
        offset = np.array([r.offset if r else 0.0 for r in rules] + [0.0])
        converted = np.asarray(values, dtype=np.float64) * scale[index] + offset[index]
        return pd.Categorical.from_codes(name[index], dtype=NAME_DTYPE), converted


IDENTITY = Mapping()


def _code_text(code: Any) -> str:
    """A code as the mapping spells it: a whole number stored as a float (a Parquet column
    with gaps) reads as the integer, 220045.0 as "220045"."""
    if isinstance(code, float | np.floating) and float(code).is_integer():
        return str(int(code))
    return str(code)


def load_mapping(path: str) -> Mapping:
    """The mapping in the TOML file at `path` ("" = the identity mapping); `DataError` if unusable."""
    if not path:
        return IDENTITY
    document = _read_toml(Path(path))
    for section, content in document.items():
        if section not in _SECTIONS:
            raise _error(path, section, f"unknown section [{section}]", _SECTIONS)
        if not isinstance(content, dict):
            raise DataError(f"[{section}] must be a table (a [{section}] header followed by keys)", path)
    stays = _columns(path, "stays", document.get("stays", {}), STAY_COLUMNS)
    events = _columns(path, "events", document.get("events", {}), EVENT_COLUMNS)
    if "time" in events and "minute" in events:
        raise DataError("[events] gives both time and minute; give one: timestamps or minutes since admission", path)
    codes = _codes(path, document.get("variables", {}))
    return Mapping(str(path), MappingProxyType(stays), MappingProxyType(events), MappingProxyType(codes))


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError("mapping file does not exist", path)
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError("mapping file is not UTF-8 text", path) from None
    except tomllib.TOMLDecodeError as error:
        match = _TOML_LINE.search(str(error))
        raise DataError(f"not valid TOML: {error}", path, int(match[1]) if match else None) from None


def _error(path: str, key: str, message: str, allowed: tuple[str, ...] | list[str]) -> DataError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DataError(f"{message}{hint}; allowed: {', '.join(allowed)}", path)


def _columns(path: str, section: str, content: dict[str, Any], known: tuple[str, ...]) -> dict[str, str]:
    """Federation column -> site column of one table section, checked."""
    columns: dict[str, str] = {}
    for key, value in content.items():
        if key not in known and (section == "events" or _looks_like_a_typo(key, (*known, *BUILT_IN))):
            allowed = (*known, *BUILT_IN, "<task name>") if section == "stays" else known
            raise _error(path, key, f"unknown key [{section}] {key}", allowed)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"[{section}] {key} must be the name of a column (a non-empty string)", path)
        columns[key] = value
    return columns


def _looks_like_a_typo(key: str, known: tuple[str, ...]) -> bool:
    """A [stays] key that is not a known column is the label column of a task of that
    name, unless it is a near miss of a known one ("age", "Gendre", "in_hospital_deaht")."""
    if key in known:
        return False
    lowered = {name.lower(): name for name in known}
    return bool(difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.8))


def _codes(path: str, content: dict[str, Any]) -> dict[str, CodeRule]:
    """Site code -> rule, from the [variables] section."""
    rules: dict[str, CodeRule] = {}
    for variable, entry in content.items():
        if variable not in FEDERATION_UNITS:
            raise _error(path, variable, f"[variables] {variable} is not a federation variable", FEDERATION_NAMES)
        codes, unit = _entry(path, variable, entry)
        scale_offset = conversion(variable, unit)
        if scale_offset is None:
            allowed = allowed_units(variable)
            message = f"[variables] {variable}: unit {unit!r} does not convert to {FEDERATION_UNITS[variable]}"
            raise DataError(f"{message}; {variable} may be recorded in: {', '.join(allowed)}", path)
        for code in codes:
            owner = _owner(code, rules, default=variable)
            if owner != variable:
                message = f"[variables] {variable}: code {code!r} is already mapped to {owner}"
                if code == owner:
                    message += " (a federation name always stands for itself)"
                raise DataError(f"{message}; a code can stand for one variable only", path)
            rules[code] = CodeRule(variable, canonical_unit(unit) or unit, *scale_offset)
    return rules


def _owner(code: str, rules: dict[str, CodeRule], default: str) -> str:
    """The variable `code` already stands for: itself if a federation name, else its earlier rule's."""
    if code in FEDERATION_UNITS:
        return code
    return rules[code].variable if code in rules else default


def _entry(path: str, variable: str, entry: Any) -> tuple[list[str], str]:
    """The codes and unit of one [variables] entry: "code", ["a", "b"] or { codes = ..., unit = ... }."""
    unit = FEDERATION_UNITS[variable]
    if isinstance(entry, dict):
        for key in entry:
            if key not in _VARIABLE_KEYS:
                raise _error(path, key, f"unknown key {key!r} in [variables] {variable}", _VARIABLE_KEYS)
        if "codes" not in entry:
            raise DataError(f"[variables] {variable} needs codes = [...]", path)
        unit = entry.get("unit", unit)
        if not isinstance(unit, str):
            raise DataError(
                f"[variables] {variable}: unit must be a string such as {FEDERATION_UNITS[variable]!r}", path
            )
        entry = entry["codes"]
    codes = entry if isinstance(entry, list) else [entry]
    if not codes or not all(_is_code(code) for code in codes):
        shape = f'{variable} = "<code>", ["<code>", ...] or {{ codes = [...], unit = "..." }}'
        raise DataError(f"[variables] {variable}: codes must be non-empty strings or integers: {shape}", path)
    return [str(code) for code in codes], unit


def _is_code(code: Any) -> bool:
    return (isinstance(code, str) and code != "") or (isinstance(code, int) and not isinstance(code, bool))
