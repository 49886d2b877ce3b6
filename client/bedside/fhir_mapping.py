"""How `POST /fhir/predict` reads FHIR codes: the shipped `fhir_mapping.toml`, and a site's own
additions (`fedicu serve --fhir-mapping FILE`, the same layout; its entries add to the shipped
ones and win where both map a code; `[skip]` lists only grow)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedicu.shared.datasets.mapping import FEDERATION_UNITS, canonical_unit
from fedicu.shared.errors import DataError
from fedicu.shared.variables import ICU_TYPES

SHIPPED = Path(__file__).with_name("fhir_mapping.toml")
_SECTIONS = ("loinc", "skip", "ucum", "unitless", "icu_type")


@dataclass(frozen=True)
class FhirMapping:
    """LOINC code -> variable; codes that rule an Observation out; UCUM code -> fedicu's unit;
    variables that may come without a unit; "system|code" -> ICU type."""

    loinc: dict[str, str]
    skip: frozenset[str]
    ucum: dict[str, str]
    unitless: frozenset[str]
    icu_types: dict[str, int]

    @staticmethod
    def load(site: Path | None = None) -> FhirMapping:
        """The shipped mapping, with `site`'s entries added. `DataError` naming the file and the
        key for a file that cannot be used."""
        documents = [(SHIPPED, _read(SHIPPED))] + ([(site, _read(site))] if site else [])
        parts: dict[str, Any] = {"loinc": {}, "skip": set(), "ucum": {}, "unitless": set(), "icu_type": {}}
        for path, document in documents:
            for section, content in document.items():
                _check(path, section, content)
                if section in ("skip", "unitless"):
                    parts[section] |= set(content[_LIST_KEY[section]])
                else:
                    parts[section] |= content
        return FhirMapping(
            loinc=parts["loinc"], skip=frozenset(parts["skip"]), ucum=parts["ucum"],
            unitless=frozenset(parts["unitless"]), icu_types=parts["icu_type"],
        )  # fmt: skip


_LIST_KEY = {"skip": "loinc", "unitless": "variables"}


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise DataError(f"not a readable TOML mapping: {error}", path) from None


def _check(path: Path, section: str, content: Any) -> None:
    if section not in _SECTIONS:
        raise DataError(f"unknown section [{section}]; the sections are {', '.join(_SECTIONS)}", path)
    if not isinstance(content, dict):
        raise DataError(f"[{section}] must be a table (a [{section}] header followed by keys)", path)
    if section in _LIST_KEY:
        key = _LIST_KEY[section]
        values = content.get(key)
        if set(content) != {key} or not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise DataError(f'[{section}] holds one key, {key} = ["…", …]', path)
        if section == "unitless" and (unknown := set(values) - set(FEDERATION_UNITS)):
            raise DataError(f"[unitless] variables: unknown {sorted(unknown)}", path)
        return
    for key, value in content.items():
        if not _valid(section, value) or (section == "icu_type" and "|" not in key):
            raise DataError(f"[{section}] {key!r} = {value!r}: {_EXPECTED[section]}", path)


def _valid(section: str, value: Any) -> bool:
    if section == "loinc":
        return isinstance(value, str) and value in FEDERATION_UNITS and value not in ("Gender", "ICUType")
    if section == "ucum":
        return isinstance(value, str) and canonical_unit(value) is not None
    return type(value) is int and value in ICU_TYPES  # a bool is no ICU type


_EXPECTED = {
    "loinc": "not a variable an Observation can give",
    "ucum": "not a unit fedicu converts",
    "icu_type": 'give "system|code" = one of 1-4',
}
