"""FHIR input for the bedside service: a Bundle (R4; each resource parsed and validated by
fhir.resources) of a stay's Encounter, its Patient and its Observations becomes the `Stay`
that `POST /predict` takes. Codes and units are read through `FhirMapping`.

- The Encounter (exactly one) gives the stay's identifier (its id, else its first identifier),
  the ICU admission (`period.start`: minutes count from it) and the ICU type (a coding of
  `serviceType`, `type` or a location's `physicalType` the mapping lists; else none).
- The Patient (none, or one) gives Gender and Age (whole years from `birthDate` to admission).
- Each Observation, and each component of a panel such as blood pressure, whose LOINC code the
  mapping names is a value at its `effectiveDateTime` (or instant, or the end of its period:
  when the value was known), converted from its UCUM unit to the model's. Body height closest
  to admission is the Height descriptor, a LOINC Age observation closest to it the Age when the
  Patient gives no birth date; the body weight last measured in the day up to admission is the
  Weight descriptor, later ones are measurements.

Skipped, and counted by reason in the answer (once per resource): resources other than those
three, duplicates of an entry (same type and id), Observations whose code is not modelled (or
that carry a code the mapping rules out, such as pulse oximetry), entered in error or
cancelled, without a value or with a comparator (`<0.01`), with a date but no time of day
(except a height or age: a date places them well enough), or outside the 48 hours the model
reads. A modelled value whose unit does not convert is refused
(`BundleError`, naming where it lies in the Bundle): guessing would change the risk.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from fedicu.client.bedside.fhir_mapping import FhirMapping
from fedicu.client.bedside.stays import Descriptors, Measurement, Stay
from fedicu.shared.cohort import MAX_MINUTE
from fedicu.shared.datasets.mapping import FEDERATION_UNITS, canonical_unit, conversion

LOINC = "http://loinc.org"
_LOINC_SYSTEMS = (LOINC, "urn:oid:2.16.840.1.113883.6.1")
UCUM = "http://unitsofmeasure.org"
MAX_ENTRIES = 50_000
_READ = {"Encounter": Encounter, "Patient": Patient, "Observation": Observation}
_NOT_MADE = {"entered-in-error", "cancelled"}
_GENDER = {"female": 0, "male": 1}
_DAY = 24 * 60
Location = tuple[str | int, ...]


class BundleError(ValueError):
    """A Bundle that cannot be scored; `errors` say where (a location in the Bundle) and why,
    as pydantic's errors do."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(f"{list(e['loc'])}: {e['msg']}" for e in errors))
        self.errors = errors

    @staticmethod
    def at(location: Location, message: str) -> BundleError:
        return BundleError([{"type": "value_error", "loc": location, "msg": message}])


@dataclass(frozen=True)
class ReadBundle:
    stay: Stay
    skipped: Counter[str]  # resources left out, by reason


def read_bundle(document: Any, mapping: FhirMapping) -> ReadBundle:
    """The stay a Bundle describes, or `BundleError`."""
    entries, skipped = _resources(document)
    encounter_at, encounter = _one(entries, Encounter, required=True)
    patient_at, patient = _one(entries, Patient, required=False)
    admission = _admission(encounter, encounter_at)
    static: dict[str, Any] = {"ICUType": _icu_type(encounter, mapping)}
    if patient is not None:
        static |= {"Gender": _GENDER.get(patient.gender or ""), "Age": _age(patient, patient_at, admission)}
    values = _observations(entries, admission, mapping, skipped)
    measurements, descriptors = _placed(values, static)
    if len(measurements) > 100_000:
        raise BundleError.at(("entry",), f"{len(measurements)} values: more than a stay's 48 hours can hold (100,000)")
    try:
        stay = Stay(
            stay_id=_stay_id(encounter, encounter_at), static=Descriptors(**descriptors), measurements=measurements
        )
    except ValidationError as error:  # every field is checked above: a last guard, never a 500
        raise BundleError.at(("entry",), f"not a stay fedicu can score: {error}") from None
    return ReadBundle(stay, skipped)


