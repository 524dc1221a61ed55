"""A benchmark's finished seeds, kept on disk so that a full run stopped midway resumes at its next seed.

A full run on 2 CPU cores takes hours (CWRU: about 37 min per seed), longer than a machine may stay
up. Each finished seed is written at once to ``<out>/seeds/seed-<n>.json`` with the plan it ran
under, its wall time and the commit; running the same command with the same ``--out`` again loads
those seeds and runs only the missing ones. A record written under another plan (other rounds,
methods, tuned values, ...) is refused with its file named, never mixed in. Every seed, recorded
or fresh, goes through the same JSON round trip, so the results never depend on which seeds were
resumed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORDS_DIR = "seeds"


class SeedRecordError(ValueError):
    """A seed record that cannot be resumed: unreadable, or written under another plan."""


def _plan_key(plan: object) -> dict[str, Any]:
    """The plan as JSON sees it, without its seed list (a seed's result does not depend on the others)."""
    fields = {name: value for name, value in dataclasses.asdict(plan).items() if name != "seeds"}
    return json.loads(json.dumps(fields))


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
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            plan, run, seconds, commit = record["plan"], record["run"], float(record["seconds"]), record["commit"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise SeedRecordError(f"{path} is not a readable seed record ({error}); move it away to rerun "
                                  "that seed") from error
        if plan != self.plan:
            changed = sorted(key for key in {*plan, *self.plan} if plan.get(key) != self.plan.get(key))
            raise SeedRecordError(f"{path} was recorded under another plan (differs in {', '.join(changed)}); "
                                  "run with another --out or the same settings")
        return {"run": run, "seconds": seconds, "commit": commit}

    def save(self, seed: int, run: Mapping[str, object], seconds: float, commit: str | None) -> dict[str, Any]:
        """Write ``seed``'s record atomically (never over an existing one); return the run as reloaded."""
        if self.path(seed).exists():
            raise SeedRecordError(f"{self.path(seed)} exists; not overwriting it")
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"plan": self.plan, "seconds": seconds, "commit": commit, "run": run})
        partial = self.path(seed).with_suffix(".json.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, self.path(seed))
        return json.loads(text)["run"]


def round_trip(run: Mapping[str, object]) -> dict[str, Any]:
    """``run`` as a seed record holds it (string keys, lists), for runs that are not recorded."""
    return json.loads(json.dumps(run))
