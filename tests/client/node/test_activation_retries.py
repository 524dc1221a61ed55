"""A factory restarted right after a crash is refused by the server until its earlier process misses its
heartbeats; `fedmeta client` tries again for that long instead of stopping with "not registered".

The SuperNode's runs are stood in for (`_serve`) and time is counted, not waited: the real restart runs in
`fedmeta bench soak` (tests/simulations/benchmarks/test_soak.py).
"""

from __future__ import annotations

import pytest

from fedmeta.client import FactoryError
from fedmeta.client.node import deployment
from fedmeta.client.node.supernode_timings import HEARTBEAT_INTERVAL_S, HEARTBEAT_PATIENCE


@pytest.fixture()
def plan(pki, table):
    data, schema = table
    return deployment.plan_factory(server="127.0.0.1:8000", data=data, schema=schema, key=pki / "plant-a",
                                   ca=pki / "ca.crt", state=data.parent / "state")


@pytest.fixture()
def clock(monkeypatch):
    """`time.monotonic` in the client module moves only when it sleeps."""
    now = [0.0]
    monkeypatch.setattr(deployment.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(deployment.time, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    return now


def serving(monkeypatch, outcomes):
    """The SuperNode's runs end as ``outcomes`` say: (exit code, refused); the runs made are counted."""
    runs = []

    def serve(plan, env, report):
        code, refused = outcomes[min(len(runs), len(outcomes) - 1)]
        runs.append(code)
        return code, deployment._Events(refused=refused)

    monkeypatch.setattr(deployment, "_serve", serve)
    return runs


def test_a_refused_factory_tries_again_and_serves_once_its_earlier_process_is_called_gone(plan, clock, monkeypatch):
    runs = serving(monkeypatch, [(1, True), (1, True), (1, True), (2, False)])
    said = []
    with pytest.raises(FactoryError, match="exit code 2"):  # the fourth run: accepted, then ended otherwise
        deployment.run_factory(plan, said.append)
    assert runs == [1, 1, 1, 2]
    assert sum("trying again" in line for line in said) == 1


def test_a_key_still_refused_after_the_heartbeat_patience_is_named_not_registered(plan, clock, monkeypatch):
    runs = serving(monkeypatch, [(1, True)])
    with pytest.raises(FactoryError, match="is not registered there"):
        deployment.run_factory(plan, lambda line: None)
    patience = deployment.activation_patience_s(plan)
    assert patience > HEARTBEAT_PATIENCE * HEARTBEAT_INTERVAL_S
    assert clock[0] >= patience and len(runs) == int(patience // deployment.ACTIVATION_RETRY_S) + 1


def test_a_stock_supernode_waits_out_flowers_own_heartbeat_patience(plan):
    stock = deployment.FactoryPlan(**{**vars(plan), "tuned_supernode": False})
    assert deployment.activation_patience_s(stock) > HEARTBEAT_PATIENCE * 30 > deployment.activation_patience_s(plan)