def _resources(document: Any) -> tuple[list[tuple[int, Any]], Counter[str]]:
    """(entry index, resource) of the Encounters, Patients and Observations, each validated."""
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        raise BundleError.at((), 'a FHIR Bundle is expected: a JSON object with "resourceType": "Bundle"')
    entries = document.get("entry") or []
    _validated(Bundle, {k: v for k, v in document.items() if k != "entry"}, ())
    if not isinstance(entries, list):
        raise BundleError.at(("entry",), "must be a list of entries")
    if len(entries) > MAX_ENTRIES:
        raise BundleError.at(("entry",), f"{len(entries)} entries: a stay's Bundle holds at most {MAX_ENTRIES:,}")
    found, skipped, seen = [], Counter[str](), set()
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else "?"
        if resource is None:  # a response or a deletion: nothing to read
            skipped["an entry without a resource"] += 1
            continue
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise BundleError.at(("entry", i, "resource"), "each entry holds a resource: an object with resourceType")
        kind, identity = resource["resourceType"], resource.get("id")
        key = (kind, identity if isinstance(identity, str) else None)  # another id: validation says so
        if kind not in _READ:
            skipped["a resource other than Encounter, Patient and Observation"] += 1
        elif key[1] is not None and key in seen:
            skipped["a duplicate entry (same type and id)"] += 1
        else:
            seen.add(key)
            found.append((i, _validated(_READ[kind], resource, ("entry", i, "resource"))))
    return found, skipped


def _validated(kind: Any, resource: dict, location: Location) -> Any:
    try:
        return kind.model_validate(resource)
    except ValidationError as error:
        details = error.errors(include_url=False, include_context=False, include_input=False)
        raise BundleError([{**e, "loc": (*location, *e["loc"])} for e in details]) from None
    except (RecursionError, KeyError, TypeError, AttributeError) as error:  # fhir.resources' own
        raise BundleError.at(location, f"not a FHIR R4 {kind.__name__} it can read ({type(error).__name__})") from None


def _one(entries: list[tuple[int, Any]], kind: type, required: bool) -> tuple[int, Any]:
    found = [(i, r) for i, r in entries if isinstance(r, kind)]
    name = kind.__name__
    if len(found) > 1 or (required and not found):
        many = f"{len(found)} ({', '.join(f'entry {i}' for i, _ in found)})" if found else "none"
        raise BundleError.at(("entry",), f"a Bundle describes one stay: one {name} is needed, found {many}")
    return found[0] if found else (-1, None)


def _stay_id(encounter: Encounter, at: int) -> str:
    stay_id = encounter.id or next((i.value for i in encounter.identifier or [] if i.value), None)
    where: Location = ("entry", at, "resource", "id" if encounter.id else "identifier")
    if not stay_id:
        raise BundleError.at(where, "the Encounter needs an id or an identifier")
    if len(stay_id) > 200:
        raise BundleError.at(where, f"the stay's identifier has {len(stay_id)} characters; at most 200")
    return stay_id


def _admission(encounter: Encounter, at: int) -> dt.datetime:
    start = encounter.period.start if encounter.period else None
    if not isinstance(start, dt.datetime):
        raise BundleError.at(
            ("entry", at, "resource", "period", "start"),
            "the Encounter's period.start, with its time of day, is the ICU admission that minutes count from",
        )
    return start


def _icu_type(encounter: Encounter, mapping: FhirMapping) -> int | None:
    concepts = [encounter.serviceType, *(encounter.type or [])]
    concepts += [place.physicalType for place in encounter.location or []]
    codes = [f"{c.system}|{c.code}" for concept in concepts if concept for c in concept.coding or []]
    return next((mapping.icu_types[code] for code in codes if code in mapping.icu_types), None)


def _age(patient: Patient, at: int, admission: dt.datetime) -> float | None:
    """Whole years at admission; a birth date given as a year (or year and month) counts from
    its middle."""
    birth = patient.birthDate
    if birth is None:
        return None
    if isinstance(birth, str):
        parts = [int(p) for p in birth.split("-")]
        birth = dt.date(parts[0], parts[1], 15) if len(parts) == 2 else dt.date(parts[0], 7, 1)
    day = admission.date()
    if not day.year - 150 < birth.year or birth > day:
        raise BundleError.at(
            ("entry", at, "resource", "birthDate"), "the birth date must lie in the 150 years before the ICU admission"
        )
    return float(day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day)))


Value = tuple[float, str, float]  # minutes since admission, variable, value in the model's unit


def _observations(
    entries: list[tuple[int, Any]], admission: dt.datetime, mapping: FhirMapping, skipped: Counter[str]
) -> list[Value]:
    """Every modelled value of the Observations; what is left out is counted in `skipped`."""
    values: list[Value] = []
    for at, observation in entries:
        if not isinstance(observation, Observation):
            continue
        items = [((), observation)] + [(("component", j), c) for j, c in enumerate(observation.component or [])]
        modelled = [(where, item, v) for where, item in items if (v := _variable(item.code, mapping))]
        when = _when(observation)
        descriptor = all(v in ("Age", "Height") for _, _, v in modelled)
        if not isinstance(when, dt.datetime) and descriptor and isinstance(when, dt.date):
            when = dt.datetime.combine(when, dt.time(12), admission.tzinfo)  # a date places a height well enough
        reason = _unusable(observation, modelled, mapping, when)
        if reason or not isinstance(when, dt.datetime):  # `_unusable` says why: the check is for the types
            skipped[reason or "an Observation with no time of day"] += 1
            continue
        minutes = (when - admission).total_seconds() / 60
        kept = [
            (minutes, variable, _converted(item, variable, mapping, ("entry", at, "resource", *where)))
            for where, item, variable in modelled
            if _has_value(item, variable, mapping) and _in_window(variable, minutes)
        ]
        values += kept
        if not kept:
            skipped[
                _outside(minutes) or "an Observation without a value it can read (none, a comparator, no unit)"
            ] += 1
    return values


