"""Replies pulled from the SuperLink without waiting on a factory that is gone.

A factory's SuperNode sends a reply in two steps: the message (its metadata and object tree) first, then
the objects that hold its content. The SuperLink lists a reply as soon as its message arrived, and
Flower's `HttpGrid.pull_messages` then pulls each listed reply's objects, trying one that is not there
yet again and again for up to two hours (``PULL_MAX_TIME`` in ``flwr/supercore/constant.py``). A factory
killed between the two steps leaves a reply whose objects never come: the server's round stalled until
the SuperLink's object-push session expired (215 s instead of 54 s, once), whatever the round's timeout.

`pull_replies` pulls as Flower's grid does, but tries an object that is not there yet only while its
sender is still connected (it heartbeats: gone within 20 s, `client.node.supernode_timings`) and the
round's deadline has not passed. Otherwise that reply becomes an error reply, as the SuperLink makes for
a node it lost, and the round goes on without it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from logging import ERROR
from typing import cast

import httpx
from flwr.app import Message, Metadata
from flwr.app.error import Error
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import PullAppMessagesRequest  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore import log
from flwr.supercore.constant import SYSTEM_MESSAGE_TYPE
from flwr.supercore.date import now
from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectPullError,
    ObjectUnavailableError,
    inflate_object_from_contents,
    pull_objects,
)
from flwr.superlink.grid.http_grid import ERROR_MESSAGE_PULL_MESSAGES_PAYLOAD_TOO_LARGE, HttpGrid

from fedmeta.common.runtime.flower_pin import require_flower

__all__ = ["ONLINE_CHECK_S", "SENDER_LOST", "OnlineNodes", "pull_replies"]

ONLINE_CHECK_S = 1.0  # how stale the list of connected nodes may be while an upload is awaited
RETRY_S = 0.2  # the first wait before an object not there yet is tried again (Flower: 1 s)
RETRY_CAP_S = 1.0  # the longest (Flower: 10 s): a lost sender is noticed within about a second
SENDER_LOST = "went offline before its upload finished"


class OnlineNodes:
    """The nodes the SuperLink calls connected, asked again at most every `ONLINE_CHECK_S`."""

    def __init__(self, grid: Grid, clock: Callable[[], float] = time.monotonic) -> None:
        self._grid = grid
        self._clock = clock
        self._nodes: set[int] = set()
        self._asked_at: float | None = None

    def __contains__(self, node_id: object) -> bool:
        if self._asked_at is None or self._clock() - self._asked_at >= ONLINE_CHECK_S:
            self._nodes = set(self._grid.get_node_ids())
            self._asked_at = self._clock()
        return node_id in self._nodes


@functools.cache
def _require_flower_once() -> None:
    """The Flower check, once a process: reading the installed version costs 0.3 ms, and replies are pulled up
    to a hundred times a second. (A failed check is not cached: it raises again.)"""
    require_flower("the server's pull of replies")


def _unavailable(grid: HttpGrid, reply_to: str, reason: str) -> Message:
    """The error reply Flower's grid makes for a reply whose objects cannot be pulled (from the SuperLink)."""
    node = grid.node.node_id
    metadata = Metadata(run_id=grid.run.run_id, message_id="", src_node_id=node, dst_node_id=node,
                        message_type=SYSTEM_MESSAGE_TYPE, group_id="", ttl=0, reply_to_message_id=reply_to,
                        created_at=now().timestamp())
    return make_message(metadata=metadata, error=Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason=reason))


def pull_replies(grid: Grid, message_ids: Iterable[str], *, deadline: float | None) -> list[Message]:
    """The replies to ``message_ids`` the SuperLink holds (`Grid.pull_messages`); one whose upload stalls
    while its sender is gone, or past ``deadline`` (`time.monotonic`), is an error reply saying so."""
    if not isinstance(grid, HttpGrid):  # the simulation's grid holds whole messages
        return list(grid.pull_messages(message_ids))
    _require_flower_once()
    client = grid._runtime_client  # the grid's own connection, as its pull_messages uses it
    run_id = grid.run.run_id
    try:
        listed = client.PullMessages(PullAppMessagesRequest(message_ids=list(message_ids)))
    except httpx.HTTPStatusError as error:
        if error.response.status_code != httpx.codes.REQUEST_ENTITY_TOO_LARGE:
            raise
        log(ERROR, ERROR_MESSAGE_PULL_MESSAGES_PAYLOAD_TOO_LARGE)
        return []
    online = OnlineNodes(grid)
    pull_object = make_pull_object_fn_protobuf(pull_object_protobuf=client.PullObject, node=grid.node, run_id=run_id)
    replies: list[Message] = []
    for proto, tree in zip(listed.messages_list, listed.message_object_trees, strict=True):
        sender, reply_to = proto.metadata.src_node_id, proto.metadata.reply_to_message_id

        def pull_while_sender_connected(object_id: str, sender: int = sender) -> bytes:
            try:
                return pull_object(object_id)
            except ObjectUnavailableError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise ObjectPullError(object_id, "the round's timeout passed before its upload finished") from None
                if sender not in online:
                    raise ObjectPullError(object_id, f"node {sender} {SENDER_LOST}") from None
                raise

        try:
            contents = pull_objects([node.object_id for node in iterate_object_tree(tree)], pull_while_sender_connected,
                                    initial_backoff=RETRY_S, backoff_cap=RETRY_CAP_S, max_tries_per_object=None)
        except ObjectPullError as error:
            replies.append(_unavailable(grid, reply_to, f"the reply's objects are unavailable: {error}"))
            continue
        message_id = proto.metadata.message_id
        client.ConfirmMessageReceived(
            ConfirmMessageReceivedRequest(node=grid.node, run_id=run_id, message_object_id=message_id))
        message = cast(Message, inflate_object_from_contents(message_id, contents))
        message.metadata.__dict__["_message_id"] = message_id  # as Flower's grid sets it
        replies.append(message)
    return replies
