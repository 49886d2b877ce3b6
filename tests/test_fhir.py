"""FHIR Bundles read as the stays `POST /predict` takes (`fedicu.client.bedside.fhir`)."""

import pytest

from fedicu.client.bedside.fhir import BundleError, read_bundle
from fedicu.client.bedside.fhir_mapping import FhirMapping
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
    pulse_oximetry = observation("SaO2", 60, 97.0)  # US Core's pulse oximetry: 2708-6 and 59408-5
    pulse_oximetry["code"]["coding"].append({"system": "http://loinc.org", "code": "59408-5"})
    below_detection = observation("TroponinI", 120, 0.01)
    below_detection["valueQuantity"]["comparator"] = "<"
    panel_late = bundle_of(
        {
            "stay_id": "x",
            "measurements": [
                {"minute": 2000, "variable": "NISysABP", "value": 120.0},
                {"minute": 2000, "variable": "NIDiasABP", "value": 70.0},
            ],
        }
    )
    panel_late = panel_late["entry"][-1]["resource"] | {"effectiveDateTime": "2021-03-13T08:00:00+01:00", "id": "p"}
    document = _stay_bundle(
        observation("HR", 30, 88.0), observation("HR", 31, 0.0, status="entered-in-error"), date_only, pulse_oximetry,
        below_detection, observation("HR", -90, 70.0), observation("HR", 49 * 60, 70.0), panel_late,
        {"resourceType": "Condition", "subject": {"reference": "Patient/patient"}}, observation("HR", 40, 90.0, id="o"),
        observation("HR", 40, 90.0, id="o"),
    )  # fmt: skip
    read = read_bundle(document, MAPPING)
    assert [(m.minute, m.variable, m.value) for m in read.stay.measurements] == [(30, "HR", 88.0), (40, "HR", 90.0)]
    assert read.skipped == {
        "an Observation entered-in-error": 1, "an Observation with no time of day": 1,
        "an Observation whose code the model does not read": 1, "an Observation without a value it can read (none, a comparator, no unit)": 1,
        "an Observation before the ICU admission": 1, "an Observation after the 48 hours the model reads": 2,
        "a resource other than Encounter, Patient and Observation": 1, "a duplicate entry (same type and id)": 1,
    }  # fmt: skip
    assert read.stay.static.Age == 70 and read.stay.static.ICUType == 2


def test_values_are_read_where_real_exports_put_them():
    urine = observation("Urine", 0, 120.0) | {"effectivePeriod": {"start": "2021-03-10T09:00:00+01:00",
                                                                   "end": "2021-03-10T10:00:00+01:00"}}  # fmt: skip
    del urine["effectiveDateTime"]
    gcs = observation("GCS", 90, 0.0)
    del gcs["valueQuantity"]
    gcs["valueInteger"] = 14
    ph = observation("pH", 95, 7.31)
    ph["valueQuantity"] = {"value": 7.31, "system": "http://unitsofmeasure.org", "code": "1"}
    spelled = observation("Temp", 100, 0.0)
    spelled["valueQuantity"] = {"value": 98.6, "code": "degF"}  # no system, not UCUM's spelling
    oid = observation("HR", 110, 77.0)
    oid["code"]["coding"][0]["system"] = "urn:oid:2.16.840.1.113883.6.1"
    before = observation("Weight", -300, 81.0)  # the emergency department's weight
    document = _stay_bundle(urine, gcs, ph, spelled, oid, before, observation("Weight", 600, 80.0))
    read = read_bundle(document, MAPPING)
    got = {(m.minute, m.variable): m.value for m in read.stay.measurements}
    assert got.keys() == {(120, "Urine"), (90, "GCS"), (95, "pH"), (100, "Temp"), (110, "HR"), (600, "Weight")}
    assert got[(90, "GCS")] == 14 and got[(95, "pH")] == 7.31 and got[(100, "Temp")] == pytest.approx(37.0)
    assert read.stay.static.Weight == 81.0 and not read.skipped


def test_a_value_that_overflows_in_conversion_is_refused_where_it_lies():
    huge = observation("PaO2", 60, 0.0)
    huge["valueQuantity"] = {"value": 1e308, "system": "http://unitsofmeasure.org", "code": "kPa"}
    document = _stay_bundle(huge)
    with pytest.raises(BundleError, match="out of range") as raised:
        read_bundle(document, MAPPING)
    assert raised.value.errors[0]["loc"] == ("entry", len(document["entry"]) - 1, "resource", "valueQuantity", "value")


def test_a_unit_that_does_not_convert_is_refused_where_it_lies():
    bad = observation("Temp", 30, 37.0)
    bad["valueQuantity"] = {"value": 37.0, "system": "http://unitsofmeasure.org", "code": "mg/dL"}
    document = _stay_bundle(observation("HR", 10, 80.0), bad)
    with pytest.raises(BundleError, match="Temp: unit 'mg/dL' does not convert to degC") as raised:
        read_bundle(document, MAPPING)
    assert raised.value.errors[0]["loc"] == ("entry", len(document["entry"]) - 1, "resource", "valueQuantity", "code")


