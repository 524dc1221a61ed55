"""A message the SuperNode gave up because its run stopped leaves no task behind
(`client.node.supernode_loop.forget_given_up_messages`).

Flower's own pull (`flwr.supernode.start_client_internal._pull_and_store_message`) runs over Flower's node state;
only the SuperLink is stood in for: it hands over a message of a known run and then, as the server stops that
run, answers the object pull with "run not running".
"""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.common.constant import Status, SubStatus
from flwr.supercore.inflatable.inflatable_object import get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run, RunNotRunningException
from flwr.supernode import start_client_internal
from flwr.supernode.nodestate import NodeStateFactory

from fedmeta.client.node.supernode_loop import GIVEN_UP, forget_given_up_messages
from tests.support.flower_messages import delivered

RUN_ID = 3


@pytest.fixture()
def flower_pull(monkeypatch):
    """Flower's pull as it is, restored after the test (a repair wraps it in place)."""
    monkeypatch.setattr(start_client_internal, "_pull_and_store_message", start_client_internal._pull_and_store_message)


def _pull_while_the_run_stops():
    """Flower's pull of one message whose run stops mid-pull: the state, the message and the pull's answer."""
    state = NodeStateFactory(ObjectStoreFactory()).state()
    run = Run.create_empty(RUN_ID)
    run.fab_hash = "bundle"
    state.store_run(run)
    message = delivered(RecordDict({"work": ConfigRecord({"steps": 5})}), "train", dst_node_id=9, run_id=RUN_ID)
    message.metadata.__dict__["_message_id"] = message.object_id  # as the SuperLink names a message

    def run_stopped(run_id: int, object_id: str) -> bytes:
        raise RunNotRunningException

    answer = start_client_internal._pull_and_store_message(
        state=state, object_store=state.object_store, node_config={},
        receive=lambda: (message, get_object_tree(message)), get_run=None, get_fab=None, pull_object=run_stopped,
        confirm_message_received=None, trusted_entities=None)
    return state, message, answer


def _tasks(state):
    return state.get_tasks(run_ids=[RUN_ID])


def test_flowers_pull_leaves_the_message_and_a_task_no_one_can_finish(flower_pull):
    state, message, answer = _pull_while_the_run_stops()
    assert answer is None
    assert message.metadata.message_id in state.msg_store
    (task,) = _tasks(state)
    assert task.status.status == Status.PENDING  # an app would claim it and wait for objects that never come


def test_the_message_its_objects_and_its_task_are_dropped(flower_pull):
    forget_given_up_messages()
    state, message, answer = _pull_while_the_run_stops()
    assert answer is None
    assert message.metadata.message_id not in state.msg_store
    assert state.object_store.get(message.metadata.message_id) is None
    (task,) = _tasks(state)
    assert (task.status.status, task.status.sub_status, task.status.details) == (
        Status.FINISHED, SubStatus.FAILED, GIVEN_UP)
