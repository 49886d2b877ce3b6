"""One exchange with the hospitals: send, wait up to the round timeout, read the replies.

Replies are read through the contract and sorted by hospital (a fixed order keeps aggregation
reproducible). A hospital that sent an error, a reply that breaks the contract, nothing in
time, or (`Replies.without`) weights the server rejects is a failure with its reason; fewer
than `minimum` good replies stop the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Generic, TypeVar

from flwr.app import Message
from flwr.common import log
from flwr.serverapp import Grid

from fedicu.server.messaging import Sent, collect, send, sender
from fedicu.shared.contract import CONTRACT_REFUSAL, ContractError, ContractMismatch, Reply

R = TypeVar("R", bound=Reply)


class TooFewReplies(RuntimeError):
    """Fewer hospitals replied than the run needs."""


@dataclass(frozen=True)
class Replies(Generic[R]):
    messages: dict[str, Message]  # hospital -> its reply message, as Flower's strategies read it
    replies: dict[str, R]  # hospital -> the same reply, read through the contract
    failures: dict[str, str]  # hospital (or node) -> what went wrong
    rejected: dict[str, R] = field(default_factory=dict)  # replies that came but were refused: DP-SGD spent

    def without(self, rejected: dict[str, str], stage: str, minimum: int) -> Replies[R]:
        """These replies but the `rejected` ones (hospital -> why), which become failures."""
        for who, reason in rejected.items():
            log(WARNING, "fedicu: %s: %s failed: %s", stage, who, reason)
        kept = [h for h in self.replies if h not in rejected]
        failures = {**self.failures, **rejected}
        _enough(len(kept), minimum, stage, failures)
        refused = {h: self.replies[h] for h in rejected if h in self.replies}
        return Replies({h: self.messages[h] for h in kept}, {h: self.replies[h] for h in kept}, failures,
                       {**self.rejected, **refused})  # fmt: skip


def exchange(
    grid: Grid, messages: Iterable[Message], kind: type[R], timeout: float, stage: str, minimum: int,
    names: dict[int, str],
) -> Replies[R]:  # fmt: skip
    """Send, wait up to `timeout`, and read the replies as `kind`."""
    return receive(grid, send(grid, messages, timeout), kind, stage, minimum, names)


def receive(grid: Grid, sent: Sent, kind: type[R], stage: str, minimum: int, names: dict[int, str]) -> Replies[R]:
    """Wait until every hospital replied or the timeout passed, and read the replies as `kind`."""
    missing = "no reply" if sent.timeout is None else f"no reply within {sent.timeout:g} s"
    return sort_replies(collect(grid, sent), sent.messages, kind, missing, stage, minimum, names, sent.senders)


def sort_replies(
    received: Iterable[Message], sent: list[Message], kind: type[R], missing: str, stage: str, minimum: int,
    names: dict[int, str], senders: dict[str, int],
) -> Replies[R]:  # fmt: skip
    """The replies by hospital (`senders`: message id -> node, as `Sent` has it); errors, broken
    replies and missing ones become failures."""
    messages, replies, failures, answered = {}, {}, {}, set()
    for msg in received:
        node = sender(msg, senders)
        answered.add(node)
        who = names.get(node, f"node {node}")
        if msg.has_error():
            if msg.error.code == CONTRACT_REFUSAL:
                raise RuntimeError(f"{stage}: {who} refused the server: {msg.error.reason}")
            failures[who] = str(msg.error.reason)
            continue
        try:
            reply = kind.from_content(msg.content)
        except ContractMismatch as mismatch:
            raise RuntimeError(f"{stage}: {who}: {mismatch}") from None
        except ContractError as broken:
            failures[who] = f"broken reply: {broken}"
            continue
        if reply.hospital in replies:
            raise RuntimeError(
                f"{stage}: two SuperNodes both hold hospital {reply.hospital!r}; give each its own node config hospital"
            )
        messages[reply.hospital], replies[reply.hospital] = msg, reply
    for msg in sent:
        node = msg.metadata.dst_node_id
        if node not in answered:
            failures[names.get(node, f"node {node}")] = missing
    for who, reason in failures.items():
        log(WARNING, "fedicu: %s: %s failed: %s", stage, who, reason)
    _enough(len(replies), minimum, stage, failures)
    order = sorted(replies)
    return Replies({h: messages[h] for h in order}, {h: replies[h] for h in order}, failures)


def _enough(replied: int, minimum: int, stage: str, failures: dict[str, str]) -> None:
    if replied < minimum:
        details = "; ".join(f"{who}: {reason}" for who, reason in failures.items())
        raise TooFewReplies(f"{stage}: only {replied} hospital(s) replied, fewer than the minimum {minimum}. {details}")
