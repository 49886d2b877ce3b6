"""The TOML mapping: columns, codes, unit conversions, and every way a mapping file is refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedicu.shared.datasets.mapping import (
    FEDERATION_NAMES,
    FEDERATION_UNITS,
    IDENTITY,
    allowed_units,
    canonical_unit,
    load_mapping,
)
from fedicu.shared.errors import DataError
from fedicu.shared.variables import TIME_SERIES


def write_mapping(tmp_path, text: str):
    path = tmp_path / "mapping.toml"
    path.write_text(text)
    return path


def translated(mapping, codes, values=None):
    values = np.zeros(len(codes)) if values is None else np.asarray(values, dtype=float)
    names, converted = mapping.translate(np.array(codes, dtype=object), values)
    return [None if pd.isna(n) else n for n in names], converted


# ------------------------------------------------------------------ identity


def test_empty_path_is_the_identity_mapping():
    mapping = load_mapping("")
    assert mapping is IDENTITY and mapping.path == ""
    names, values = translated(mapping, ["HR", "Age", "ICUType", "hr", "", None, "220045"], [1, 2, 3, 4, 5, 6, 7])
    assert names == ["HR", "Age", "ICUType", None, None, None, None]
    np.testing.assert_array_equal(values, [1, 2, 3, 4, 5, 6, 7])
    assert mapping.column("stays", "stay_id") == "stay_id" and mapping.column("events", "value") == "value"


def test_every_federation_variable_has_a_unit_and_maps_to_itself():
    assert set(FEDERATION_UNITS) == set(FEDERATION_NAMES) == set(TIME_SERIES) | {"Age", "Gender", "Height", "ICUType"}
    names, _ = translated(IDENTITY, list(FEDERATION_NAMES))
    assert names == list(FEDERATION_NAMES)
    for variable in FEDERATION_NAMES:
        assert allowed_units(variable)[0] == FEDERATION_UNITS[variable]


# ------------------------------------------------------------------ a full mapping


FULL = """
[stays]
stay_id = "icustay_id"
hospital = "site"
Age = "age_years"
admission_time = "intime"
in_hospital_death = "died"
mortality_30d = "died_30d"

[events]
stay_id = "icustay_id"
time = "charttime"
variable = "itemid"
value = "valuenum"

