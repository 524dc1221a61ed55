"""Emulate many factories on one machine with Flower's simulation engine.

Each synthetic factory is one simulated SuperNode running the real `ClientApp`, or with
``factories-per-node`` F > 1 each simulated SuperNode serves F factories (still one
delta per factory); the real `ServerApp` coordinates them. Clients can share a GPU
through fractional ``client_gpus``. The engine starts a Ray of its own on this machine, or joins a running
Ray cluster (``ray_address``, or Ray's own ``RAY_ADDRESS``) and spreads the factories over its nodes.

The engine is Flower's simulation runtime as its supported path runs it: a SuperLink in simulation mode starts
``flwr-simulation``, which calls ``flwr.simulation.run_simulation._run_simulation`` with the app. The harness
calls that same function in this process, with the apps as objects (so a run can take client mods and a
progress callback), instead of Flower's deprecated Python entry ``run_simulation``, a wrapper of it that adds
a deprecation banner and a telemetry event. Being internal, it is used only with the Flower release it was written for.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from flwr.clientapp.typing import Mod
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

from fedmeta.client import make_client_app
from fedmeta.common import SplitSource, SyntheticSource, TablesSource, resolve_run_config, source_from_config
from fedmeta.common.runtime.flower_pin import require_flower
from fedmeta.server import ProgressFn, make_server_app
from fedmeta.simulations.faults import fault_injection_mod

__all__ = [
    "OWN_RAY", "PATH_SETTINGS", "RayClusterError", "check_reachable", "run_federated_simulation", "simulated_source",
    "with_absolute_paths",
]

# Ray's own word for "start a Ray of its own here", whatever RAY_ADDRESS says: for the benches that measure this
# machine's processes.
OWN_RAY = "local"
# Ray's driver warns that a future Ray stops hiding GPUs from actors that asked for none. The engine relies on
# today's behaviour (`--client-gpus 0` keeps factories off the GPUs) and pins Ray with Flower, so the tip is noise.
RAY_GPU_TIP = "Tip: In future versions of Ray, Ray will no longer override accelerator visible devices"
# Settings the factories read as paths: made absolute here, since a Ray worker's working folder is not this
# command's (on a cluster, the folder `ray start` ran in), where a relative path found no table.
PATH_SETTINGS = ("tables", "schema")
# How long to wait for a Ray cluster's head to answer; ray.init itself retries an address for minutes.
CONNECT_TIMEOUT_S = 5.0


class RayClusterError(ConnectionError):
    """The Ray cluster to run on cannot be reached, or its address is not one."""


def with_absolute_paths(run_config: Mapping[str, object]) -> dict[str, object]:
    """``run_config`` with each of `PATH_SETTINGS` it sets (a file or a glob) made absolute from this folder."""
    return {**run_config, **{key: str(Path(str(run_config[key])).expanduser().absolute())
                             for key in PATH_SETTINGS if run_config.get(key)}}


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


def check_reachable(address: str) -> None:
    """Fail now, by name, where ``ray.init`` would retry an unreachable address for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or address.startswith("ray://"):
        raise RayClusterError(f"a Ray cluster's address is its head node's HOST:PORT, as `ray start --head` prints "
                              f"it, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        raise RayClusterError(f"no Ray cluster answers at {address} ({error}); start its head node with "
                              f"`ray start --head --port {port}`, or run without an address on this machine alone"
                              ) from error


def _ray_init_args(address: str | None = None) -> dict[str, object]:
    """The engine's ``ray.init`` arguments: a Ray of its own sized to this machine (`OWN_RAY`, or no address and
    no ``RAY_ADDRESS``), or the running cluster at ``address`` (or ``RAY_ADDRESS``), checked to answer; each
    node's ``ray start`` then sets its CPUs and system settings, which Ray refuses from a driver that joins."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != OWN_RAY:
        check_reachable(address)
        return {"address": address, "log_to_driver": False}
    # A Ray of its own even where a cluster ran on this machine before (without an address, ray.init joins the
    # latest one it finds). No Ray dashboard, whatever Flower's default, and no idle workers prestarted for Ray's
    # default environment, which the actors (in Flower's runtime env) never use. _system_config keys are those of
    # Ray 2.55 (pinned by flwr[simulation]): Ray's GCS dies on an unknown one and ray.init waits for it.
    return {
        "address": OWN_RAY,
        "num_cpus": os.cpu_count() or 1,
        "log_to_driver": False,
        "include_dashboard": False,
        "_system_config": {"prestart_worker_first_driver": False},
    }


def run_federated_simulation(
    run_config: Mapping[str, object],
    *,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    progress: ProgressFn | None = None,
    source: SyntheticSource | SplitSource | TablesSource | None = None,
    ray_address: str | None = None,
    mods: Sequence[Mod] = (),
) -> Path:
    """Run the federation ``run_config`` describes; return its run folder.

    One simulated node per factory (training and held-out), or per ``factories-per-node``
    factories. ``client_cpus`` sets how many Ray actors run clients at once (each Ray node's
    CPUs divided by it); each costs its own Python process with torch. ``inject-faults`` (see
    `simulations.faults`) makes chosen factories crash or send corrupt deltas. Errors
    raised by the server app propagate (the engine re-raises them); a table the connector refuses
    is an error before the engine starts. ``ray_address`` joins a running Ray cluster (`_ray_init_args`; a
    `RayClusterError` where none answers), or is `OWN_RAY`; ``mods`` are Flower client mods around every
    factory's app.
    """
    require_flower("the simulation harness")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    run_config = with_absolute_paths(run_config)
    settings = resolve_run_config(run_config)
    source = source or simulated_source(run_config)  # a caller that checked it already passes it
    spec = str(settings["inject-faults"])
    faults = [fault_injection_mod(spec, float(settings["max-delta-norm"]))] if spec else []
    init_args = _ray_init_args(ray_address)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=RAY_GPU_TIP, category=FutureWarning)
        _run_simulation(
            num_supernodes=source.num_nodes,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            server_app=make_server_app(run_config, progress),
            client_app=make_client_app(run_config, mods=[*faults, *mods]),
            backend_config={
                "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
                "init_args": init_args,
            },
        )
    return Path(str(settings["run-dir"]))
