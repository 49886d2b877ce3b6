"""Prediction tasks: what a cohort's `label` column answers.

A task is a name. The built-in ones are PhysioNet 2012's outcomes; any other
name is a label column of a site's own `stays` table or the name given to a MEDS
label file. A model is trained for one task, its run directory records it, and
scoring it on a cohort labelled for another task is refused.
"""

from __future__ import annotations

DEFAULT_TASK = "in_hospital_death"

# Built-in tasks and what their positive label means.
BUILT_IN: dict[str, str] = {
    "in_hospital_death": "death in hospital",
    "los_over_3d": "length of stay over 3 days",
    "los_over_7d": "length of stay over 7 days",
    "diabetes_complications": "an acute diabetic complication later in the admission (MEDS labels)",
}

# Length-of-stay tasks: the threshold in days on the stay's length of stay.
LENGTH_OF_STAY_DAYS: dict[str, float] = {"los_over_3d": 3.0, "los_over_7d": 7.0}


def check_name(task: str) -> str:
    """A task name is a label column name: letters, digits, `_`, `-` or `.`."""
    if not task or not all(c.isalnum() or c in "_-." for c in task):
        raise ValueError(f"--task {task!r} must be a name such as {', '.join(BUILT_IN)}")
    return task


def describe(task: str) -> str:
    return BUILT_IN.get(task, f"label column {task}")


def check_same(trained_for: str, cohort_task: str) -> None:
    """Refuse to score a model on data labelled for another task."""
    if trained_for != cohort_task:
        raise ValueError(
            f"the model was trained for task {trained_for!r} ({describe(trained_for)}) but these stays are "
            f"labelled for {cohort_task!r} ({describe(cohort_task)}); give --task {trained_for}"
        )