def _variable(code: Any, mapping: FhirMapping) -> str | None:
    codes = [c.code for c in (code.coding if code else None) or [] if c.system in _LOINC_SYSTEMS]
    if any(c in mapping.skip for c in codes):
        return None
    return next((mapping.loinc[c] for c in codes if c in mapping.loinc), None)


def _unusable(observation: Observation, modelled: list, mapping: FhirMapping, when: Any) -> str | None:
    codes = [c.code for c in (observation.code.coding or []) if c.system in _LOINC_SYSTEMS]
    if not modelled or any(c in mapping.skip for c in codes):
        return "an Observation whose code the model does not read"
    if observation.status in _NOT_MADE:
        return f"an Observation {observation.status}"
    if not isinstance(when, dt.datetime):
        return "an Observation with no time of day"
    return None


def _in_window(variable: str, minutes: float) -> bool:
    """Age and Height whenever measured; a weight from the day before admission on (the Weight
    at admission); every other value in the 48 hours the model reads."""
    if variable in ("Age", "Height"):
        return True
    return (-_DAY if variable == "Weight" else 0) <= minutes <= MAX_MINUTE


def _outside(minutes: float) -> str | None:
    if minutes < 0:
        return "an Observation before the ICU admission"
    return "an Observation after the 48 hours the model reads" if minutes > MAX_MINUTE else None


def _when(observation: Observation) -> dt.datetime | dt.date | None:
    period = observation.effectivePeriod
    known = (period.end or period.start) if period else None
    return observation.effectiveDateTime or observation.effectiveInstant or known


def _has_value(item: Any, variable: str, mapping: FhirMapping) -> bool:
    quantity = item.valueQuantity
    if quantity is not None:
        return quantity.value is not None and not quantity.comparator
    return item.valueInteger is not None and variable in mapping.unitless


def _converted(item: Any, variable: str, mapping: FhirMapping, where: Location) -> float:
    """The value in the model's unit; `BundleError` when its unit does not convert."""
    quantity = item.valueQuantity
    if quantity is None:  # an integer: only for unitless variables
        return float(item.valueInteger)
    code = quantity.code if quantity.system in (UCUM, None) else None
    unit = (mapping.ucum.get(code) or canonical_unit(code)) if code else None
    unit = unit or (canonical_unit(quantity.unit) if quantity.unit else None)
    if variable in mapping.unitless and (code == "1" or not (code or quantity.unit)):
        unit = FEDERATION_UNITS[variable]  # a dimensionless value: in the model's own unit
    scale_offset = conversion(variable, unit) if unit else None
    given = code or quantity.unit
    if scale_offset is None:
        raise BundleError.at(
            (*where, "valueQuantity", "code"),
            f"{variable}: unit {given!r} does not convert to {FEDERATION_UNITS[variable]}"
            if given else f"{variable}: the value needs its unit (UCUM code in valueQuantity.code)",
        )  # fmt: skip
    value = float(quantity.value) * scale_offset[0] + scale_offset[1]
    if not math.isfinite(value) or abs(value) > 3e38:  # beyond what the model's float32 holds
        raise BundleError.at(
            (*where, "valueQuantity", "value"), f"{variable}: {quantity.value:.3g} {given} is out of range"
        )
    return value


def _placed(values: list[Value], static: dict[str, Any]) -> tuple[list[Measurement], dict[str, Any]]:
    """Measurements by minute, and the descriptors: the Patient's, then those the Observations
    give closest to admission (the Weight: last measured in the day up to it)."""
    closest: dict[str, tuple[float, float]] = {}  # descriptor -> (distance from admission, value)
    measurements = []
    for minutes, variable, value in sorted(values, key=lambda v: v[0]):
        if variable == "Weight" and minutes < 1:
            closest["Weight"] = (-minutes, value)  # in time order: the last one up to admission wins
        elif variable in ("Age", "Height"):
            if variable not in closest or abs(minutes) < closest[variable][0]:
                closest[variable] = (abs(minutes), value)
        else:
            measurements.append(Measurement(minute=math.floor(minutes), variable=variable, value=value))
    observed = {name: value for name, (_, value) in closest.items() if not (name == "Age" and static.get("Age"))}
    return measurements, {k: v for k, v in (static | observed).items() if v is not None}
