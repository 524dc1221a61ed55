"""Emulate many factories on one machine with Flower's simulation engine.

Each synthetic factory is one simulated SuperNode running the real `ClientApp`, or with
``factories-per-node`` F > 1 each simulated SuperNode serves F factories (still one
delta per factory); the real `ServerApp` coordinates them. Clients can share a GPU
through fractional ``client_gpus``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from flwr.simulation import run_simulation

from fedmeta.client import make_client_app
from fedmeta.common import SplitSource, SyntheticSource, TablesSource, resolve_run_config, source_from_config
from fedmeta.server import ProgressFn, make_server_app
from fedmeta.simulations.faults import fault_injection_mod

__all__ = ["run_federated_simulation", "simulated_source"]


def simulated_source(run_config: Mapping[str, object]) -> SyntheticSource | SplitSource | TablesSource:
    """The factories ``run_config`` simulates; a ``ValueError`` names what cannot be simulated, and
    every table is read once here, so a table the connector refuses stops the run before the engine
    starts (inside it, that table's node would fail alone, out of the user's sight)."""
    source = source_from_config(run_config)
    if not isinstance(source, SyntheticSource | SplitSource | TablesSource):
        raise ValueError("the simulation engine runs synthetic families, shared data sets and a folder of tables "
                         "(run setting 'tables'); a factory's own table runs as a real node")
    if isinstance(source, TablesSource):
        source.check_tables()
    return source


def run_federated_simulation(
    run_config: Mapping[str, object],
    *,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    progress: ProgressFn | None = None,
    source: SyntheticSource | SplitSource | TablesSource | None = None,
) -> Path:
    """Run the federation ``run_config`` describes; return its run folder.

    One simulated node per factory (training and held-out), or per ``factories-per-node``
    factories. ``client_cpus`` sets how many Ray actors run clients at once (the machine's
    CPUs divided by it); each costs its own Python process with torch. ``inject-faults`` (see
    `simulations.faults`) makes chosen factories crash or send corrupt deltas. Errors
    raised by the server app propagate (the engine re-raises them); a table the connector refuses
    is an error before the engine starts.
    """
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    settings = resolve_run_config(run_config)
    source = source or simulated_source(run_config)  # a caller that checked it already passes it
    spec = str(settings["inject-faults"])
    mods = [fault_injection_mod(spec, float(settings["max-delta-norm"]))] if spec else None
    run_simulation(
        server_app=make_server_app(run_config, progress),
        client_app=make_client_app(run_config, mods=mods),
        num_supernodes=source.num_nodes,
        backend_config={
            "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
            # No Ray dashboard, whatever Flower's default, and no idle workers prestarted for Ray's default
            # environment, which the actors (in Flower's runtime env) never use. _system_config keys are those of
            # Ray 2.55 (pinned by flwr[simulation]): Ray's GCS dies on an unknown one and ray.init waits for it.
            "init_args": {
                "num_cpus": os.cpu_count() or 1,
                "log_to_driver": False,
                "include_dashboard": False,
                "_system_config": {"prestart_worker_first_driver": False},
            },
        },
    )
    return Path(str(settings["run-dir"]))
