"""FHIR Bundles read as the stays `POST /predict` takes (`fedicu.client.bedside.fhir`)."""

import copy

import pytest
from pydantic import ValidationError

from fedicu.client.bedside.fhir import BundleError, FhirMapping, read_bundle
from fedicu.client.bedside.stays import Stay
from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import load_cohort
from fedicu.shared.errors import DataError
from fedicu.shared.variables import TIME_SERIES
from tests.fhir_bundles import MODELLED, bundle_of, observation
from tests.test_bedside import _as_json

MAPPING = FhirMapping.load()


@pytest.fixture(scope="module")
def cohort():
    return load_cohort(RunConfig(dataset="synthetic", synthetic_stays=80, seed=11).data_source())


def _modelled(stay: dict) -> dict:
    """The stay without the variables no LOINC code carries."""
    return stay | {"measurements": [m for m in stay["measurements"] if m["variable"] in MODELLED]}


def test_a_bundle_reads_as_the_stay_its_json_describes(cohort):
    for stay_id in cohort.stays.index[:20]:
        expected = Stay.model_validate(_modelled(_as_json(cohort, stay_id)))
        read = read_bundle(bundle_of(expected.model_dump(exclude_none=True)), MAPPING)
        assert read.stay.stay_id == expected.stay_id and read.stay.static == expected.static
        got, want = read.stay.measurements, expected.measurements
        key = lambda m: (m.minute, m.variable)  # noqa: E731  (panels regroup the blood pressures)
        assert sorted(map(key, got)) == sorted(map(key, want))
        for g, w in zip(sorted(got, key=key), sorted(want, key=key), strict=True):
            assert g.value == pytest.approx(w.value, rel=1e-12), (g, w)  # Fahrenheit and back
        assert not read.skipped


def test_the_shipped_mapping_names_only_the_models_variables_and_reads_heart_rate_pressure_temperature():
    assert set(MAPPING.loinc.values()) <= {*TIME_SERIES, "Age", "Height"}
    for code, variable in {"8867-4": "HR", "8480-6": "NISysABP", "8462-4": "NIDiasABP", "8310-5": "Temp"}.items():
        assert MAPPING.loinc[code] == variable


def _stay_bundle(*observations) -> dict:
    document = bundle_of({"stay_id": "s1", "static": {"Age": 70, "Gender": 0, "ICUType": 2}, "measurements": []})
    document["entry"] += [{"resource": o} for o in observations]
    return document


def test_what_cannot_be_read_honestly_is_skipped_and_counted_by_reason():
    date_only = observation("HR", 0, 80.0) | {"effectiveDateTime": "2021-03-10"}
    pulse_oximetry = observation("HR", 60, 97.0) | {
        "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}]}
    }
    below_detection = observation("TroponinI", 120, 0.01)
    below_detection["valueQuantity"]["comparator"] = "<"
    read = read_bundle(_stay_bundle(
        observation("HR", 30, 88.0), observation("HR", 31, 0.0, status="entered-in-error"), date_only, pulse_oximetry,
        below_detection, observation("HR", -90, 70.0), observation("HR", 49 * 60, 70.0),
    ), MAPPING)  # fmt: skip
    assert [(m.minute, m.variable, m.value) for m in read.stay.measurements] == [(30, "HR", 88.0)]
    assert read.skipped == {
        "status entered-in-error": 1, "no time of day": 1, "a code the model does not read": 1,
        "no value, or one with a comparator": 1, "before the ICU admission": 1, "after the 48 hours the model reads": 1,
    }  # fmt: skip
    assert read.stay.static.Age == 70 and read.stay.static.ICUType == 2


def test_a_unit_that_does_not_convert_is_refused_where_it_lies():
    bad = observation("Temp", 30, 37.0)
    bad["valueQuantity"] = {"value": 37.0, "system": "http://unitsofmeasure.org", "code": "mg/dL"}
    document = _stay_bundle(observation("HR", 10, 80.0), bad)
    with pytest.raises(BundleError, match="Temp: unit 'mg/dL' does not convert to degC") as raised:
        read_bundle(document, MAPPING)
    assert raised.value.location == ("entry", len(document["entry"]) - 1, "resource", "valueQuantity", "code")


def test_a_bundle_that_is_not_valid_fhir_names_the_field():
    document = _stay_bundle(observation("HR", 10, 80.0) | {"effectiveDateTime": "2021-03-10T09:00:00"})  # no zone
    with pytest.raises(ValidationError) as raised:
        read_bundle(document, MAPPING)
    (error,) = raised.value.errors()
    assert error["loc"] == ("entry", len(document["entry"]) - 1, "resource", "effectiveDateTime")


@pytest.mark.parametrize(
    "change, location, words",
    [
        (lambda d: d["entry"].pop(0), ("entry",), "one Encounter is needed, found none"),
        (lambda d: d["entry"].append(copy.deepcopy(d["entry"][1])), ("entry",), "one Patient is needed, found 2"),
        (lambda d: d["entry"][0]["resource"]["period"].update(start="2021-03-10"), ("entry", 0, "resource", "period", "start"), "time of day"),
        (lambda d: d["entry"][0]["resource"].pop("id"), ("entry", 0, "resource", "id"), "an id or an identifier"),
    ],
)  # fmt: skip
def test_a_bundle_that_is_no_stay_says_what_is_missing(change, location, words):
    document = _stay_bundle(observation("HR", 10, 80.0))
    change(document)
    with pytest.raises(BundleError, match=words) as raised:
        read_bundle(document, MAPPING)
    assert raised.value.location == location


def test_descriptors_come_from_observations_as_from_the_patient():
    document = _stay_bundle(observation("Age", -5000, 64.0), observation("Height", -20000, 181.0))
    static = read_bundle(document, MAPPING).stay.static
    assert (static.Age, static.Height, static.Gender) == (64.0, 181.0, 0)
    document["entry"][1]["resource"]["birthDate"] = "1950"  # a year only: counted from its middle
    document["entry"] = document["entry"][:2]
    assert read_bundle(document, MAPPING).stay.static.Age == 70  # admitted 2021-03-10


@pytest.mark.parametrize(
    "text, words",
    [
        ('[loinc]\n"1-1" = "Heart"\n', "[loinc] '1-1' = 'Heart'"),
        ('[ucum]\n"x" = "furlongs"\n', "[ucum] 'x' = 'furlongs'"),
        ('[icu_type]\n"sys|c" = 9\n', "[icu_type] 'sys|c' = 9"),
        ("[loinc\n", "not a readable TOML mapping"),
    ],
)
def test_a_mapping_that_cannot_be_used_names_its_file_and_key(tmp_path, text, words):
    path = tmp_path / "mapping.toml"
    path.write_text(text)
    with pytest.raises(DataError) as raised:
        FhirMapping.load(path)
    assert str(raised.value).startswith(f"{path}: ") and words in str(raised.value)
