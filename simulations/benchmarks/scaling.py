"""``fedmeta bench scaling``: a federated round on Flower's simulation engine beside a plain loop.

For each federation size (10, 100 and 1,000 factories by default) the same round is
run two ways in one process and timed:

- **plain**: an in-process loop; for every factory the client's own local work
  (`client.app.local_update`), then the server's own validation, weighted averaging and
  outer optimizer step (`FedMetaStrategy.check_delta` and `apply_deltas`). No Flower.
- **flower**: the real `ServerApp` and `ClientApp` on `flwr.simulation.run_simulation`
  with Ray (`simulations.harness.run_federated_simulation`), every factory sending its
  own delta that the server validates and averages separately. The engine runs one Ray
  actor per ``client_cpus`` CPUs (2 on 2 cores), and by default there are as many
  simulated nodes as actors, each serving an equal block of factories
  (``factories-per-node``): per round the engine then carries one message to and from
  each actor instead of one per factory, and each actor works through its block without
  waiting for the engine in between.

The client work is fixed and small: first-order MAML, 1 local meta-step over 2 tasks
of 5 support and 15 query rows, 1 inner step, on the ``quality`` family's MLP (6
inputs, 2 hidden layers of 64, about 4,700 parameters). A round's wall time is the
median over ``rounds`` timed rounds after one warm-up round; the flower figure is the
time between consecutive rounds' progress reports, so it also pays the run's metrics
line and checkpoint. Half of the plain rounds run before the simulation and half
after, so that load from elsewhere on a shared machine hits both alike.

Wall time flatters the engine: its actors work in parallel while the plain loop uses one
core. So each round's CPU time is measured too, summed over this process and all its
descendants (user and system, read with psutil at the round's start and end), and the
targets apply to the ratio of CPU seconds per round: what the engine costs per core. torch runs
one thread in this process, as Ray gives each 1-CPU actor: on a busy 2-core machine
two threads make these millisecond steps several times slower.

Peak memory is the highest sum of resident set sizes over this process and all its
descendants (Ray's GCS, raylet, agents and workers included), read with psutil by a
background thread every `SAMPLE_INTERVAL_S`. Shared pages count once per process, so
the sum overstates what the tree really holds.

This module is imported only by the CLI command, never by the package.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from fedmeta.client import LoadedFactory, evaluate_factory, load_factories, local_update, node_device
from fedmeta.common import descendants, source_from_config
from fedmeta.server import FedMetaStrategy, ServerSettings, initial_meta_parameters, weighted_metrics
from fedmeta.server.strategy import OuterOptimizer
from fedmeta.simulations.benchmarks.aims import verdict

__all__ = [
    "DEFAULT_FACTORIES",
    "DEFAULT_ROUNDS",
    "GB",
    "MEMORY_TARGETS_GB",
    "RATIO_TARGETS",
    "SAMPLE_INTERVAL_S",
    "WORK",
    "PlainLoop",
    "ScalingResult",
    "SizeResult",
    "Target",
    "TreeMemorySampler",
    "bench_config",
    "flower_round_times",
    "render",
    "run_scaling_benchmark",
    "tree_cpu_seconds",
    "tree_rss_bytes",
    "wait_for_descendants",
]

DEFAULT_FACTORIES = (10, 100, 1000)
DEFAULT_ROUNDS = 5
# Flower / plain median CPU seconds a round (per core), and the whole tree's peak RSS, by number of factories.
RATIO_TARGETS = {100: 1.3, 1000: 1.5}
MEMORY_TARGETS_GB = {1000: 2.5}
RATIO_TARGET, MEMORY_TARGET = "flower / plain CPU seconds a round", "flower peak memory"
SAMPLE_INTERVAL_S = 0.1
RAY_EXIT_TIMEOUT_S = 15.0
GB = 1e9

# The fixed client work and a federation without held-out factories (no evaluation).
WORK: dict[str, object] = {
    "family": "quality",
    "num-held-out": 0,
    "algorithm": "fomaml",
    "local-steps": 1,
    "meta-batch-size": 2,
    "inner-steps": 1,
    "shots": 5,
    "query-size": 15,
    "fraction-train": 1.0,
    "min-train-nodes": 1,
    "device": "cpu",
}


# --------------------------------------------------------------------------- memory


def _tree(root: int) -> list[psutil.Process]:
    """``root`` and all its descendants (none once ``root`` has ended)."""
    try:
        process = psutil.Process(root)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _rss_bytes(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.NoSuchProcess:  # ended meanwhile
        return 0


def tree_rss_bytes(root: int | None = None) -> tuple[int, int]:
    """Summed RSS of ``root`` (default: this process) and its descendants, and their count."""
    processes = _tree(os.getpid() if root is None else root)
    return sum(map(_rss_bytes, processes)), len(processes)


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds (user and system) used so far by ``root`` (default: this process) and its live descendants.
    This process's own come from `time.process_time` (nanoseconds): the kernel's tick counts that psutil reads
    move in steps of 10 ms, so a tiny round's CPU could read 0 and its ratio divide by zero."""
    me = os.getpid()
    total = 0.0
    for process in _tree(me if root is None else root):
        if process.pid == me:
            total += time.process_time()
            continue
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # ended meanwhile
            continue
        total += times.user + times.system
    return total