def test_a_bundle_that_is_not_valid_fhir_names_the_field():
    document = _stay_bundle(observation("HR", 10, 80.0) | {"effectiveDateTime": "2021-03-10T09:00:00"})  # no zone
    with pytest.raises(BundleError) as raised:
        read_bundle(document, MAPPING)
    (error,) = raised.value.errors
    assert error["loc"] == ("entry", len(document["entry"]) - 1, "resource", "effectiveDateTime")


@pytest.mark.parametrize(
    "change, location, words",
    [
        (lambda d: d["entry"].pop(0), ("entry",), "one Encounter is needed, found none"),
        (lambda d: d["entry"].append({"resource": d["entry"][1]["resource"] | {"id": "other"}}), ("entry",), "one Patient is needed, found 2"),
        (lambda d: d["entry"][0]["resource"]["period"].update(start="2021-03-10"), ("entry", 0, "resource", "period", "start"), "time of day"),
        (lambda d: d["entry"][0]["resource"].pop("id"), ("entry", 0, "resource", "identifier"), "an id or an identifier"),
        (lambda d: d["entry"][1]["resource"].update(birthDate="2022-01-01"), ("entry", 1, "resource", "birthDate"), "150 years before"),
        (lambda d: d["entry"][1]["resource"].update(birthDate="1850-01-01"), ("entry", 1, "resource", "birthDate"), "150 years before"),
        (lambda d: d["entry"].append({"resource": observation("HR", 10, 80.0) | {"id": ["x"]}}), ("entry", 3, "resource", "id"), "string"),
        (lambda d: d["entry"].append({"resource": "Observation"}), ("entry", 3, "resource"), "each entry holds a resource"),
        (lambda d: d["entry"].append({"resource": observation("HR", 10, 80.0) | {"status": 5}}), ("entry", 3, "resource", "status"), "string"),
        (lambda d: d.update(resourceType="Observation"), (), "a FHIR Bundle is expected"),
    ],
)  # fmt: skip
def test_a_bundle_that_is_no_stay_says_what_is_missing(change, location, words):
    document = _stay_bundle(observation("HR", 10, 80.0))
    change(document)
    with pytest.raises(BundleError, match=words) as raised:
        read_bundle(document, MAPPING)
    assert raised.value.errors[0]["loc"] == location


def test_descriptors_come_from_the_patient_else_from_observations_closest_to_admission():
    document = _stay_bundle(observation("Age", -3000, 64.0), observation("Age", 0, 65.0),
                            observation("Height", -20000, 120.0), observation("Height", -60, 181.0))  # fmt: skip
    static = read_bundle(document, MAPPING).stay.static
    assert (static.Age, static.Height, static.Gender) == (70.0, 181.0, 0)  # the birth date wins
    del document["entry"][1]["resource"]["birthDate"]
    assert read_bundle(document, MAPPING).stay.static.Age == 65.0
    document["entry"][1]["resource"]["birthDate"] = "1950"  # a year only: counted from its middle
    assert read_bundle(document, MAPPING).stay.static.Age == 70  # admitted 2021-03-10


@pytest.mark.parametrize(
    "text, words",
    [
        ('[loinc]\n"1-1" = "Heart"\n', "[loinc] '1-1' = 'Heart'"),
        ('[ucum]\n"x" = "furlongs"\n', "[ucum] 'x' = 'furlongs'"),
        ('[icu_type]\n"sys|c" = 9\n', "[icu_type] 'sys|c' = 9"),
        ("[loinc\n", "not a readable TOML mapping"),
        ('[lonic]\n"1-1" = "HR"\n', "unknown section [lonic]"),
        ('loinc = "x"\n', "[loinc] must be a table"),
        ('[icu_type]\n"a|b" = true\n', "[icu_type] 'a|b' = True"),
        ('[unitless]\nvariables = ["Shoe"]\n', "[unitless] variables: unknown ['Shoe']"),
    ],
)
def test_a_mapping_that_cannot_be_used_names_its_file_and_key(tmp_path, text, words):
    path = tmp_path / "mapping.toml"
    path.write_text(text)
    with pytest.raises(DataError) as raised:
        FhirMapping.load(path)
    assert str(raised.value).startswith(f"{path}: ") and words in str(raised.value)


def test_a_sites_mapping_adds_to_the_shipped_one(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[loinc]\n"99999-9" = "HR"\n[icu_type]\n"http://hospital.example/units|MICU" = 3\n')
    mapping = FhirMapping.load(path)
    assert mapping.loinc["99999-9"] == "HR" and mapping.loinc["8867-4"] == "HR"
    assert mapping.icu_types["http://hospital.example/units|MICU"] == 3 and mapping.ucum == MAPPING.ucum
