"""A run folder the server can crash in and resume from.

Layout::

    <run>/config.json                          the run's configuration
    <run>/metrics.jsonl                        one JSON object per line, each with "round"
    <run>/checkpoints/round-000003.safetensors global params + outer optimizer state
    <run>/status.json                          the run's state for `fedmeta status` (`server.run_view`)
    <run>/events.out.tfevents.*                the metrics for TensorBoard (`server.run_view`)

Checkpoints carry a SHA-256 of their tensors and metadata, so flipped bytes are caught on load.
Every file is written to a temporary file in the same folder, flushed to disk and
moved into place with `os.replace`, so a crash never leaves a half-written file under
a final name. Saved checkpoints are never overwritten, and a bad file is reported
(never deleted or repaired) so nothing already saved is lost.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from fedmeta.common.runtime.files import atomic_write

__all__ = ["Checkpoint", "CheckpointError", "RunDirectory", "refuse_started_runs"]

_PARAMS = "params/"
_OPTIMIZER = "optimizer/"
_ROUND = "round"
_DIGEST = "sha256"
_CHECKPOINT_NAME = re.compile(r"round-(\d+)\.safetensors")


class CheckpointError(RuntimeError):
    """A file in the run folder is missing, corrupt, or would be overwritten."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


@dataclass
class Checkpoint:
    """One saved round: global params, outer optimizer state and the caller's metadata.

    ``metadata`` is exactly what was passed to `RunDirectory.save_checkpoint`.
    """

    round: int
    params: dict[str, Tensor]
    optimizer_tensors: dict[str, Tensor]
    metadata: dict[str, str]


