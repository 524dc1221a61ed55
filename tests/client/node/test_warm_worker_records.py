"""The warm worker's task record: what a dead worker leaves for `fedmeta client` to answer, and what it leaves
to Flower (`client.node.warm_worker`); a task's heartbeat stops before its output is pushed, so no heartbeat
reaches the SuperNode after the task ended (Flower's sender answers that refusal with SIGINT). Answering over a
real SuperNode is tested in tests/end_to_end/test_warm_worker.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flwr.app import Context, Message, RecordDict

import fedmeta.client.node.warm_worker as warm_worker
from fedmeta.client.node import supernode_timings
from fedmeta.client.node.warm_worker import TaskRecord, WarmWorker, answer_dropped_task
from fedmeta.common.runtime.flower_pin import FlowerInternalsChanged
from tests.support.flower_messages import delivered


def test_a_record_reads_back_as_written_and_replaces_the_previous_one_whole(tmp_path):
    path = tmp_path / "task.json"
    TaskRecord("token-1").write(path)
    held = TaskRecord("token-1", b"\x00\x01message", "train", run_id=7, node_id=9)
    held.write(path)
    assert TaskRecord.read(path) == held
    assert [p.name for p in tmp_path.iterdir()] == ["task.json"]  # no partial file left beside it


def test_an_unreadable_record_is_refused_by_name(tmp_path):
    path = tmp_path / "task.json"
    path.write_text('{"token": "t"')
    with pytest.raises(ValueError, match=r"task record .*task\.json is unreadable"):
        TaskRecord.read(path)


def test_no_record_means_nothing_was_dropped(tmp_path):
    assert answer_dropped_task(tmp_path / "task.json", "127.0.0.1:1", "crashed") is None


@pytest.mark.parametrize(
    "record",
    [TaskRecord("claimed, not pulled"), TaskRecord("uploading", b"m", "train", 1, 2, replying=True)],
    ids=["claimed-not-pulled", "reply-being-uploaded"],
)
def test_tasks_flower_answers_itself_are_left_to_it_and_the_record_is_removed(tmp_path, record):
    """Nothing is sent (the address is unreachable, so a send would raise): a task not pulled yet goes back to
    Flower's queue when its claim expires; a reply half uploaded is the task's answer, and a second would race it."""
    path = tmp_path / "task.json"
    record.write(path)
    assert answer_dropped_task(path, "127.0.0.1:1", "crashed") is None
    assert not path.exists()


def test_the_worker_refuses_another_flower_by_name(monkeypatch, tmp_path):
    monkeypatch.setattr(supernode_timings.importlib.metadata, "version", lambda name: "1.43.0")
    with pytest.raises(FlowerInternalsChanged, match=r"the warm ClientApp worker: written for flwr 1\.42\.0"):
        WarmWorker("127.0.0.1:1", tmp_path / "task.json")


def test_a_tasks_heartbeat_stops_before_its_output_is_pushed(monkeypatch, tmp_path):
    events: list[str] = []

    class Heartbeat:
        def __init__(self, send) -> None:
            self.is_running = False

        def start(self) -> None:
            self.is_running = True
            events.append("heartbeat started")

        def stop(self) -> None:
            self.is_running = False
            events.append("heartbeat stopped")

    message = delivered(RecordDict(), "train", 3)
    context = Context(run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={})
    fab = SimpleNamespace(content=b"", hash_str="h")
    monkeypatch.setattr(warm_worker, "HeartbeatSender", Heartbeat)
    monkeypatch.setattr(warm_worker, "_runtime_client", lambda *args: SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(warm_worker, "make_task_heartbeat_fn_http", lambda client: None)
    monkeypatch.setattr(warm_worker, "pull_task_input",
                        lambda client: (message, context, SimpleNamespace(fab_id="f", fab_version="1"), fab))
    monkeypatch.setattr(warm_worker, "push_message", lambda client, reply, context: events.append("reply pushed"))
    monkeypatch.setattr(warm_worker, "push_task_output", lambda **fields: events.append("output pushed"))
    worker = WarmWorker.__new__(WarmWorker)  # not its constructor: it adjusts Flower's internals for the process
    worker.address, worker.record_path = "127.0.0.1:1", tmp_path / "task.json"
    worker._client_app = lambda *args: lambda message, context: Message(RecordDict(), reply_to=message)
    assert worker.run_task("token") == warm_worker.SubStatus.COMPLETED
    assert events == ["heartbeat started", "reply pushed", "heartbeat stopped", "output pushed"]
