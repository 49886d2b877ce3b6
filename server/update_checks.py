"""What a hospital's trained weights must pass before they are aggregated.

A reply whose weights break the model's layout (a missing or extra tensor, another shape, not
floating point), hold a NaN or an infinity, or move the model much further than the other hospitals'
do is rejected, and the hospital counts as failed for the round, with the reason. The bound on
the move is relative: the update (trained weights minus the global model sent), per local
optimizer step (a larger hospital takes more steps, and moves further), may be at most `factor`
times as long (L2 norm over all weights) as the median of the other hospitals' that round. It
follows the round's learning rate, epochs and data with no scale to set; with one hospital, or
when the others did not move at all, there is nothing to compare with and no bound. Under secure aggregation the server sees only
the sum of the hospitals' weights, never one hospital's: nothing here applies.

This keeps out broken and crudely scaled updates; it is no defence against a hospital that
poisons the model within the norm of the others (robust aggregation, `--strategy fedmedian`,
`trimmed-mean` or `krum`, limits what such a hospital can do).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def update_problems(
    trained: dict[str, ArrayRecord], sent: ArrayRecord, factor: float, steps: dict[str, int] | None = None
) -> dict[str, str]:
    """Hospital -> why its trained weights must not be aggregated (`factor` 0: no norm bound).
    `steps`: each hospital's local optimizer steps; the norm bound compares updates per step."""
    reference = {name: array.numpy() for name, array in sent.items()}
    problems: dict[str, str] = {}
    moves: dict[str, float] = {}
    for hospital, weights in trained.items():
        arrays = {name: array.numpy() for name, array in weights.items()}
        problem = _malformed(arrays, reference)
        if problem:
            problems[hospital] = problem
        else:
            moves[hospital] = _update_norm(arrays, reference) / max(1, (steps or {}).get(hospital, 1))
    for hospital, move in moves.items():
        others = float(np.median([m for other, m in moves.items() if other != hospital] or [0.0]))
        if factor and others > 0 and move > factor * others:  # others that did not move: nothing to compare with
            problems[hospital] = (
                f"update rejected: {move / others:.0f} x as long per local step as the median of the other "
                f"hospitals' (the bound is {factor:g} x)"
            )
    return problems


def control_problems(controls: dict[str, ArrayRecord | None], model: ArrayRecord) -> dict[str, str]:
    """Hospital -> why its SCAFFOLD control variate must not be taken: none sent, or not a finite
    float per parameter of the model (a NaN in c would spoil every later correction)."""
    reference = {name: array.numpy() for name, array in model.items()}
    problems = {}
    for hospital, control in controls.items():
        problem = (
            _malformed({name: array.numpy() for name, array in control.items()}, reference)
            if control is not None
            else "update rejected: no SCAFFOLD control variate sent"
        )
        if problem:
            problems[hospital] = problem.replace("update rejected:", "control variate rejected:", 1)
    return problems


def _malformed(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> str | None:
    if arrays.keys() != reference.keys():
        missing, extra = sorted(reference.keys() - arrays.keys()), sorted(arrays.keys() - reference.keys())
        return f"update rejected: weights missing {missing}, unknown {extra}"
    for name, array in arrays.items():
        expected = reference[name]
        # The server's own step may widen the global model (FedAdam's is float64): any float passes.
        if array.shape != expected.shape or not np.issubdtype(array.dtype, np.floating):
            return (
                f"update rejected: {name} is {array.dtype}{list(array.shape)}, the model's is "
                f"float{list(expected.shape)}"
            )
        if not np.isfinite(array).all():
            return f"update rejected: {name} holds NaN or infinite values"
        if np.abs(array).max(initial=0.0) > _FLOAT32_MAX:
            return f"update rejected: {name} holds values beyond what the model's float32 weights hold"
    return None


def _update_norm(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    squares = sum(float(np.sum((arrays[name].astype(np.float64) - reference[name]) ** 2)) for name in reference)
    return float(np.sqrt(squares))
