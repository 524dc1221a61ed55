"""A message whose ClientApp task ended without a reply is answered with an error, and the SuperNode loop goes on
(`client.node.supernode_loop.answer_abandoned_messages`).

Flower's own wait for a reply (`flwr.supernode.start_client_internal._push_messages`) runs over Flower's node
state; only the SuperLink (the sends) and the app process are stood in for. The case is the soak's: the warm
worker's ``PullTaskInput`` activated its task but its answer was lost, the retry got "412 Failed to start task",
and the worker failed the task without ever taking the message.
"""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore.constant import TaskType
from flwr.supercore.inflatable.inflatable_object import get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supernode import start_client_internal
from flwr.supernode.nodestate import NodeStateFactory

from fedmeta.client.node.supernode_loop import ABANDONED, answer_abandoned_messages
from tests.support.flower_messages import delivered

RUN_ID = 4
FAILED_START = "<class 'httpx.HTTPStatusError'>:<'Client error '412 Precondition Failed''>"
LOOKS = 20  # looks for a reply before the test calls the loop stuck (Flower's loop looks forever)


class StillWaiting(Exception):
    """The loop was still waiting for a reply after `LOOKS` looks."""


class Node:
    """Flower's node state with one train message pulled and its task made, as Flower's pull leaves them."""

    def __init__(self) -> None:
        self.state = NodeStateFactory(ObjectStoreFactory()).state()
        self.store = self.state.object_store
        run = Run.create_empty(RUN_ID)
        run.fab_hash = "bundle"
        self.state.store_run(run)
        self.message = delivered(RecordDict({"work": ConfigRecord({"steps": 5})}), "train", dst_node_id=9,
                                 run_id=RUN_ID)
        self.message.metadata.__dict__["_message_id"] = self.message.object_id  # as the SuperLink names it
        self.task_id = self.state.create_task(task_type=TaskType.CLIENT_APP, run_id=RUN_ID, fab_hash="bundle")
        self.store.preregister(RUN_ID, get_object_tree(self.message))
        self.state.store_message(self.message)
        self.sent: list[Message] = []
        self.looks = 0
        self.on_look = lambda: None  # what the app does while the loop waits

    def sleep(self, seconds: float) -> None:
        """The loop's pause between looks for a reply."""
        self.looks += 1
        if self.looks > LOOKS:
            raise StillWaiting
        self.on_look()

    def send(self, message: Message, tree: object, runtime: float) -> tuple[set[str], str]:
        self.sent.append(message)
        return set(), "session"

    def push(self) -> None:
        """Flower's wait for the reply to the message it pulled, and its send."""
        start_client_internal._push_messages(state=self.state, object_store=self.store, send=self.send,
                                             push_object=lambda *args: None)

    def fail_before_taking_the_message(self) -> None:
        """The worker's side in the soak: claimed and activated the task, then failed it on the 412."""
        self.state.claim_task(self.task_id)
        assert self.state.activate_task(self.task_id)
        assert self.state.finish_task(self.task_id, sub_status=SubStatus.FAILED, details=FAILED_START)


@pytest.fixture()
def node(monkeypatch) -> Node:
    node = Node()
    monkeypatch.setattr(start_client_internal, "_push_messages", start_client_internal._push_messages)
    monkeypatch.setattr(start_client_internal, "time", node)
    return node


def test_flowers_loop_waits_forever_for_a_task_that_ended_without_taking_its_message(node):
    node.fail_before_taking_the_message()
    with pytest.raises(StillWaiting):
        node.push()
    assert node.sent == []


def test_the_message_is_answered_with_the_tasks_failure_and_forgotten(node):
    answer_abandoned_messages()
    node.fail_before_taking_the_message()
    node.push()
    (reply,) = node.sent
    assert reply.metadata.reply_to_message_id == node.message.metadata.message_id
    assert reply.error.code == ErrorCode.CLIENT_APP_CRASHED
    assert reply.error.reason == f"{ABANDONED}: {FAILED_START}"
    assert node.state.msg_store == {}
    assert node.store.get(node.message.metadata.message_id) is None


def test_a_running_task_is_waited_for_and_its_own_reply_sent(node):
    answer_abandoned_messages()

    def app_replies_on_the_third_look() -> None:
        if node.looks == 3:
            reply = Message(RecordDict({"answer": ConfigRecord({"text": "trained"})}), reply_to=node.message)
            start_client_internal._insert_message(reply, node.state, node.store)
            node.state.finish_task(node.task_id, sub_status=SubStatus.COMPLETED, details="")

    node.state.claim_task(node.task_id)
    node.state.activate_task(node.task_id)
    node.on_look = app_replies_on_the_third_look
    node.push()
    (reply,) = node.sent
    assert not reply.has_error() and reply.content["answer"]["text"] == "trained"
    assert node.looks == 3
