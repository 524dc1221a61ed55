"""Tests for server.checkpoint: exact round trips, atomic never-overwriting saves, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from fedmeta.server import Checkpoint, CheckpointError, RunDirectory
from fedmeta.server.strategy import OuterOptimizer, OuterOptimizerConfig


def params() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "body.weight": torch.randn(4, 3, generator=generator),
        "head.bias": torch.randn(2, generator=generator, dtype=torch.float64),
        "lr.body.weight": torch.full((4, 3), 0.01),
    }


def save(run: RunDirectory, round: int) -> Path:
    optimizer = {"state/head.bias/step": torch.tensor(float(round))}
    return run.save_checkpoint(round, params(), optimizer, {"config": '{"rounds": 5}'})


def test_round_trip_is_exact(tmp_path):
    run = RunDirectory(tmp_path)
    weights = params()
    weights["strided"] = torch.arange(12.0).reshape(3, 4).t()  # non-contiguous view
    optimizer = {"state/head.bias/exp_avg": torch.randn(2, dtype=torch.float64)}
    metadata = {"config": json.dumps({"lr": 0.1}), "outer_optimizer": '{"kind": "adam"}'}
    path = run.save_checkpoint(3, weights, optimizer, metadata)
    assert path == tmp_path / "checkpoints" / "round-000003.safetensors"

    loaded = run.load_checkpoint()
    assert isinstance(loaded, Checkpoint)
    assert loaded.round == 3
    assert loaded.metadata == metadata
    for saved, restored in ((weights, loaded.params), (optimizer, loaded.optimizer_tensors)):
        assert set(restored) == set(saved)
        for name, tensor in saved.items():
            assert restored[name].dtype == tensor.dtype
            assert torch.equal(restored[name], tensor), name


def test_outer_optimizer_resumes_exactly_through_a_checkpoint(tmp_path):
    config = OuterOptimizerConfig("adam", lr=0.05)
    deltas = [{name: 0.1 * torch.ones_like(t) * k for name, t in params().items()} for k in (1, 2)]
    continuous = OuterOptimizer(params(), config)
    continuous.step(deltas[0])
    expected = continuous.step(deltas[1])

    run = RunDirectory(tmp_path)
    first = OuterOptimizer(params(), config)
    run.save_checkpoint(1, first.step(deltas[0]), first.state_dict(), first.metadata())
    checkpoint = run.load_checkpoint()
    resumed = OuterOptimizer(checkpoint.params, config)
    resumed.load_state_dict(checkpoint.optimizer_tensors, checkpoint.metadata)
    result = resumed.step(deltas[1])
    for name in expected:
        assert torch.equal(result[name], expected[name]), name


def test_latest_round_picks_the_highest(tmp_path):
    run = RunDirectory(tmp_path)
    assert run.latest_round() is None
    for round in (2, 10, 7):
        save(run, round)
    (run.checkpoints_dir / "notes.txt").write_text("not a checkpoint")
    (run.checkpoints_dir / "round-99.safetensors").write_text("not our name")
    assert run.latest_round() == 10
    assert run.load_checkpoint().round == 10
    assert run.load_checkpoint(7).optimizer_tensors["state/head.bias/step"].item() == 7


def test_no_temporary_files_remain_after_saving(tmp_path):
    run = RunDirectory(tmp_path)
    save(run, 0)
    save(run, 1)
    run.write_config({"rounds": 2})
    run.append_metrics({"round": 1, "loss": 0.5})
    run.truncate_metrics_after(0)
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == [
        "round-000000.safetensors",
        "round-000001.safetensors",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints",
        "config.json",
        "metrics.jsonl",
    ]


def test_crash_while_writing_leaves_no_file(tmp_path, monkeypatch):
    def crash(tensors, filename, metadata):
        Path(filename).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    run = RunDirectory(tmp_path)
    save(run, 1)
    monkeypatch.setattr("fedmeta.server.checkpoint.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save(run, 2)
    assert [p.name for p in run.checkpoints_dir.iterdir()] == ["round-000001.safetensors"]
    assert run.load_checkpoint().round == 1


def test_reserved_metadata_keys_are_refused(tmp_path):
    run = RunDirectory(tmp_path)
    with pytest.raises(ValueError, match=r"metadata keys \['round'\] are reserved"):
        run.save_checkpoint(1, params(), {}, {"round": "5"})
    assert run.latest_round() is None


def test_refuses_to_overwrite_a_saved_round(tmp_path):
    run = RunDirectory(tmp_path)
    path = save(run, 4)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"round-000004\.safetensors.*not overwriting"):
        run.save_checkpoint(4, {"other": torch.zeros(1)}, {}, {})
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: b"this is not a safetensors file at all",  # garbage
        lambda data: b"",  # empty
        lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]),  # one flipped data byte
    ],
    ids=["truncated", "garbage", "empty", "flipped-byte"],
)
def test_corrupt_checkpoint_is_reported_and_left_untouched(tmp_path, damage):
    run = RunDirectory(tmp_path)
    path = save(run, 1)
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match=r"round-000001\.safetensors") as error:
        run.load_checkpoint()
    assert error.value.path == path
    assert path.read_bytes() == damaged


def test_foreign_safetensors_file_is_reported(tmp_path):
    run = RunDirectory(tmp_path)
    path = run.checkpoint_path(1)
    path.parent.mkdir()
    save_file({"weights": torch.zeros(1)}, path, metadata={"round": "1"})
    with pytest.raises(CheckpointError, match=r"round-000001\.safetensors: .*sha256"):
        run.load_checkpoint()


def test_missing_checkpoints_are_errors(tmp_path):
    run = RunDirectory(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoints saved"):
        run.load_checkpoint()
    save(run, 1)
    with pytest.raises(CheckpointError, match=r"round-000002\.safetensors: no checkpoint"):
        run.load_checkpoint(2)


def test_config_is_written_once_and_not_silently_replaced(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"config\.json: does not exist"):
        run.read_config()
    run.write_config({"rounds": 5, "outer": {"kind": "adam"}})
    run.write_config({"outer": {"kind": "adam"}, "rounds": 5})  # same config: fine
    with pytest.raises(CheckpointError, match=r"config\.json: differs"):
        run.write_config({"rounds": 6})
    assert run.read_config()["rounds"] == 5
    run.write_config({"rounds": 6}, overwrite=True)
    assert run.read_config() == {"rounds": 6}


def test_metrics_append_read_and_truncate(tmp_path):
    run = RunDirectory(tmp_path)
    assert run.read_metrics() == []
    for round in (1, 2, 3):
        run.append_metrics({"round": round, "loss": 1.0 / round, "phase": "fit"})
    assert [r["round"] for r in run.read_metrics()] == [1, 2, 3]
    assert run.read_metrics()[1] == {"round": 2, "loss": 0.5, "phase": "fit"}

    assert run.truncate_metrics_after(1) == 2
    assert run.read_metrics() == [{"round": 1, "loss": 1.0, "phase": "fit"}]
    assert run.truncate_metrics_after(1) == 0
    run.append_metrics({"round": 2, "loss": 0.25})
    assert [r["round"] for r in run.read_metrics()] == [1, 2]


def test_truncate_drops_a_line_torn_by_a_crash(tmp_path):
    run = RunDirectory(tmp_path)
    run.append_metrics({"round": 1, "loss": 1.0})
    with run.metrics_path.open("a") as file:
        file.write('{"round": 2, "lo')
    with pytest.raises(CheckpointError, match="line 2 is not valid JSON"):
        run.read_metrics()
    assert run.truncate_metrics_after(1) == 1
    run.append_metrics({"round": 2, "loss": 0.5})
    assert run.read_metrics() == [{"round": 1, "loss": 1.0}, {"round": 2, "loss": 0.5}]


def test_malformed_metrics_line_names_its_number(tmp_path):
    run = RunDirectory(tmp_path)
    run.append_metrics({"round": 1, "loss": 1.0})
    with run.metrics_path.open("a") as file:
        file.write("not json\n")
    run.append_metrics({"round": 2, "loss": 0.5})
    with pytest.raises(CheckpointError, match=r"metrics\.jsonl: line 2 is not valid JSON"):
        run.read_metrics()
    with pytest.raises(CheckpointError, match="line 2"):
        run.truncate_metrics_after(5)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"loss": 1.0}, "needs an integer 'round'"),
        ({"round": 1, "loss": float("nan")}, "metric 'loss' is nan"),
        ({"round": 1, "loss": [1.0]}, "metric 'loss' must be a str, int or float"),
    ],
)
def test_bad_metrics_records_are_refused(tmp_path, record, message):
    run = RunDirectory(tmp_path)
    with pytest.raises(ValueError, match=message):
        run.append_metrics(record)
    assert not run.metrics_path.exists()
