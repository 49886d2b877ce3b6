"""Sending messages to hospitals and collecting their replies, without waiting idly.

Flower's `Grid.send_and_receive` sends and then waits for every reply, asking for them every
3 s on a deployed SuperLink. Split in two, the server can send a round's training and do its
own work while the hospitals compute; and replies are asked for every 0.2 s (or the grid's
own `pull_interval`, which a simulation sets to milliseconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid

DEFAULT_REPLY_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Sent:
    """Messages on their way to hospitals whose replies have not been collected yet."""

    messages: list[Message]
    ids: frozenset[str]
    senders: dict[str, int]  # message id -> the node it went to, whose reply answers it
    timeout: float | None  # None: wait for every reply
    deadline: float


def send(grid: Grid, messages: Iterable[Message], timeout: float | None) -> Sent:
    sent = list(messages)
    deadline = time.monotonic() + timeout if timeout is not None else float("inf")
    ids = frozenset(grid.push_messages(sent))  # the grid numbers each message it pushes
    return Sent(sent, ids, {m.metadata.message_id: m.metadata.dst_node_id for m in sent}, timeout, deadline)


def sender(reply: Message, senders: dict[str, int]) -> int:
    """The node a reply answers for. When a hospital's reply arrived without its contents (it
    died uploading them), the grid makes an error reply that names the server as its sender;
    the message it answers names the hospital."""
    return senders.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def collect(grid: Grid, sent: Sent) -> list[Message]:
    """The replies that arrive before the deadline (all of them, if they all do in time).

    A pull can outlast the deadline: Flower's grid waits minutes for the contents of a reply
    whose sender died uploading them. The replies that came meanwhile were in time, so one
    more pull takes them."""
    poll = getattr(grid, "pull_interval", DEFAULT_REPLY_POLL_SECONDS)
    waiting, replies = set(sent.ids), []
    while waiting:
        last = time.monotonic() >= sent.deadline
        arrived = list(grid.pull_messages(waiting))
        replies += arrived
        waiting -= {m.metadata.reply_to_message_id for m in arrived}
        if not waiting or last:
            break
        if time.monotonic() < sent.deadline:
            time.sleep(poll)
    return replies
