"""`fedmeta bench soak`: real processes through a seeded series of faults, and the checks it makes of them.

The short soak here is the one CI runs: six factories, 14 rounds, every kind of fault once.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from fedmeta.simulations.benchmarks.network_faults import unavailable
from fedmeta.simulations.benchmarks.soak import FAULT_KINDS, MIN_FACTORIES, RECOVERY_ROUNDS, fault_schedule
from tests.support.deployment import ENV, FEDMETA

FACTORIES = [f"plant-{i}" for i in range(MIN_FACTORIES)]
SHORT_ROUNDS = 14


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_schedule_is_one_fault_of_each_kind_on_distinct_factories_before_the_recovery_rounds(seed):
    schedule = fault_schedule(FACTORIES, 30, seed)
    assert sorted(fault.kind for fault in schedule) == sorted(FAULT_KINDS)
    on_factories = [fault.factory for fault in schedule if fault.kind != "server-kill"]
    assert len(set(on_factories)) == len(on_factories) and set(on_factories) <= set(FACTORIES)
    assert [fault.factory for fault in schedule if fault.kind == "server-kill"] == [None]
    rounds = [fault.round for fault in schedule]
    assert rounds == sorted(set(rounds)) and rounds[0] == 2 and rounds[-1] == 30 - RECOVERY_ROUNDS
    assert fault_schedule(FACTORIES, 30, seed) == schedule


def test_seeds_draw_different_schedules():
    assert len({tuple(fault_schedule(FACTORIES, 30, seed)) for seed in range(5)}) > 1


@pytest.mark.parametrize(("factories", "rounds"), [(FACTORIES[:5], 30), (FACTORIES, 10)])
def test_too_few_factories_or_rounds_are_refused(factories, rounds):
    with pytest.raises(ValueError, match="the soak needs at least"):
        fault_schedule(factories, rounds, 0)


def test_a_round_timeout_within_failure_detection_is_refused_by_the_command():
    result = subprocess.run([FEDMETA, "bench", "soak", "--round-timeout", "20"], capture_output=True, text=True,
                            env=ENV, timeout=60)
    assert result.returncode == 2 and "--round-timeout" in result.stderr


@pytest.mark.skipif(unavailable() is not None, reason=f"factory networks: {unavailable()}")
def test_the_short_soak_survives_every_fault_and_its_checks_hold(tmp_path):
    out = tmp_path / "soak.json"
    command = [FEDMETA, "bench", "soak", "--rounds", str(SHORT_ROUNDS), "--keep", str(tmp_path / "run"),
               "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["passed"] and result["problems"] == []
    assert len(result["round_seconds"]) == SHORT_ROUNDS
    assert result["longest_round_s"] <= result["bound_s"]
    faults = {record["fault"]["kind"]: record for record in result["faults"]}
    assert set(faults) == set(FAULT_KINDS)
    for record in faults.values():
        assert record["injected_s"] is not None and record["recovered_s"] >= record["injected_s"]
    assert faults["kill-uploading"]["note"] == "killed mid-upload: its reply given up", completed.stdout[-6000:]
    assert faults["freeze"]["ended_s"] - faults["freeze"]["injected_s"] >= result["round_timeout_s"]
    assert "PASS: every check held" in completed.stdout
