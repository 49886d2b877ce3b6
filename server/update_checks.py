"""What a hospital's trained weights must pass before they are aggregated.

A reply whose weights break the model's layout (a missing or extra tensor, another shape, not
floating point), hold a NaN or an infinity, or move the model much further than the other hospitals'
do is rejected, and the hospital counts as failed for the round, with the reason. The bound on
the move is relative: the update (trained weights minus the global model sent) may be at most
`factor` times as long (L2 norm over all weights) as the median of the other hospitals'
updates that round, so it follows the round's learning rate, epochs and data with no scale to
set; with one hospital there is no such bound. Under secure aggregation the server sees only
the sum of the hospitals' weights, never one hospital's: nothing here applies.

This keeps out broken and crudely scaled updates; it is no defence against a hospital that
poisons the model within the norm of the others (robust aggregation, `--strategy fedmedian`,
`trimmed-mean` or `krum`, limits what such a hospital can do).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord


def update_problems(trained: dict[str, ArrayRecord], sent: ArrayRecord, factor: float) -> dict[str, str]:
    """Hospital -> why its trained weights must not be aggregated (`factor` 0: no norm bound)."""
    reference = {name: array.numpy() for name, array in sent.items()}
    problems: dict[str, str] = {}
    norms: dict[str, float] = {}
    for hospital, weights in trained.items():
        arrays = {name: array.numpy() for name, array in weights.items()}
        problem = _malformed(arrays, reference)
        if problem:
            problems[hospital] = problem
        else:
            norms[hospital] = _update_norm(arrays, reference)
    for hospital, norm in norms.items():
        others = [n for other, n in norms.items() if other != hospital]
        if factor and others and norm > factor * float(np.median(others)):
            problems[hospital] = (
                f"update rejected: its norm {norm:.3g} is more than {factor:g} x the median of the other "
                f"hospitals' updates ({float(np.median(others)):.3g})"
            )
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
    return None


def _update_norm(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    squares = sum(float(np.sum((arrays[name].astype(np.float64) - reference[name]) ** 2)) for name in reference)
    return float(np.sqrt(squares))
