"""The central team's view of a run: every round's metrics in TensorBoard beside metrics.jsonl (a resumed
run's redone rounds replace the first process's), and `fedmeta status`, from status.json, saying how a
run stands, which factories are connected and what went wrong last."""

from __future__ import annotations

import json
import logging
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from fedmeta.server import RunDirectory
from fedmeta.server.run_view import MAX_WARNING_CHARS, RunView
from fedmeta.server.status import describe_run, read_status
from fedmeta.simulations import run_federated_simulation
from fedmeta.simulations.cli import app

pytestmark = pytest.mark.usefixtures("shared_ray")  # the simulations join the session's Ray

SMALL = {"family": "quality", "num-factories": 4, "num-held-out": 1, "eval-shots": "5", "eval-tasks": 2,
         "local-steps": 1, "device": "cpu", "algorithm": "fomaml", "min-train-nodes": 2,
         "inject-faults": "0:crash"}  # factory 0 fails every round: a warning to show


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """Two rounds; then round 2's checkpoint is lost and the run resumes after round 1 for three rounds."""
    root = tmp_path_factory.mktemp("view")
    run_federated_simulation({**SMALL, "num-server-rounds": 2, "run-dir": str(root)})
    run = RunDirectory(root / "fomaml")
    first_two = run.read_metrics()
    run.checkpoint_path(2).unlink()
    run_federated_simulation({**SMALL, "num-server-rounds": 3, "run-dir": str(root), "resume": True})
    return root, first_two


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_every_rounds_metrics_once_with_the_redone_rounds_of_a_resumed_run(resumed_run):
    root, first_two = resumed_run
    records = RunDirectory(root / "fomaml").read_metrics()
    assert [record["round"] for record in records] == [1, 2, 3]
    assert records[1]["seconds"] != first_two[1]["seconds"]  # round 2 ran again after the resume
    scalars = _scalars(root / "fomaml")
    for name in ("train/replies", "train/rejected", "train/query-loss", "seconds"):
        expected = [(record["round"], record[name]) for record in records]
        assert [step for step, _ in scalars[name]] == [1, 2, 3], name
        assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(scalars[name], expected, strict=True))
    # The first process evaluated after its last round, 2; the resumed one redid round 2 without evaluating
    # (not its last round): the stale round-2 evaluation is gone from TensorBoard as from metrics.jsonl.
    assert "eval/loss-k5" in first_two[1] and "eval/loss-k5" not in records[1]
    assert [step for step, _ in scalars["eval/loss-k5"]] == [3]


def test_status_names_the_finished_round_the_factories_and_the_failed_one(resumed_run):
    root, _ = resumed_run
    status = read_status(root / "fomaml")
    assert (status["state"], status["round"], status["rounds"]) == ("finished", 3, 3)
    assert [f["name"] for f in status["factories"] if f["role"] == "train"] == [f"quality-0{i}" for i in range(4)]
    assert status["last_round"]["train/rejected"] == 1.0
    assert "factory quality-00" in status["warnings"][-1]["message"]
    assert "injected crash on partition 0" in status["warnings"][-1]["message"]
    assert all(len(w["message"]) <= MAX_WARNING_CHARS and "\n" not in w["message"] for w in status["warnings"])

    result = CliRunner().invoke(app, ["status", "--state", str(root)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("fomaml: finished, round 3 of 3, updated ")
    assert "4 training (quality-00, quality-01, quality-02, quality-03), 1 evaluating (quality-held-out-00)" in lines[1]
    assert lines[2].startswith("  round 3: replies 3, rejected 1, query loss ")
    assert "injected crash on partition 0" in result.output


def test_a_failed_run_says_why_and_a_run_whose_process_died_is_not_reported_running(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])  # as in the server's process: no handler configured
    run = RunDirectory(tmp_path / "maml")
    with pytest.raises(RuntimeError), RunView(run, "maml", rounds=5, first_round=1) as view:
        view.factories([("plant-a", "train"), ("plant-b", "train")])
        strategy_log = logging.getLogger("fedmeta.server.strategy.fedmeta")
        strategy_log.warning("delta of factory plant-b from node 7 left out: NaN")
        raise RuntimeError("only 1 training factories are connected; min_train_nodes is 2")
    # Still printed, as Python prints a warning nobody configured a handler for (the server's log shows it).
    assert "delta of factory plant-b from node 7 left out: NaN" in capsys.readouterr().err
    assert not logging.getLogger("fedmeta").handlers  # the view's handlers go with it
    status = read_status(tmp_path / "maml")
    assert status["state"] == "failed" and "only 1 training factories" in status["error"]
    assert status["warnings"][-1]["message"] == "delta of factory plant-b from node 7 left out: NaN"
    assert describe_run("maml", status)[0].startswith("maml: failed: RuntimeError: only 1 training factories")

    gone = {**status, "state": "running", "pid": 2**22 + 12345}  # above Linux's largest process id
    assert "ended without finishing (its process 4206649 is gone; last state running)" in describe_run("m", gone)[0]


def test_status_refuses_a_folder_without_runs_and_a_corrupt_status_by_name(tmp_path):
    result = CliRunner().invoke(app, ["status", "--state", str(tmp_path)])
    assert result.exit_code == 1 and "no run under" in result.output and "status.json" in result.output
    (tmp_path / "status.json").write_text("{not json")
    result = CliRunner().invoke(app, ["status", "--state", str(tmp_path)])
    assert result.exit_code == 1 and "status.json is not valid JSON" in result.output
    (tmp_path / "status.json").write_text(json.dumps({"state": "running"}))
    with pytest.raises(ValueError, match="is not a run status"):
        read_status(tmp_path)
