"""A stay as `POST /predict` takes it, written as the FHIR R4 Bundle a hospital's systems would
send for it: LOINC codes and UCUM units from the shipped mapping, blood pressures as panels,
temperature in degrees Fahrenheit."""

import datetime as dt
from collections import defaultdict

from fedicu.client.bedside.fhir import LOINC, UCUM
from fedicu.client.bedside.fhir_mapping import FhirMapping
from fedicu.shared.datasets.mapping import FEDERATION_UNITS, canonical_unit

ADMISSION = dt.datetime(2021, 3, 10, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
BLOOD_PRESSURE_PANEL = "85354-9"
_PANELLED = ("NISysABP", "NIDiasABP")
_MAPPING = FhirMapping.load()
_CODE = {variable: code for code, variable in reversed(_MAPPING.loinc.items())}  # the first code of each
_UCUM = {canonical_unit(unit): code for code, unit in reversed(_MAPPING.ucum.items())}
MODELLED = frozenset(_CODE)  # the variables a Bundle can carry (MechVent has no LOINC code)


def quantity(variable: str, value: float) -> dict:
    if variable == "Temp":
        return {"value": value * 9 / 5 + 32, "unit": "°F", "system": UCUM, "code": "[degF]"}
    return {"value": value, "system": UCUM, "code": _UCUM[canonical_unit(FEDERATION_UNITS[variable])]}


def observation(variable: str, minute: int, value: float, **fields) -> dict:
    return {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": _CODE[variable]}]},
        "effectiveDateTime": (ADMISSION + dt.timedelta(minutes=minute)).isoformat(),
        "valueQuantity": quantity(variable, value),
    } | fields  # fmt: skip


def encounter(stay_id: str, icu_type: int | None) -> dict:
    resource = {"resourceType": "Encounter", "id": stay_id, "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "ACUTE"},
                "period": {"start": ADMISSION.isoformat()}}  # fmt: skip
    if icu_type is not None:
        resource["serviceType"] = {"coding": [{"system": "urn:fedicu:icu-type", "code": str(icu_type)}]}
    return resource


def bundle_of(stay: dict) -> dict:
    """The Bundle of a `/predict` body whose Age is whole years (as PhysioNet's are)."""
    static = stay.get("static", {})
    resources = [encounter(stay["stay_id"], static.get("ICUType"))]
    patient = {"resourceType": "Patient", "id": "patient"}
    if "Age" in static:
        patient["birthDate"] = ADMISSION.date().replace(year=ADMISSION.year - int(static["Age"])).isoformat()
    if "Gender" in static:
        patient["gender"] = ("female", "male")[static["Gender"]]
    resources.append(patient)
    if "Height" in static:
        resources.append(observation("Height", 0, static["Height"]))
    if "Weight" in static:
        resources.append(observation("Weight", 0, static["Weight"]))
    pressures: dict[int, list[dict]] = defaultdict(list)
    for m in stay["measurements"]:
        if m["variable"] in _PANELLED:
            pressures[m["minute"]].append(m)
        elif m["variable"] in MODELLED:
            resources.append(observation(m["variable"], m["minute"], m["value"]))
    for minute, parts in pressures.items():
        panel = observation("HR", minute, 0.0)
        del panel["valueQuantity"]
        panel["code"] = {"coding": [{"system": LOINC, "code": BLOOD_PRESSURE_PANEL}]}
        panel["component"] = [{"code": {"coding": [{"system": LOINC, "code": _CODE[p["variable"]]}]},
                               "valueQuantity": quantity(p["variable"], p["value"])} for p in parts]  # fmt: skip
        resources.append(panel)
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
