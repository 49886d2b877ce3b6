"""The clinical variables fedicu models, with their physiological limits.

The vocabulary is PhysioNet 2012's: six general descriptors recorded once at
admission and 37 time-varying variables. Every dataset maps its stays onto it.
"""

from __future__ import annotations

# Descriptors recorded once per stay (RecordID is the stay's identifier).
DESCRIPTORS: tuple[str, ...] = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")

# Time-varying variables, in the fixed order used for feature channels.
TIME_SERIES: tuple[str, ...] = (
    "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine",
    "DiasABP", "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg",
    "MAP", "MechVent", "Na", "NIDiasABP", "NIMAP", "NISysABP", "PaCO2", "PaO2", "pH",
    "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI", "TroponinT",
    "Urine", "WBC", "Weight",
)  # fmt: skip

ICU_TYPES: dict[int, str] = {
    1: "Coronary Care Unit",
    2: "Cardiac Surgery Recovery Unit",
    3: "Medical ICU",
    4: "Surgical ICU",
}

# Inclusive plausible ranges in PhysioNet 2012 units. A value outside its range is
# a recording error (e.g. HR 0 from a detached lead, Temp -17.8, Weight -1), not a
# patient state, so cleaning turns it into a missing value and counts it.
PHYSIOLOGICAL_LIMITS: dict[str, tuple[float, float]] = {
    "Albumin": (0.5, 7.0),  # g/dL
    "ALP": (1.0, 5000.0),  # IU/L
    "ALT": (1.0, 15000.0),  # IU/L
    "AST": (1.0, 20000.0),  # IU/L
    "Bilirubin": (0.05, 60.0),  # mg/dL
    "BUN": (1.0, 300.0),  # mg/dL
    "Cholesterol": (20.0, 1000.0),  # mg/dL
    "Creatinine": (0.1, 30.0),  # mg/dL
    "DiasABP": (10.0, 200.0),  # mmHg, invasive
    "FiO2": (0.21, 1.0),  # fraction
    "GCS": (3.0, 15.0),  # points
    "Glucose": (10.0, 2000.0),  # mg/dL
    "HCO3": (2.0, 60.0),  # mmol/L
    "HCT": (5.0, 75.0),  # %
    "HR": (10.0, 300.0),  # beats/min
    "K": (1.0, 12.0),  # mEq/L
    "Lactate": (0.1, 30.0),  # mmol/L
    "Mg": (0.3, 10.0),  # mmol/L
    "MAP": (15.0, 250.0),  # mmHg, invasive
    "MechVent": (0.0, 1.0),  # on/off
    "Na": (90.0, 200.0),  # mEq/L
    "NIDiasABP": (10.0, 200.0),  # mmHg
    "NIMAP": (15.0, 250.0),  # mmHg
    "NISysABP": (30.0, 300.0),  # mmHg
    "PaCO2": (5.0, 150.0),  # mmHg
    "PaO2": (10.0, 750.0),  # mmHg
    "pH": (6.5, 8.0),
    "Platelets": (1.0, 2500.0),  # 10^3/uL
    "RespRate": (1.0, 90.0),  # breaths/min
    "SaO2": (40.0, 100.0),  # %
    "SysABP": (30.0, 300.0),  # mmHg, invasive
    "Temp": (25.0, 45.0),  # degrees C
    "TroponinI": (0.0, 100.0),  # ug/L
    "TroponinT": (0.0, 50.0),  # ug/L
    "Urine": (0.0, 10000.0),  # mL
    "WBC": (0.1, 300.0),  # 10^3/uL
    "Weight": (20.0, 350.0),  # kg
    # Static descriptors
    "Age": (15.0, 110.0),  # years
    "Height": (100.0, 250.0),  # cm
}

# Right-skewed laboratory values: a log transform makes them near-normal before
# standardization, so a few extreme values do not dominate the input scale.
LOG_TRANSFORMED: frozenset[str] = frozenset(
    {"ALP", "ALT", "AST", "Bilirubin", "BUN", "Creatinine", "Glucose", "Lactate",
     "Platelets", "TroponinI", "TroponinT", "Urine", "WBC"}
)  # fmt: skip

# Typical ranges of each variable in adult ICU patients (roughly the central 95 %), from
# clinical reference values, not from any dataset. Runs with DP-SGD standardize inputs with
# these (centre = midpoint, scale = a quarter of the range, on the log scale for skewed labs),
# because statistics computed from the training stays would be released outside the
# DP guarantee.
REFERENCE_RANGES: dict[str, tuple[float, float]] = {
    "Albumin": (1.5, 4.5),
    "ALP": (30.0, 300.0),
    "ALT": (7.0, 300.0),
    "AST": (10.0, 400.0),
    "Bilirubin": (0.2, 5.0),
    "BUN": (7.0, 80.0),
    "Cholesterol": (80.0, 250.0),
    "Creatinine": (0.5, 4.0),
    "DiasABP": (40.0, 85.0),
    "FiO2": (0.3, 1.0),
    "GCS": (3.0, 15.0),
    "Glucose": (70.0, 250.0),
    "HCO3": (16.0, 32.0),
    "HCT": (22.0, 42.0),
    "HR": (55.0, 125.0),
    "K": (3.2, 5.3),
    "Lactate": (0.6, 6.0),
    "Mg": (1.5, 2.8),
    "MAP": (55.0, 110.0),
    "MechVent": (0.0, 1.0),
    "Na": (130.0, 148.0),
    "NIDiasABP": (35.0, 85.0),
    "NIMAP": (55.0, 110.0),
    "NISysABP": (85.0, 165.0),
    "PaCO2": (28.0, 55.0),
    "PaO2": (60.0, 300.0),
    "pH": (7.2, 7.52),
    "Platelets": (50.0, 450.0),
    "RespRate": (10.0, 32.0),
    "SaO2": (90.0, 100.0),
    "SysABP": (85.0, 165.0),
    "Temp": (35.5, 38.8),
    "TroponinI": (0.0, 30.0),
    "TroponinT": (0.0, 3.0),
    "Urine": (0.0, 600.0),  # mL per hour
    "WBC": (4.0, 25.0),
    "Weight": (50.0, 130.0),
    "Age": (25.0, 90.0),
    "Height": (150.0, 190.0),
}
