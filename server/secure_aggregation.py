"""Secure aggregation: a round's training carried by Flower's SecAgg+ protocol.

Guarantee: a server that follows the protocol learns the weighted sum of the hospitals' new
weights and nothing else about any one hospital's weights, unless it colludes with more than
half of the N hospitals of the round. Each hospital quantizes its weights (times its number
of training stays) and adds pairwise masks, which cancel in the sum, and a private mask; every
mask's secret is split into N shares of which t = N // 2 + 1 rebuild it. A hospital that drops
out before its masked weights arrive is left out of the sum, one that drops out later stays
in it; the round completes while t hospitals stay to the end (2 of 2 or 3, 3 of 4 or 5, ...).
A server that lies about who dropped out could ask some hospitals for one secret of a
hospital and others for the other: with t above N / 2 that needs colluding hospitals too,
but Flower's workflow does not check the server's consistency, so the guarantee is stated
for a server that follows the protocol.

Flower implements SecAgg+ in its legacy workflow API (`SecAggPlusWorkflow`, driving a legacy
`Strategy` with `FitIns`/`FitRes`). `secure_train` bridges it into the Message-API round loop:
the run's strategy still chooses the hospitals and their instructions (`configure_train`)
and still aggregates (`aggregate_train`, given the secure average as one reply), so FedAvg,
FedProx and FedAdam, and DP-SGD at the hospitals, work unchanged. The hospital's side is
`client/secure_aggregation.py`.

Limits:
- Hospitals are weighted by training stays (FedAvg's weighting).
- Each weighted weight is clipped to +-8 and quantized to 2^22 levels with stochastic
  rounding (error about 1e-6): runs with secure aggregation do not reproduce bit for bit.
- Only the weights are masked: the number of stays, metrics and privacy ledgers travel as
  in any run.
- Hospital-level DP is refused: its server-side clipping needs each hospital's update.
- `round-timeout` applies to each of the protocol's four exchanges.
- A hospital cannot insist on secure aggregation: it answers the plain train messages of a
  run without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedicu.server.messaging import collect, send
from fedicu.shared import compat
from fedicu.shared.contract import ARRAYS, CONFIG, METRICS, WEIGHT

CLIPPING_RANGE = 8.0


def unmask_threshold(hospitals: int) -> int:
    """Shares needed to rebuild a secret, which is also how many hospitals must stay to the
    end of a round: more than half, so that two disjoint groups can never both rebuild."""
    return hospitals // 2 + 1


@dataclass(frozen=True)
class _Node:
    node_id: int


class _Bridge:
    """The two legacy-strategy calls SecAgg+'s workflow makes: whom to send what, and the result."""

    def __init__(self, instructions: list[Message]):
        self.instructions = instructions
        self.average: list[np.ndarray] | None = None

    def configure_fit(self, server_round, parameters, client_manager):
        return [
            (
                _Node(m.metadata.dst_node_id),
                compat.legacy_fit_ins(m.content.array_records[ARRAYS], m.content.config_records[CONFIG]),
            )
            for m in self.instructions
        ]

    def aggregate_fit(self, server_round, results, failures):
        parameters = results[0][1].parameters  # the workflow gives every result the unmasked average
        self.average = compat.legacy_ndarrays(parameters)
        return parameters, {}


class _RecordingGrid:
    """The grid, keeping every reply: those of the masking stage carry the hospitals' metrics."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.replies: list[Message] = []
        self.senders: dict[str, int] = {}

    def send_and_receive(self, messages, *, timeout=None):
        sent = send(self.grid, messages, timeout)
        replies = collect(self.grid, sent)
        self.replies += replies
        self.senders |= sent.senders
        return replies


@dataclass(frozen=True)
class SecureRound:
    """The hospitals' weighted average as one reply the strategy can aggregate (None when the
    protocol stopped because too few hospitals remained) and every reply received, whose
    masking-stage ones carry each hospital's metrics with its weights removed."""

    average: Message | None
    replies: list[Message]
    senders: dict[str, int]  # message id -> node, for `messaging.sender`


def secure_train(
    grid: Grid, instructions: list[Message], server_round: int, max_weight: float, timeout: float
) -> SecureRound:
    """Run SecAgg+ over one round's train instructions. `max_weight` must be at least the
    largest number of training stays."""
    arrays = instructions[0].content.array_records[ARRAYS]
    bridge, recording = _Bridge(instructions), _RecordingGrid(grid)
    workflow = compat.secagg_workflow_class()(
        num_shares=1.0,  # every hospital holds a share of every other's secrets
        reconstruction_threshold=unmask_threshold(len(instructions)),
        max_weight=max_weight,
        clipping_range=CLIPPING_RANGE,
        timeout=timeout,
    )
    workflow(recording, compat.legacy_context(server_round, arrays, bridge))
    if bridge.average is None:
        return SecureRound(None, recording.replies, recording.senders)
    average = ArrayRecord(
        {
            name: Array(value.astype(arrays[name].numpy().dtype))
            for name, value in zip(arrays.keys(), bridge.average, strict=True)
        }
    )
    content = RecordDict({ARRAYS: average, METRICS: MetricRecord({WEIGHT: 1})})
    return SecureRound(Message(content, reply_to=instructions[0]), recording.replies, recording.senders)
