"""Secure aggregation at a hospital: Flower's SecAgg+ client mod, for that protocol's messages.

A round with secure aggregation (server/secure_aggregation.py) sends each hospital four
train messages: key set-up, key sharing, masking and unmasking. Flower's `secaggplus_mod`
answers them and calls the hospital's ordinary train handler once, while masking; the
weights it returns are then quantized and masked before they leave, and only the masked
vector is sent. The reply's other records (number of stays, metrics, privacy ledger) go
as in any round. Train messages of runs without secure aggregation pass straight through.

The protocol speaks Flower's legacy `FitIns`/`FitRes` layout; `_in_project_layout` gives the
train handler the message it always gets and the mod the layout it reads.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable

from fedicu.shared import compat
from fedicu.shared.contract import ARRAYS, CONFIG, METRICS, WEIGHT


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if compat.secagg_configs_record() not in msg.content.config_records:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda m, c: _in_project_layout(m, c, call_next))


def _in_project_layout(msg: Message, context: Context, train: ClientAppCallable) -> Message:
    msg.content[CONFIG], msg.content[ARRAYS] = compat.legacy_fit_instructions(msg)
    reply = train(msg, context)
    if reply.has_error():  # e.g. a spent privacy budget: the protocol counts this hospital as dropped
        raise RuntimeError(reply.error.reason)
    arrays, metrics = reply.content.array_records[ARRAYS], reply.content.metric_records[METRICS]
    compat.add_legacy_fit_reply(reply, arrays, int(metrics[WEIGHT]))  # type: ignore[arg-type]  # an int, by the contract
    return reply
