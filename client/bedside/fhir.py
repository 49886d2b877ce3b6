"""FHIR input for the bedside service: a Bundle (R4; parsed and validated by fhir.resources) of a
stay's Encounter, its Patient and its Observations becomes the `Stay` that `POST /predict` takes.

- The Encounter (exactly one) gives the stay's identifier (its id, else its first identifier),
  the ICU admission (`period.start`: minutes count from it) and the ICU type (a coding of
  `serviceType`, `type` or a location's `physicalType` listed in the mapping's `[icu_type]`).
- The Patient (at most one) gives Gender and Age (whole years from `birthDate` to admission).
- Each Observation, and each component of a panel such as blood pressure, whose LOINC code the
  mapping names is a measurement at its `effectiveDateTime` (or instant, or period start), its
  value converted from its UCUM unit to the model's. Body height is the Height descriptor; body
  weight at admission (minute 0) the Weight descriptor, later a measurement; a LOINC Age
  observation the Age descriptor.

Skipped, and counted by reason in the answer: observations whose code is not modelled,
entered in error or cancelled, without a value or with a comparator (`<0.01`), with a date but
no time of day, or outside the 48 hours the model reads. A value of a modelled code whose unit
does not convert is refused (`BundleError`, naming where it lies in the Bundle): guessing would
change the risk.
"""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from fedicu.client.bedside.stays import Descriptors, Measurement, Stay
from fedicu.shared.cohort import MAX_MINUTE
from fedicu.shared.datasets.mapping import FEDERATION_UNITS, canonical_unit, conversion
from fedicu.shared.errors import DataError
from fedicu.shared.variables import ICU_TYPES

MAPPING_FILE = Path(__file__).with_name("fhir_mapping.toml")
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
_DESCRIPTORS = ("Age", "Height")  # Weight is both: see the module docstring
_NOT_MADE = {"entered-in-error", "cancelled"}
_GENDER = {"female": 0, "male": 1}


@dataclass(frozen=True)
class FhirMapping:
    """LOINC code -> variable, UCUM code -> fedicu's unit, "system|code" -> ICU type."""

    loinc: dict[str, str]
    ucum: dict[str, str]
    unitless: frozenset[str]
    icu_types: dict[str, int]

    @staticmethod
    def load(path: Path = MAPPING_FILE) -> FhirMapping:
        """`DataError` naming the file and the key for a mapping that cannot be used."""
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise DataError(f"not a readable TOML mapping: {error}", path) from None
        mapping = FhirMapping(
            loinc=document.get("loinc", {}), ucum=document.get("ucum", {}),
            unitless=frozenset(document.get("unitless", {}).get("variables", [])),
            icu_types=document.get("icu_type", {}),
        )  # fmt: skip
        mapping._check(path)
        return mapping

    def _check(self, path: Path) -> None:
        for code, variable in self.loinc.items():
            if variable not in FEDERATION_UNITS or variable in ("Gender", "ICUType"):
                raise DataError(f"[loinc] {code!r} = {variable!r}: not a variable an Observation can give", path)
        for code, unit in self.ucum.items():
            if canonical_unit(str(unit)) is None:
                raise DataError(f"[ucum] {code!r} = {unit!r}: not a unit fedicu converts", path)
        for key, unit_type in self.icu_types.items():
            if "|" not in key or unit_type not in ICU_TYPES:
                raise DataError(f'[icu_type] {key!r} = {unit_type!r}: give "system|code" = one of 1-4', path)
        if unknown := self.unitless - set(FEDERATION_UNITS):
            raise DataError(f"[unitless] variables: unknown {sorted(unknown)}", path)