def wait_for_descendants(timeout: float) -> bool:
    """Wait until this process has no descendants left (Ray ends its processes lazily).

    So that neither the plain loop's memory nor its time counts a Ray process still
    shutting down. Returns whether they all ended within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while descendants(os.getpid()):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


class TreeMemorySampler:
    """Peak summed RSS of this process tree while ``with`` blocks run (the peak of all of them).

    A daemon thread samples every `SAMPLE_INTERVAL_S` (a few milliseconds of CPU each);
    Ray starts and ends its processes inside the block, so only sampling sees them.
    """

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self.processes_at_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        total, count = tree_rss_bytes()
        if total > self.peak_bytes:
            self.peak_bytes, self.processes_at_peak = total, count

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemorySampler:
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tree-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


# --------------------------------------------------------------------------- the two paths


def bench_config(factories: int, factories_per_node: int, run_dir: str, rounds: int) -> dict[str, object]:
    """The run config of one size: `WORK` for ``factories`` factories over ``rounds`` rounds."""
    return {
        **WORK,
        "num-factories": factories,
        "factories-per-node": factories_per_node,
        "num-server-rounds": rounds,
        "run-dir": run_dir,
    }


Sent = tuple[dict[str, torch.Tensor], dict[str, float]]
# What training factory ``index`` sends in round ``round`` in place of its honest (delta, metrics).
Sender = Callable[[int, int, dict[str, torch.Tensor], dict[str, float]], Sent]


class PlainLoop:
    """The federation's round without Flower: the same client and server code, in-process. ``send`` (for
    the benchmarks of attacks and compression) changes what a factory sends before the server checks it."""

    def __init__(self, config: Mapping[str, object], send: Sender | None = None) -> None:
        self.send = send
        self.settings = ServerSettings.from_run_config(config)
        source = source_from_config(config)
        self.factories: list[LoadedFactory] = [
            factory
            for node in range(source.num_nodes)
            for factory in load_factories({"partition-id": node}, config)
            if factory.role == "train"
        ]
        self.device = node_device({}, config)
        algorithm = self.settings.round.algorithm
        params = initial_meta_parameters(source, algorithm, self.settings.round.inner_lr, self.settings.round.seed)
        self.strategy = FedMetaStrategy(OuterOptimizer(params, self.settings.outer), self.settings.sampling)
        self.round = 0

    def run_round(self, chosen: Sequence[int] | None = None) -> float:
        """One round of the training factories ``chosen`` by index (default: all of them); its wall time in
        seconds. A round that chose none leaves the model unchanged, as the server's round without replies."""
        started = time.perf_counter()
        self.round += 1
        indices = range(len(self.factories)) if chosen is None else chosen
        if not indices:
            return time.perf_counter() - started
        settings = dataclasses.replace(self.settings.round, server_round=self.round)
        global_params = self.strategy.optimizer.params
        accepted = []
        for index in indices:
            delta, metrics = local_update(self.factories[index], global_params, settings, self.device)
            if self.send is not None:
                delta, metrics = self.send(index, self.round, delta, metrics)
            self.strategy.check_delta(delta, metrics)
            accepted.append((delta, metrics))
        params, _ = self.strategy.apply_deltas(self.round, accepted, offered=len(accepted))
        if params is None:
            raise RuntimeError("the plain loop's round left the model unchanged")
        return time.perf_counter() - started


