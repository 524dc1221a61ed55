"""A benchmark's finished seeds and steps, kept on disk so that a full run stopped midway resumes.

A full run on 2 CPU cores takes hours (a tuned C-MAPSS seed: more than 90 min), longer than a machine
may stay up. Each finished seed is written at once to ``<out>/seeds/seed-<n>.json`` with the plan it
ran under, its wall time and the commit; running the same command with the same ``--out`` again
loads those seeds and runs only the missing ones. Inside a seed, each finished step (one federated
method, a reference, the engine tables) is written to ``<out>/seeds/seed-<n>/<step>.json`` with the
parameters it trained beside it (``<step>.safetensors``), so a seed stopped midway resumes at its next
step; the step files go once the seed's record is written. Every step draws from its own seeded
generators, so a resumed seed equals an uninterrupted one. A record written under another plan
(other rounds, methods, tuned values, ...) is refused with its file named, never mixed in. Every
seed and step, recorded or fresh, goes through the same JSON round trip, so the results never depend
on what was resumed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

RECORDS_DIR = "seeds"


class SeedRecordError(ValueError):
    """A seed record that cannot be resumed: unreadable, or written under another plan."""


def _plan_key(plan: object) -> dict[str, Any]:
    """The plan as JSON sees it, without its seed list (a seed's result does not depend on the others)."""
    fields = {name: value for name, value in dataclasses.asdict(plan).items() if name != "seeds"}
    return json.loads(json.dumps(fields))


def _atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _read_record(path: Path, plan: dict[str, Any], what: str) -> dict[str, Any]:
    """The JSON record at ``path``, refused (naming the file) if unreadable or written under another plan."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        recorded_plan = record["plan"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SeedRecordError(f"{path} is not a readable {what} record ({error}); move it away to rerun "
                              f"that {what}") from error
    if recorded_plan != plan:
        changed = sorted(key for key in {*recorded_plan, *plan} if recorded_plan.get(key) != plan.get(key))
        raise SeedRecordError(f"{path} was recorded under another plan (differs in {', '.join(changed)}); "
                              "run with another --out or the same settings")
    return record


Step = tuple[dict[str, Any], dict[str, Tensor] | None]
"""A seed's step: its JSON-able results and the parameters it trained (None where it trains none)."""


class SeedSteps:
    """The finished steps of one seed; without records (tuning, tests) every step simply runs."""

    def __init__(self, records: SeedRecords | None, seed: int) -> None:
        self.folder = records.folder / f"seed-{seed}" if records is not None else None
        self.plan = records.plan if records is not None else None
        self.resumed: list[str] = []

    def run(self, name: str, compute: Callable[[], Step]) -> Step:
        """``name``'s recorded results and parameters if it finished before, else ``compute()``'s, recorded."""
        if self.folder is None:
            return compute()
        record_path, weights_path = self.folder / f"{name}.json", self.folder / f"{name}.safetensors"
        if record_path.exists():
            record = _read_record(record_path, self.plan, "step")
            try:
                params = load_file(weights_path) if record.get("params") else None
                results = record["results"]
            except (KeyError, OSError, ValueError, SafetensorError) as error:
                raise SeedRecordError(f"{record_path} or its parameters cannot be read ({error}); move "
                                      f"{self.folder} away to rerun the seed") from error
            self.resumed.append(name)
            return results, params
        results, params = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        if params is not None:  # the parameters first: the record marks the step finished
            save_file({key: value.detach().contiguous() for key, value in params.items()}, weights_path)
        _atomic_write(record_path, json.dumps({"plan": self.plan, "params": params is not None, "results": results}))
        return round_trip(results), params

    def discard(self) -> None:
        """Remove the step files once the seed's own record holds the results."""
        if self.folder is not None and self.folder.exists():
            shutil.rmtree(self.folder)


class SeedRecords:
    """The seed records of one benchmark output folder, for one plan."""

    def __init__(self, out: Path, plan: object) -> None:
        self.folder = out / RECORDS_DIR
        self.plan = _plan_key(plan)

    def path(self, seed: int) -> Path:
        return self.folder / f"seed-{seed}.json"

    def load(self, seed: int) -> dict[str, Any] | None:
        """The recorded record of ``seed`` (``run``, ``seconds``, ``commit``), or None if it has not run."""
        path = self.path(seed)
        if not path.exists():
            return None
        record = _read_record(path, self.plan, "seed")
        try:
            return {"run": record["run"], "seconds": float(record["seconds"]), "commit": record["commit"]}
        except (KeyError, TypeError, ValueError) as error:
            raise SeedRecordError(f"{path} is not a readable seed record ({error}); move it away to rerun "
                                  "that seed") from error

    def save(self, seed: int, run: Mapping[str, object], seconds: float, commit: str | None) -> dict[str, Any]:
        """Write ``seed``'s record atomically (never over an existing one); return the run as reloaded."""
        if self.path(seed).exists():
            raise SeedRecordError(f"{self.path(seed)} exists; not overwriting it")
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"plan": self.plan, "seconds": seconds, "commit": commit, "run": run})
        _atomic_write(self.path(seed), text)
        return json.loads(text)["run"]


def round_trip(run: Mapping[str, object]) -> dict[str, Any]:
    """``run`` as a seed record holds it (string keys, lists), for runs that are not recorded."""
    return json.loads(json.dumps(run))