[variables]
HR = "220045"
RespRate = 220210
Temp = { codes = ["223761"], unit = "degF" }
Glucose = { codes = ["50931", "LAB//50931//mg/dL"], unit = "mg/dL" }
Weight = { codes = ["226531"], unit = "lb" }
MAP = ["220052", "220181"]
"""


def test_columns_come_from_the_mapping_and_default_to_their_own_name(tmp_path):
    mapping = load_mapping(str(write_mapping(tmp_path, FULL)))
    assert mapping.path == str(tmp_path / "mapping.toml")
    assert mapping.column("stays", "stay_id") == "icustay_id"
    assert mapping.column("stays", "in_hospital_death") == "died"
    assert mapping.column("stays", "mortality_30d") == "died_30d"  # a site's own task
    assert mapping.column("stays", "Gender") == "Gender"
    assert mapping.column("events", "time") == "charttime"
    assert mapping.column("events", "minute") == "minute"


def test_codes_translate_to_federation_names_and_units(tmp_path):
    mapping = load_mapping(str(write_mapping(tmp_path, FULL)))
    codes = ["220045", "220210", "223761", "50931", "LAB//50931//mg/dL", "226531", "220052", "220181", "HR", "999"]
    values = [80, 16, 98.6, 100, 101, 154.0, 70, 71, 90, 5]
    names, converted = translated(mapping, codes, values)
    assert names == ["HR", "RespRate", "Temp", "Glucose", "Glucose", "Weight", "MAP", "MAP", "HR", None]
    np.testing.assert_allclose(converted, [80, 16, 37.0, 100, 101, 154.0 * 0.45359237, 70, 71, 90, 5])


def test_translate_takes_categoricals_and_integer_codes(tmp_path):
    mapping = load_mapping(str(write_mapping(tmp_path, '[variables]\nHR = 220045\nTemp = { codes = [1], unit = "K" }')))
    codes = pd.Categorical(["220045", "1", "x", "220045"])
    names, values = mapping.translate(codes, np.array([60.0, 310.15, 1.0, 61.0]))
    assert [None if pd.isna(n) else n for n in names] == ["HR", "Temp", None, "HR"]
    np.testing.assert_allclose(values, [60.0, 37.0, 1.0, 61.0])
    names, _ = mapping.translate(np.array([220045, 1, 7]), np.zeros(3))  # integers as a site's Parquet holds them
    assert list(names[:2]) == ["HR", "Temp"] and pd.isna(names[2])


CONVERSIONS = [  # variable, unit as a site writes it, value in it, value in federation units
    ("Temp", "degF", 98.6, 37.0),
    ("Temp", "°F", 212.0, 100.0),
    ("Temp", "F", 32.0, 0.0),
    ("Temp", "deg F", 104.0, 40.0),
    ("Temp", "Fahrenheit", 95.0, 35.0),
    ("Temp", "K", 310.15, 37.0),
    ("Temp", "°C", 36.6, 36.6),
    ("Weight", "lb", 220.0, 220.0 * 0.45359237),
    ("Weight", "lbs", 100.0, 45.359237),
    ("Weight", "g", 70500.0, 70.5),
    ("Height", "in", 70.0, 177.8),
    ("Height", "m", 1.75, 175.0),
    ("Glucose", "mmol/L", 5.5, 5.5 * 18.016),
    ("Glucose", "mg/dL", 99.0, 99.0),
    ("Creatinine", "µmol/L", 88.42, 1.0),
    ("Creatinine", "umol/L", 176.84, 2.0),
    ("Bilirubin", "μmol/L", 17.1, 1.0),
    ("BUN", "mmol/L", 10.0, 28.0),
    ("Albumin", "g/L", 35.0, 3.5),
    ("FiO2", "%", 50.0, 0.5),
    ("PaO2", "kPa", 13.3, 13.3 * 7.50062),
    ("PaCO2", "kPa", 5.3, 5.3 * 7.50062),
    ("Na", "mmol/L", 140.0, 140.0),
    ("TroponinT", "ng/L", 14.0, 0.014),
    ("Platelets", "10^9/L", 250.0, 250.0),
    ("HR", "bpm", 72.0, 72.0),
]


@pytest.mark.parametrize(("variable", "unit", "raw", "expected"), CONVERSIONS)
def test_unit_conversions(tmp_path, variable, unit, raw, expected):
    mapping = load_mapping(
        str(write_mapping(tmp_path, f'[variables]\n{variable} = {{ codes = ["c"], unit = "{unit}" }}'))
    )
    names, values = translated(mapping, ["c"], [raw])
    assert names == [variable]
    np.testing.assert_allclose(values, [expected], rtol=1e-12, atol=1e-12)


def test_unit_spellings_are_normalised():
    assert {canonical_unit(u) for u in ("°F", "F", "degF", "deg F", "fahrenheit", "ºF", "degrees Fahrenheit")} == {
        "degF"
    }
    assert {canonical_unit(u) for u in ("µmol/L", "μmol/L", "umol/l", "UMOL/L")} == {"umol/L"}
    assert canonical_unit("furlongs") is None
    assert allowed_units("Temp") == ["degC", "degF", "K"]


def test_a_federation_name_may_be_given_its_unit(tmp_path):
    mapping = load_mapping(str(write_mapping(tmp_path, '[variables]\nTemp = { codes = ["Temp", "T"], unit = "F" }')))
    _, values = translated(mapping, ["Temp", "T", "HR"], [212, 32, 80])
    np.testing.assert_allclose(values, [100, 0, 80])


# ------------------------------------------------------------------ errors


BAD = {
    "malformed TOML": ("[variables]\nHR = \n", ["not valid TOML"]),
    "unknown section": ("[variable]\nHR = 'x'\n", ["unknown section [variable]", "did you mean 'variables'", "stays, events, variables"]),
    "section that is no table": ("stays = 'x'\n", ["[stays] must be a table"]),
    "unknown events key": ("[events]\nvariabel = 'code'\n", ["[events] variabel", "did you mean 'variable'", "stay_id, time, minute, variable, value"]),
    "stays key that is a typo": ("[stays]\nage = 'a'\n", ["[stays] age", "did you mean 'Age'", "<task name>"]),
    "stays key close to a task": ("[stays]\nin_hospital_deaht = 'd'\n", ["[stays] in_hospital_deaht", "did you mean 'in_hospital_death'"]),
    "column that is no string": ("[stays]\nstay_id = 5\n", ["[stays] stay_id must be the name of a column"]),
    "empty column": ("[events]\nvalue = ''\n", ["[events] value must be the name of a column"]),
    "time and minute": ("[events]\ntime = 't'\nminute = 'm'\n", ["[events] gives both time and minute"]),
    "unknown variable": ("[variables]\nHeartRate = '1'\n", ["[variables] HeartRate is not a federation variable", "HR", "ICUType"]),
    "RecordID is no variable": ("[variables]\nRecordID = 'id'\n", ["[variables] RecordID is not a federation variable"]),
    "unit that does not convert": ("[variables]\nTemp = { codes = ['1'], unit = 'kg' }\n", ["[variables] Temp: unit 'kg' does not convert to degC", "degC, degF, K"]),
    "unknown unit": ("[variables]\nGlucose = { codes = ['1'], unit = 'furlongs' }\n", ["[variables] Glucose: unit 'furlongs'", "mg/dL, mmol/L"]),
    "unit that is no string": ("[variables]\nTemp = { codes = ['1'], unit = 5 }\n", ["[variables] Temp: unit must be a string"]),
    "code mapped twice": ("[variables]\nHR = '1'\nTemp = ['2', '1']\n", ["[variables] Temp: code '1' is already mapped to HR"]),
    "federation name as another's code": ("[variables]\nTemp = 'HR'\n", ["[variables] Temp: code 'HR' is already mapped to HR", "stands for itself"]),
    "unknown entry key": ("[variables]\nHR = { codes = ['1'], units = 'bpm' }\n", ["unknown key 'units' in [variables] HR", "did you mean 'unit'"]),
    "entry without codes": ("[variables]\nHR = { unit = 'bpm' }\n", ["[variables] HR needs codes"]),
    "empty code list": ("[variables]\nHR = []\n", ["[variables] HR: codes must be non-empty strings or integers"]),
    "code that is a float": ("[variables]\nHR = 1.5\n", ["[variables] HR: codes must be non-empty strings or integers"]),
    "empty code": ("[variables]\nHR = ['']\n", ["[variables] HR: codes must be"]),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_a_bad_mapping_is_refused_naming_the_file_and_the_key(tmp_path, case):
    text, expected = BAD[case]
    path = write_mapping(tmp_path, text)
    with pytest.raises(DataError) as raised:
        load_mapping(str(path))
    assert raised.value.path == str(path)
    for part in expected:
        assert part in raised.value.message, (part, raised.value.message)


def test_malformed_toml_names_the_line(tmp_path):
    path = write_mapping(tmp_path, "[stays]\nstay_id = 'id'\n\n[variables]\nHR = = 'x'\n")
    with pytest.raises(DataError) as raised:
        load_mapping(str(path))
    assert raised.value.line == 5
    assert str(raised.value).startswith(f"{path}:5: not valid TOML")


def test_a_missing_or_binary_mapping_file_is_named(tmp_path):
    with pytest.raises(DataError, match="mapping file does not exist") as raised:
        load_mapping(str(tmp_path / "absent.toml"))
    assert raised.value.path == str(tmp_path / "absent.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[stays]")
    with pytest.raises(DataError, match="not UTF-8"):
        load_mapping(str(binary))


def test_whole_number_codes_read_from_a_float_column_match_their_integer_spelling(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[variables]\nHR = "220045"\n')
    names, _ = load_mapping(str(path)).translate(np.array([220045.0, 220045.5, np.nan]), np.ones(3))
    assert list(names.astype(object)) == ["HR", np.nan, np.nan]