def held_out_metrics(config: Mapping[str, object], params: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The run's held-out factories' K-shot metrics of ``params``, as its evaluation round scores them."""
    source, settings = source_from_config(config), ServerSettings.from_run_config(config).evaluation
    held = [factory for node in range(source.num_nodes) for factory in load_factories({"partition-id": node}, config)
            if factory.role == "evaluate"]
    device = node_device({}, config)
    return weighted_metrics([evaluate_factory(factory, params, settings, device=device) for factory in held])


def _timed_plain_round(loop: PlainLoop) -> tuple[float, float]:
    """One plain round's wall time and the CPU seconds it used."""
    cpu = tree_cpu_seconds()
    wall = loop.run_round()
    return wall, tree_cpu_seconds() - cpu


def flower_round_times(config: Mapping[str, object], *, client_cpus: float) -> tuple[list[float], list[float]]:
    """Run the simulation on a Ray of its own (its actors are this process's children, so their CPU counts,
    whatever RAY_ADDRESS says); the wall time and the process tree's CPU seconds of every round after the first.

    Raises `RuntimeError` unless every factory's delta was accepted in every round: a
    ratio is only meaningful over the same work.
    """
    from fedmeta.simulations.harness import OWN_RAY, run_federated_simulation  # starts Ray: only when needed

    stamps: list[tuple[float, float]] = []
    expected = float(config["num-factories"])

    def progress(record: Mapping[str, object]) -> None:
        stamps.append((time.perf_counter(), tree_cpu_seconds()))
        if record.get("train/replies") != expected or record.get("train/rejected") != 0.0:
            raise RuntimeError(
                f"round {record['round']}: {record.get('train/replies')} of {expected:.0f} factories' deltas "
                f"accepted, {record.get('train/rejected')} rejected"
            )

    run_federated_simulation(config, client_cpus=client_cpus, progress=progress, ray_address=OWN_RAY)
    rounds = list(itertools.pairwise(stamps))
    return [later[0] - earlier[0] for earlier, later in rounds], [later[1] - earlier[1] for earlier, later in rounds]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Target:
    """A measured value against its upper limit."""

    name: str
    value: float
    limit: float
    unit: str

    @property
    def passed(self) -> bool:
        return self.value <= self.limit


@dataclass
class SizeResult:
    factories: int
    nodes: int
    factories_per_node: int
    actors: int
    plain_round_s: list[float]
    flower_round_s: list[float]
    plain_cpu_s: list[float]
    flower_cpu_s: list[float]
    plain_peak_bytes: int
    flower_peak_bytes: int
    flower_processes: int

    @property
    def plain_median_s(self) -> float:
        return statistics.median(self.plain_round_s)

    @property
    def flower_median_s(self) -> float:
        return statistics.median(self.flower_round_s)

    @property
    def ratio(self) -> float:
        """Of wall times: the engine's actors run in parallel, the plain loop on one core."""
        return self.flower_median_s / self.plain_median_s

    @property
    def cpu_ratio(self) -> float:
        """Of CPU seconds a round: the engine's cost per core."""
        return statistics.median(self.flower_cpu_s) / statistics.median(self.plain_cpu_s)

    @property
    def targets(self) -> list[Target]:
        """The issue's targets that apply to this size (`RATIO_TARGETS`, `MEMORY_TARGETS_GB`)."""
        targets = []
        if self.factories in RATIO_TARGETS:
            targets.append(Target(RATIO_TARGET, self.cpu_ratio, RATIO_TARGETS[self.factories], "x"))
        if self.factories in MEMORY_TARGETS_GB:
            targets.append(Target(MEMORY_TARGET, self.flower_peak_bytes / GB, MEMORY_TARGETS_GB[self.factories], "GB"))
        return targets

    def target(self, name: str) -> Target | None:
        return next((target for target in self.targets if target.name == name), None)

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["targets"] = [{**dataclasses.asdict(t), "passed": t.passed} for t in self.targets]
        data.update(plain_median_s=self.plain_median_s, flower_median_s=self.flower_median_s, ratio=self.ratio,
                    cpu_ratio=self.cpu_ratio)
        return data


@dataclass
class ScalingResult:
    rounds: int
    client_cpus: float
    cpu_count: int
    torch_threads: int
    load_average: float
    work: dict[str, object]
    sizes: list[SizeResult]

    def to_dict(self) -> dict[str, object]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)[:-1]},
                "sizes": [size.to_dict() for size in self.sizes]}


