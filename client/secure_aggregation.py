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

from flwr.app import Array, ArrayRecord, Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters, fitres_to_recorddict


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda m, c: _in_project_layout(m, c, call_next))


def _in_project_layout(msg: Message, context: Context, train: ClientAppCallable) -> Message:
    config = msg.content["fitins.config"]
    tensors = arrayrecord_to_parameters(msg.content["fitins.parameters"], keep_input=True).tensors
    msg.content["config"] = config
    msg.content["arrays"] = ArrayRecord(
        {name: Array(bytes_to_ndarray(t)) for name, t in zip(config["array-names"], tensors, strict=True)}
    )
    reply = train(msg, context)
    if reply.has_error():  # e.g. a spent privacy budget: the protocol counts this hospital as dropped
        raise RuntimeError(reply.error.reason)
    fit = FitRes(
        Status(Code.OK, ""),
        arrayrecord_to_parameters(reply.content["arrays"], keep_input=True),
        int(reply.content["metrics"]["num-examples"]),
        {},
    )
    for key, record in fitres_to_recorddict(fit, keep_input=True).items():
        reply.content[key] = record
    return reply