class BundleError(ValueError):
    """A Bundle that validates as FHIR but cannot be scored; `location` points into it."""

    def __init__(self, location: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.location = location


@dataclass(frozen=True)
class ReadBundle:
    stay: Stay
    skipped: Counter[str]  # observations left out, by reason


def read_bundle(document: dict[str, Any], mapping: FhirMapping) -> ReadBundle:
    """The stay a Bundle describes. pydantic's `ValidationError` for what is not valid FHIR,
    `BundleError` for a valid Bundle that cannot be scored."""
    bundle = Bundle.model_validate(document)
    entries = [(i, entry.resource) for i, entry in enumerate(bundle.entry or []) if entry.resource is not None]
    encounter_at, encounter = _one(entries, Encounter, required=True)
    patient = _one(entries, Patient, required=False)[1]
    admission = _admission(encounter, encounter_at)
    stay_id = encounter.id or next((i.value for i in encounter.identifier or [] if i.value), None)
    if not stay_id:
        raise BundleError(("entry", encounter_at, "resource", "id"), "the Encounter needs an id or an identifier")
    static: dict[str, Any] = {"ICUType": _icu_type(encounter, mapping)}
    if patient is not None:
        static |= {"Gender": _GENDER.get(patient.gender or ""), "Age": _age(patient.birthDate, admission)}
    values, skipped = _observations(entries, admission, mapping)
    measurements: list[Measurement] = []
    observed: dict[str, float] = {}
    for minute, variable, value in sorted(values, key=lambda v: v[0]):
        if variable in _DESCRIPTORS:
            observed.setdefault(variable, value)  # the first; an Observation wins over the birth date
        elif variable == "Weight" and minute == 0 and "Weight" not in static:
            static["Weight"] = value
        elif minute > MAX_MINUTE:
            skipped["after the 48 hours the model reads"] += 1
        else:
            measurements.append(Measurement(minute=minute, variable=variable, value=value))
    descriptors = Descriptors(**{k: v for k, v in (static | observed).items() if v is not None})
    return ReadBundle(Stay(stay_id=stay_id, static=descriptors, measurements=measurements), skipped)


def _one(entries: list[tuple[int, Any]], kind: type, required: bool) -> tuple[int, Any]:
    found = [(i, r) for i, r in entries if isinstance(r, kind)]
    name = kind.__name__
    if len(found) > 1 or (required and not found):
        many = f"{len(found)} ({', '.join(f'entry {i}' for i, _ in found)})" if found else "none"
        raise BundleError(("entry",), f"a Bundle describes one stay: one {name} is needed, found {many}")
    return found[0] if found else (-1, None)


def _admission(encounter: Encounter, at: int) -> dt.datetime:
    start = encounter.period.start if encounter.period else None
    if not isinstance(start, dt.datetime):
        raise BundleError(
            ("entry", at, "resource", "period", "start"),
            "the Encounter's period.start, with its time of day, is the ICU admission that minutes count from",
        )
    return start


def _icu_type(encounter: Encounter, mapping: FhirMapping) -> int | None:
    concepts = [encounter.serviceType, *(encounter.type or [])]
    concepts += [place.physicalType for place in encounter.location or []]
    codes = [f"{c.system}|{c.code}" for concept in concepts if concept for c in concept.coding or []]
    return next((mapping.icu_types[code] for code in codes if code in mapping.icu_types), None)


def _age(birth: dt.date | str | None, admission: dt.datetime) -> float | None:
    """Whole years at admission; a birth date given as a year (or year and month) counts from
    its middle."""
    if birth is None:
        return None
    if isinstance(birth, str):
        parts = [int(p) for p in birth.split("-")]
        birth = dt.date(parts[0], parts[1], 15) if len(parts) == 2 else dt.date(parts[0], 7, 1)
    day = admission.date()
    return float(day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day)))


def _observations(
    entries: list[tuple[int, Any]], admission: dt.datetime, mapping: FhirMapping
) -> tuple[list[tuple[int, str, float]], Counter[str]]:
    """(minute, variable, value) of every modelled value, and what was skipped and why."""
    values: list[tuple[int, str, float]] = []
    skipped: Counter[str] = Counter()
    for at, observation in entries:
        if not isinstance(observation, Observation):
            continue
        items = [((), observation)] + [(("component", j), c) for j, c in enumerate(observation.component or [])]
        modelled = [(where, item, v) for where, item in items if (v := _variable(item.code, mapping))]
        reason, when = _unusable(observation, modelled), _when(observation)
        if reason or not isinstance(when, dt.datetime):
            skipped[reason or "no time of day"] += 1
            continue
        minute = math.floor((when - admission).total_seconds() / 60)
        kept = 0
        for where, item, variable in modelled:
            if item.valueQuantity is None or item.valueQuantity.value is None or item.valueQuantity.comparator:
                continue
            value = _converted(item.valueQuantity, variable, mapping, ("entry", at, "resource", *where))
            if minute >= 0 or variable in _DESCRIPTORS:
                values.append((minute, variable, value))
                kept += 1
        if not kept:
            skipped["before the ICU admission" if minute < 0 else "no value, or one with a comparator"] += 1
    return values, skipped


def _variable(code: Any, mapping: FhirMapping) -> str | None:
    codes = [c.code for c in (code.coding if code else None) or [] if c.system == LOINC]
    return next((mapping.loinc[c] for c in codes if c in mapping.loinc), None)


def _unusable(observation: Observation, modelled: list) -> str | None:
    if not modelled:
        return "a code the model does not read"
    if observation.status in _NOT_MADE:
        return f"status {observation.status}"
    return None


def _when(observation: Observation) -> dt.datetime | dt.date | None:
    period = observation.effectivePeriod
    return observation.effectiveDateTime or observation.effectiveInstant or (period.start if period else None)


def _converted(quantity: Any, variable: str, mapping: FhirMapping, where: tuple[str | int, ...]) -> float:
    """The value in the model's unit; `BundleError` when its unit does not convert."""
    ucum = quantity.code if quantity.system in (UCUM, None) else None
    unit = mapping.ucum.get(ucum) if ucum else None
    unit = unit or (canonical_unit(quantity.unit) if quantity.unit else None)
    if unit is None and not (ucum or quantity.unit) and variable in mapping.unitless:
        unit = FEDERATION_UNITS[variable]
    scale_offset = conversion(variable, unit) if unit else None
    if scale_offset is None:
        given = ucum or quantity.unit
        raise BundleError(
            (*where, "valueQuantity", "code"),
            f"{variable}: unit {given!r} does not convert to {FEDERATION_UNITS[variable]}"
            if given else f"{variable}: the value needs its unit (UCUM code in valueQuantity.code)",
        )  # fmt: skip
    scale, offset = scale_offset
    return float(quantity.value) * scale + offset
