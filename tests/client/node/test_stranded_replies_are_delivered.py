"""A reply no pulled message waits for still reaches the server (`client.node.supernode_loop.deliver_stranded_replies`).

Flower's SuperNode loop is, in `flwr.supernode.start_client_internal`: pull a message; if there was one, send
the replies waiting in the node's state (waiting until there is at least one). The loop below is that loop, over
Flower's own node state and its own `_push_messages`; only the SuperLink (the messages that arrive, the sends)
is stood in for. The case is the one a restarted server met: a reply to a message the node had given up on
was waiting when the new run's first message arrived.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supernode import start_client_internal
from flwr.supernode.nodestate import NodeStateFactory

from fedmeta.client.node.supernode_loop import deliver_stranded_replies
from tests.support.flower_messages import delivered

OLD_RUN, NEW_RUN = 1, 2


class Node:
    """Flower's node state and loop, with a stand-in SuperLink: ``arriving`` messages, ``sent`` replies."""

    def __init__(self) -> None:
        self.state = NodeStateFactory(ObjectStoreFactory()).state()
        self.store = self.state.object_store
        self.arriving: list[Message] = []
        self.sent: list[str] = []

    def pull(self, **kwargs: object) -> int | None:
        """What Flower's pull does with the node state: store the next message, answer its run."""
        if not self.arriving:
            return None
        message = self.arriving.pop(0)
        self.state.store_message(message)
        return message.metadata.run_id

    def reply(self, to: Message, answer: str) -> None:
        """The app's reply, stored as Flower stores a message the node makes itself."""
        content = RecordDict({"answer": ConfigRecord({"text": answer})})
        start_client_internal._insert_message(Message(content, reply_to=to), self.state, self.store)

    def send(self, message: Message, tree: object, runtime: float) -> tuple[set[str], str]:
        self.sent.append(message.content["answer"]["text"])
        return set(), "session"

    def loop_once(self) -> None:
        """One pass of Flower's SuperNode loop (``start_client_internal``, its ``while True``)."""
        pull: Callable[..., int | None] = start_client_internal._pull_and_store_message
        if pull(state=self.state, object_store=self.store) is not None:
            start_client_internal._push_messages(state=self.state, object_store=self.store, send=self.send,
                                                 push_object=lambda *args: None)


@pytest.fixture()
def node(monkeypatch) -> Node:
    node = Node()
    monkeypatch.setattr(start_client_internal, "_pull_and_store_message", node.pull)
    return node


def _restart_with_a_reply_waiting(node: Node) -> Message:
    """A reply to a given-up message of the old run waits; the new run's query arrives; the loop sends the
    old reply (the only one there yet); then the app answers the query. The query, for the test to follow."""
    abandoned = delivered(RecordDict(), "train", dst_node_id=5, message_id="old", run_id=OLD_RUN)
    node.reply(abandoned, "old train reply")
    query = delivered(RecordDict(), "query", dst_node_id=5, message_id="query", run_id=NEW_RUN)
    node.arriving.append(query)
    node.loop_once()
    assert node.sent == ["old train reply"]
    node.reply(query, "query reply")
    return query


def test_without_delivery_flowers_loop_strands_the_reply_of_the_message_it_pulled(node):
    """Flower's loop as it is: the server's query is answered never (until another message comes)."""
    _restart_with_a_reply_waiting(node)
    for _ in range(3):
        node.loop_once()
    assert node.sent == ["old train reply"]


def test_a_pull_that_finds_no_message_sends_the_reply_that_waits(node):
    deliver_stranded_replies()
    _restart_with_a_reply_waiting(node)
    node.loop_once()
    assert node.sent == ["old train reply", "query reply"]
    node.loop_once()  # nothing waits now: the pull answers None and nothing is sent twice
    assert node.sent == ["old train reply", "query reply"]


def test_an_idle_node_with_no_reply_waiting_pulls_as_before(node):
    deliver_stranded_replies()
    assert start_client_internal._pull_and_store_message(state=node.state, object_store=node.store) is None
    node.arriving.append(delivered(RecordDict(), "train", dst_node_id=5, message_id="m", run_id=NEW_RUN))
    assert start_client_internal._pull_and_store_message(state=node.state, object_store=node.store) == NEW_RUN
