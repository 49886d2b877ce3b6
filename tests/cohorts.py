"""Small hand-made cohorts for unit tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedicu.shared.cohort import VARIABLE_DTYPE, Cohort


def make_cohort(stays: list[dict], measurements: list[tuple[int, int, str, float]]) -> Cohort:
    """`stays`: dicts with stay_id and any stay columns; `measurements`: (stay, minute, variable, value)."""
    defaults = {"age": 60.0, "gender": 1.0, "height": 170.0, "weight": 80.0, "icu_type": 3.0,
                "label": 0, "hospital": "h", "source": "test"}  # fmt: skip
    table = pd.DataFrame([{**defaults, **s} for s in stays]).set_index("stay_id")
    table.index = table.index.astype("int64")
    table["label"] = table["label"].astype("int8")
    for c in ("age", "gender", "height", "weight", "icu_type"):
        table[c] = table[c].astype("float64")
    m = pd.DataFrame(measurements, columns=["stay_id", "minute", "variable", "value"])
    m = m.astype({"stay_id": "int64", "minute": "int32", "value": "float32"})
    m["variable"] = m["variable"].astype(VARIABLE_DTYPE)
    return Cohort(stays=table, measurements=m)


def random_cohort(n: int, seed: int = 0, prevalence: float = 0.2) -> Cohort:
    """`n` stays with random vitals, labels and ICU types (no structure)."""
    rng = np.random.default_rng(seed)
    stays = [
        {"stay_id": 1000 + i, "label": int(rng.random() < prevalence), "icu_type": float(rng.integers(1, 5)),
         "age": float(rng.integers(20, 90)), "hospital": f"h{i % 3}", "source": "set-a" if i % 2 else "set-b"}
        for i in range(n)
    ]  # fmt: skip
    rows = []
    for i in range(n):
        for minute in rng.choice(2881, size=8, replace=False):
            rows.append((1000 + i, int(minute), "HR", float(rng.normal(85, 15))))
            rows.append((1000 + i, int(minute), "Temp", float(rng.normal(37, 0.6))))
    return make_cohort(stays, rows)
