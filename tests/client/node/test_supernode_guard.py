"""The SuperNode's app guard (`client.node.supernode`): a run whose bundle is not the installed app gets an error
reply naming the run, in Flower's own node state, before anything of it is stored or any task exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import ErrorCode
from flwr.supercore.fab import Fab
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supernode import start_client_internal
from flwr.supernode.nodestate import NodeStateFactory

from fedmeta.client.node.supernode import app_refusal, guard_runs
from fedmeta.client.rounds.policy import POLICY_KEY
from fedmeta.common.federation.app_identity import installed_version
from fedmeta.server import stage_app
from tests.support.flower_messages import delivered

RUN_ID = 7


@pytest.fixture()
def guarded(monkeypatch):
    """Flower's SuperNode pull with the guard, undone after the test."""
    monkeypatch.setattr(start_client_internal, "_pull_and_store_message", start_client_internal._pull_and_store_message)
    guard_runs()
    return start_client_internal._pull_and_store_message


def _pull(pull, fab_content: bytes, node_config: dict) -> tuple[int | None, object]:
    state = NodeStateFactory(ObjectStoreFactory()).state()
    store = ObjectStoreFactory().store()
    message = delivered(RecordDict(), "train", dst_node_id=1, run_id=RUN_ID)
    fab = Fab("hash", fab_content, {})
    run = Run.create_empty(RUN_ID)
    answer = pull(state=state, object_store=store, node_config=node_config,
                  receive=lambda: (message, None), get_run=lambda run_id: run, get_fab=lambda fab_hash, run_id: fab,
                  pull_object=None, confirm_message_received=None, trusted_entities=None)
    return answer, state


def test_a_foreign_bundle_is_answered_with_an_error_naming_the_run_and_nothing_is_stored(guarded):
    answer, state = _pull(guarded, b"not a bundle", {"factory": "plant-a"})
    assert answer == RUN_ID  # Flower then pushes the reply
    assert state.get_run(RUN_ID) is None  # neither the run nor its bundle was stored: no task can start
    (reply,) = state.get_messages_legacy(is_reply=True)
    assert reply.error.code == ErrorCode.INVALID_FAB
    assert reply.error.reason.startswith(f"factory plant-a refused run {RUN_ID}: its app is not the one installed "
                                         "here: it is not a readable app bundle")


def test_the_policy_pin_is_read_for_each_new_run(tmp_path):
    bundle = build_fab_from_disk(stage_app(tmp_path / "app", {"num-server-rounds": 1}))
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"app_version": installed_version()}))
    assert app_refusal(bundle, {POLICY_KEY: str(policy)}) is None
    policy.write_text(json.dumps({"app_version": "0.0.9"}))
    assert "this factory's policy pins app_version 0.0.9" in app_refusal(bundle, {POLICY_KEY: str(policy)})
    policy.write_text("{")
    assert "is not valid JSON" in app_refusal(bundle, {POLICY_KEY: str(policy)})  # fails closed
    assert app_refusal(bundle, {POLICY_KEY: str(Path(tmp_path / "gone.json"))}) == (
        f"policy file {str(tmp_path / 'gone.json')!r} not found")