# --------------------------------------------------------------------------- running


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _actors(client_cpus: float) -> int:
    """Ray actors Flower's pool starts: the CPUs given to Ray (all of them) per client's CPUs."""
    return max(1, int((os.cpu_count() or 1) // client_cpus))


def _bench_size(
    factories: int, rounds: int, nodes: int, client_cpus: float, log: Callable[[str], None]
) -> SizeResult:
    per_node = math.ceil(factories / min(nodes, factories))
    with tempfile.TemporaryDirectory(prefix="fedmeta-scaling-") as run_dir:
        config = bench_config(factories, per_node, run_dir, rounds + 1)
        log(f"{factories} factories: plain loop, warm-up and {rounds - rounds // 2} rounds")
        plain = PlainLoop(config)
        with TreeMemorySampler() as plain_memory:
            plain.run_round()
            timed = [_timed_plain_round(plain) for _ in range(rounds - rounds // 2)]
        log(f"{factories} factories: Flower simulation, {math.ceil(factories / per_node)} nodes, "
            f"warm-up and {rounds} rounds")
        with TreeMemorySampler() as flower_memory:
            flower, flower_cpu = flower_round_times(config, client_cpus=client_cpus)
        if not wait_for_descendants(RAY_EXIT_TIMEOUT_S):
            log(f"some child processes still run {RAY_EXIT_TIMEOUT_S:.0f} s after the simulation ended")
        log(f"{factories} factories: plain loop, {rounds // 2} more rounds")
        with plain_memory:
            timed += [_timed_plain_round(plain) for _ in range(rounds // 2)]
    return SizeResult(
        factories=factories,
        nodes=math.ceil(factories / per_node),
        factories_per_node=per_node,
        actors=_actors(client_cpus),
        plain_round_s=[wall for wall, _ in timed],
        flower_round_s=flower,
        plain_cpu_s=[cpu for _, cpu in timed],
        flower_cpu_s=flower_cpu,
        plain_peak_bytes=plain_memory.peak_bytes,
        flower_peak_bytes=flower_memory.peak_bytes,
        flower_processes=flower_memory.processes_at_peak,
    )


def run_scaling_benchmark(
    factories: Sequence[int] = DEFAULT_FACTORIES,
    *,
    rounds: int = DEFAULT_ROUNDS,
    nodes: int | None = None,
    client_cpus: float = 1.0,
    log: Callable[[str], None] = lambda message: None,
) -> ScalingResult:
    """Time and measure both paths for each number of factories (see the module docstring).

    ``nodes`` caps the simulated nodes (``factories-per-node`` = factories / nodes,
    rounded up; default: one node per Ray actor); ``nodes >= factories`` gives Flower's
    usual one node per factory.
    """
    if not factories or min(factories) < 1:
        raise ValueError(f"factories must be positive numbers, got {list(factories)}")
    if not client_cpus > 0:
        raise ValueError(f"client_cpus must be positive, got {client_cpus}")
    nodes = _actors(client_cpus) if nodes is None else nodes
    if rounds < 1 or nodes < 1:
        raise ValueError(f"rounds and nodes must be >= 1, got rounds={rounds}, nodes={nodes}")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    load = os.getloadavg()[0]
    with _torch_threads(1):
        sizes = [_bench_size(n, rounds, nodes, client_cpus, log) for n in factories]
    return ScalingResult(
        rounds=rounds,
        client_cpus=client_cpus,
        cpu_count=os.cpu_count() or 1,
        torch_threads=1,
        load_average=load,
        work=dict(WORK),
        sizes=sizes,
    )


# --------------------------------------------------------------------------- output


def _verdict(target: Target | None, limit: str) -> str:
    if target is None:
        return "-"
    return f"{limit} {verdict(target.passed)}"


def _time_row(size: SizeResult) -> list[str]:
    ratio = size.target(RATIO_TARGET)
    return [
        f"{size.factories:,}",
        f"{size.nodes} x {size.factories_per_node}",
        f"{size.actors}",
        f"{size.plain_median_s:.3f}",
        f"{size.flower_median_s:.3f}",
        f"{size.ratio:.2f}x",
        f"{statistics.median(size.plain_cpu_s):.3f}",
        f"{statistics.median(size.flower_cpu_s):.3f}",
        f"{size.cpu_ratio:.2f}x",
        _verdict(ratio, "" if ratio is None else f"<= {ratio.limit:.1f}x"),
    ]


def _memory_row(size: SizeResult) -> list[str]:
    memory = size.target(MEMORY_TARGET)
    return [
        f"{size.factories:,}",
        f"{size.plain_peak_bytes / GB:.2f}",
        f"{size.flower_peak_bytes / GB:.2f}",
        f"{size.flower_processes}",
        _verdict(memory, "" if memory is None else f"< {memory.limit:.1f}"),
    ]


def _table(title: str, columns: Sequence[str], rows: Sequence[list[str]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def render(result: ScalingResult, console: Console) -> None:
    """Print the setup, one row per size with its targets, and what the columns mean."""
    console.print(
        f"[bold]scaling benchmark[/bold]: {result.cpu_count} CPUs (load average {result.load_average:.1f} at "
        f"start), torch {torch.__version__} with {result.torch_threads} thread in this process; median of "
        f"{result.rounds} timed rounds after 1 warm-up. Client work per factory: fomaml, 1 local meta-step "
        f"over 2 tasks (5 support + 15 query rows), 1 inner step, quality MLP (~4.7k parameters)."
    )
    console.print(_table("round time", ("factories", "nodes x per node", "actors", "plain s", "flower s",
                                        "wall ratio", "plain CPU s", "flower CPU s", "CPU ratio", "target"),
                         [_time_row(size) for size in result.sizes]))
    console.print(_table("peak memory", ("factories", "plain GB", "flower GB", "procs", "target"),
                         [_memory_row(size) for size in result.sizes]))
    console.print(
        "plain: the same client work and server aggregation in a loop in this process; flower: the real "
        "ServerApp and ClientApp on Flower's simulation engine, every factory's delta validated and "
        "averaged on its own. s: median wall time a round; CPU s: median CPU seconds a round of this process "
        "and all its descendants, the per-core cost the targets apply to (the engine's actors run in parallel, "
        "the plain loop on one core). GB: peak summed RSS of this process and all its descendants (Ray included; "
        "shared pages counted per process); procs: processes in that tree at the peak."
    )
