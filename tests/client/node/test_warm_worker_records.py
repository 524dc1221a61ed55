"""The warm worker's task record: what a dead worker leaves for `fedmeta client` to answer, and what it leaves
to Flower (`client.node.warm_worker`). Answering over a real SuperNode is tested in
tests/end_to_end/test_warm_worker.py."""

from __future__ import annotations

import pytest

from fedmeta.client.node import supernode_timings
from fedmeta.client.node.warm_worker import TaskRecord, WarmWorker, answer_dropped_task
from fedmeta.common.runtime.flower_pin import FlowerInternalsChanged


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
