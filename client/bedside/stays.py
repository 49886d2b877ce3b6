"""A stay as the site's clinical systems send it, in PhysioNet 2012's vocabulary: descriptors
and measurements (minutes since ICU admission), validated field by field (pydantic), and turned
into the same hourly sequences the model was trained on."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedicu.shared.cohort import MAX_MINUTE, VARIABLE_DTYPE, Cohort
from fedicu.shared.preprocessing import Sequences, clean, to_sequences
from fedicu.shared.variables import ICU_TYPES, TIME_SERIES


class Measurement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    minute: int = Field(ge=0, le=MAX_MINUTE, description="Minutes since ICU admission; the model reads 48 h.")
    variable: str = Field(description="A PhysioNet 2012 time series, e.g. HR, Temp, Lactate.")
    value: float = Field(description="In PhysioNet 2012 units; an impossible value is ignored, and counted.")

    @field_validator("variable")
    @classmethod
    def _known(cls, variable: str) -> str:
        if variable not in TIME_SERIES:
            raise ValueError(f"unknown variable {variable!r}; one of {', '.join(TIME_SERIES)}")
        return variable

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class Descriptors(BaseModel):
    """Recorded at admission; any may be left out."""

    model_config = ConfigDict(extra="forbid")

    Age: float | None = Field(default=None, description="Years.")
    Gender: int | None = Field(default=None, ge=0, le=1, description="0 female, 1 male.")
    Height: float | None = Field(default=None, description="cm; an impossible value is ignored, and counted.")
    Weight: float | None = Field(default=None, description="kg, at admission; likewise.")
    ICUType: int | None = Field(default=None, description=", ".join(f"{k} {v}" for k, v in ICU_TYPES.items()))

    @field_validator("Age", "Height", "Weight")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("ICUType")
    @classmethod
    def _unit(cls, unit: int | None) -> int | None:
        if unit is not None and unit not in ICU_TYPES:
            raise ValueError(f"must be one of {', '.join(map(str, ICU_TYPES))}")
        return unit


class Stay(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stay_id: str = Field(min_length=1, max_length=200, description="The site's own identifier of the stay.")
    static: Descriptors = Field(default_factory=Descriptors)
    measurements: list[Measurement] = Field(default_factory=list, max_length=100_000)


def to_model_input(stays: list[tuple[Descriptors, list[Measurement]]]) -> tuple[Sequences, int]:
    """Hourly sequences of the stays, in order, and how many values cleaning ignored."""

    def descriptor(name: str) -> np.ndarray:
        values = [getattr(d, name) for d, _ in stays]
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    columns = {c: descriptor(name) for c, name in _DESCRIPTORS.items()}
    table = pd.DataFrame(
        columns | {"label": np.zeros(len(stays), np.int8), "hospital": "", "source": "service"},
        index=pd.Index(np.arange(len(stays), dtype=np.int64), name="stay_id"),
    )
    every = [(i, m) for i, (_, ms) in enumerate(stays) for m in ms]
    measurements = pd.DataFrame(
        {
            "stay_id": np.array([i for i, _ in every], dtype=np.int64),
            "minute": np.array([m.minute for _, m in every], dtype=np.int32),
            "variable": pd.Categorical.from_codes(
                np.array([_CODE[m.variable] for _, m in every], dtype=np.int8), dtype=VARIABLE_DTYPE
            ),
            "value": np.array([m.value for _, m in every], dtype=np.float32),
        }
    )
    cleaned, removed = clean(Cohort(stays=table, measurements=measurements))
    return to_sequences(cleaned), sum(removed.values())


_DESCRIPTORS = {"age": "Age", "gender": "Gender", "height": "Height", "weight": "Weight", "icu_type": "ICUType"}
_CODE = {v: code for code, v in enumerate(VARIABLE_DTYPE.categories)}