class RunDirectory:
    """Checkpoints, config and metrics of one federated run, under ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.checkpoints_dir = self.path / "checkpoints"
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.status_path = self.path / "status.json"

    def checkpoint_path(self, round: int) -> Path:
        """Where the checkpoint of ``round`` lives (whether or not it exists)."""
        return self.checkpoints_dir / f"round-{round:06d}.safetensors"

    def save_checkpoint(
        self,
        round: int,
        params: Mapping[str, Tensor],
        optimizer_tensors: Mapping[str, Tensor],
        metadata: Mapping[str, str],
    ) -> Path:
        """Write the checkpoint of ``round`` atomically; refuse to replace an existing one."""
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ValueError(f"round must be a non-negative integer, got {round!r}")
        if not params:
            raise ValueError("a checkpoint needs at least one parameter")
        for key, value in metadata.items():
            if not (isinstance(key, str) and isinstance(value, str)):
                raise ValueError(f"metadata must map str to str, got {key!r}: {value!r}")
        reserved = sorted({_ROUND, _DIGEST} & metadata.keys())
        if reserved:
            raise ValueError(f"metadata keys {reserved} are reserved for the checkpoint itself")
        path = self.checkpoint_path(round)
        if path.exists():
            raise CheckpointError(path, f"checkpoint of round {round} exists; not overwriting it")
        tensors = {
            **{_PARAMS + name: _for_saving(t) for name, t in params.items()},
            **{_OPTIMIZER + name: _for_saving(t) for name, t in optimizer_tensors.items()},
        }
        header = {_ROUND: str(round), **metadata}
        header[_DIGEST] = _digest(tensors, header)
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda temp: save_file(tensors, temp, metadata=header))
        return path

    def latest_round(self) -> int | None:
        """The highest round with a checkpoint, or None before the first one."""
        if not self.checkpoints_dir.is_dir():
            return None
        rounds = [
            int(match.group(1))
            for entry in self.checkpoints_dir.iterdir()
            if (match := _CHECKPOINT_NAME.fullmatch(entry.name))
            and entry.name == self.checkpoint_path(int(match.group(1))).name
        ]
        return max(rounds, default=None)

    def load_checkpoint(self, round: int | None = None) -> Checkpoint:
        """Read the checkpoint of ``round`` (default: the latest); the file is only read."""
        if round is None:
            round = self.latest_round()
            if round is None:
                raise CheckpointError(self.checkpoints_dir, "no checkpoints saved")
        path = self.checkpoint_path(round)
        if not path.is_file():
            raise CheckpointError(path, f"no checkpoint of round {round}")
        try:
            with safe_open(path, framework="pt") as file:
                header = dict(file.metadata() or {})
                # safe_open has keys() but is not iterable.
                tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as error:
            raise CheckpointError(
                path, f"not a readable safetensors checkpoint ({error})"
            ) from None
        if header.pop(_DIGEST, None) != _digest(tensors, header):
            raise CheckpointError(path, "contents do not match their sha256 checksum")
        if header.pop(_ROUND, None) != str(round):
            raise CheckpointError(path, f"metadata does not record round {round}")
        params = _strip(tensors, _PARAMS)
        optimizer_tensors = _strip(tensors, _OPTIMIZER)
        if not params:
            raise CheckpointError(path, f"no {_PARAMS!r} tensors")
        unexpected = [key for key in tensors if not key.startswith((_PARAMS, _OPTIMIZER))]
        if unexpected:
            raise CheckpointError(path, f"unexpected tensors {unexpected}")
        return Checkpoint(round, params, optimizer_tensors, header)

    def write_config(self, config: Mapping[str, Any], *, overwrite: bool = False) -> None:
        """Write ``config.json``; an existing different config is kept unless ``overwrite``."""
        text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n"
        if self.config_path.exists() and not overwrite:
            if self.read_config() == json.loads(text):
                return
            raise CheckpointError(
                self.config_path, "differs from the given config; pass overwrite=True to replace it"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.config_path, lambda temp: temp.write_text(text, encoding="utf-8"))

    def write_status(self, status: Mapping[str, Any]) -> None:
        """Replace ``status.json`` (atomically: a reader never sees half of it)."""
        text = json.dumps(status, indent=2, allow_nan=False) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.status_path, lambda temp: temp.write_text(text, encoding="utf-8"))

    def read_config(self) -> dict[str, Any]:
        """The run's configuration from ``config.json``."""
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(self.config_path, "does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(self.config_path, f"is not valid JSON ({error})") from None
        if not isinstance(config, dict):
            raise CheckpointError(self.config_path, "does not hold a JSON object")
        return config

    def append_metrics(self, record: Mapping[str, float | int | str]) -> None:
        """Append one record (with an integer ``"round"``) to ``metrics.jsonl``, durably."""
        for key, value in record.items():
            if not isinstance(key, str) or not isinstance(value, float | int | str):
                raise ValueError(f"metric {key!r} must be a str, int or float, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"metric {key!r} is {value!r}; JSON cannot hold it")
        if not _is_round(record.get(_ROUND)):
            raise ValueError(f"a metrics record needs an integer 'round', got {record!r}")
        line = json.dumps(dict(record), allow_nan=False) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """All metrics records in order; none before the first one is appended."""
        lines = self._metrics_lines()
        return [record for _, _, record in self._parse_metrics(lines, drop_torn_tail=False)]

    def truncate_metrics_after(self, round: int) -> int:
        """Drop metrics of rounds after ``round`` (the last checkpoint) before resuming.

        An unparsable final line without its newline was cut off by a crash mid-append
        and is dropped too. Returns how many lines were dropped.
        """
        lines = self._metrics_lines()
        kept = []
        for number, line, record in self._parse_metrics(lines, drop_torn_tail=True):
            if not _is_round(record.get(_ROUND)):
                raise CheckpointError(self.metrics_path, f"line {number} has no integer 'round'")
            if record[_ROUND] <= round:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            atomic_write(
                self.metrics_path, lambda temp: temp.write_text("".join(kept), encoding="utf-8")
            )
        return len(lines) - len(kept)

    def _metrics_lines(self) -> list[str]:
        """Lines of ``metrics.jsonl`` with their newlines (a torn last line has none)."""
        if not self.metrics_path.exists():
            return []
        return self.metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)

    def _parse_metrics(
        self, lines: list[str], *, drop_torn_tail: bool
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """``(line number, line, record)`` triples; a malformed line is an error naming it."""
        parsed = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except ValueError as error:
                if drop_torn_tail and number == len(lines) and not line.endswith("\n"):
                    break
                raise CheckpointError(
                    self.metrics_path, f"line {number} is not valid JSON ({error})"
                ) from None
            if not isinstance(record, dict):
                raise CheckpointError(self.metrics_path, f"line {number} is not a JSON object")
            parsed.append((number, line, record))
        return parsed


def _is_round(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _for_saving(tensor: Tensor) -> Tensor:
    """A contiguous CPU copy: safetensors refuses views and tensors that share memory."""
    return tensor.detach().cpu().clone(memory_format=torch.contiguous_format)


def _digest(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """SHA-256 of tensors (names, dtypes, shapes, bytes) and metadata.

    Catches flipped bytes that still parse as safetensors.
    """
    digest = hashlib.sha256(json.dumps(sorted(metadata.items())).encode())
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _strip(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix) :]: t for key, t in tensors.items() if key.startswith(prefix)}


def refuse_started_runs(run_dir: Path, algorithms: Iterable[str]) -> None:
    """Raise `CheckpointError` where ``run_dir`` already holds checkpoints of one of ``algorithms``: a run that does
    not resume would start over them. Commands check it before anything starts, so the user reads one line."""
    for algorithm in algorithms:
        latest = RunDirectory(run_dir / algorithm).latest_round()
        if latest is not None:
            raise CheckpointError(run_dir, f"already holds {algorithm} checkpoints up to round {latest}: pass --resume "
                                           "to continue that run, or choose another run folder")
