"""``fedmeta bench inner-loop``: our task-batched meta-step against the obvious alternatives.

One meta-step (meta-gradient plus the outer Adam step) of every algorithm is timed
side by side with references doing the same work on the same model and batch:

- a hand-written per-task loop (`functional_call` + `torch.autograd.grad`),
- torchopt 0.7.3's `MetaSGD` with `extract_state_dict`/`recover_state_dict`,
- `torch.func.vmap` over the tasks of a `torch.func.grad` inner loop,

each second- and first-order. Before anything is timed every reference must reproduce
our meta-gradient (`check_gradients`), so a ratio never compares different
computations. Variants are timed round-robin in one process so machine noise hits
them alike; peak memory is measured separately (see `simulations.benchmarks.memory`).

This module is imported only by the CLI command, never by the package.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

import torch
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import Tensor, nn
from torch.func import functional_call

from fedmeta.common import (
    ClassificationTaskSampler,
    FactoryData,
    MetaConfig,
    ModelConfig,
    RegressionTaskSampler,
    TaskBatch,
    build_model,
    init_inner_lrs,
    meta_step,
    resolve_device,
    task_losses,
)
from fedmeta.simulations.benchmarks.aims import verdict
from fedmeta.simulations.benchmarks.memory import peak_bytes, run_in_fresh_processes

if TYPE_CHECKING:
    import torchopt

__all__ = [
    "GRADIENT_TOLERANCE",
    "MEMORY_STEPS",
    "MODEL_NAMES",
    "TIMING_BUDGET_S",
    "VARIANT_NAMES",
    "BenchmarkResult",
    "GradientMismatchError",
    "ModelResult",
    "Setup",
    "TargetResult",
    "Variant",
    "VariantResult",
    "bench_device",
    "build_setup",
    "build_variant",
    "check_gradients",
    "render",
    "repeats_within",
    "run_inner_loop_benchmark",
    "time_round_robin",
    "variant_peak_memory",
    "warm_up",
]

# Seconds of timed rounds per model when --repeats is not given: the whole command
# (gradient checks, warm-up, timing, one fresh process per variant for memory) then
# stays under 90 s on 2 CPU cores. The MLP's millisecond steps get many more rounds.
TIMING_BUDGET_S = {"mlp": 5.0, "cnn1d": 12.0}
MIN_REPEATS, MAX_REPEATS = 5, 200
MEMORY_STEPS = 3
META_BATCH = 4
INNER_STEPS = 5
SEED = 0
# Largest accepted |ours - reference| relative to the gradient's scale (float32 sums
# reordered over 5 differentiated inner steps differ by ~1e-6; a real bug by >1e-2).
GRADIENT_TOLERANCE = 1e-4

Params = dict[str, Tensor]


class GradientMismatchError(AssertionError):
    """A reference computed a different meta-gradient, so its timing would mislead."""


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class _Problem:
    """A model and the few-shot tasks it is benchmarked on."""

    model: ModelConfig
    kind: str
    make_batch: Callable[[int], TaskBatch]


def _regression_batch(seed: int) -> TaskBatch:
    """4 tasks of 10 support + 10 query rows from smooth per-factory functions."""
    g = torch.Generator().manual_seed(seed)
    factories = []
    for i in range(3):
        x = torch.randn(100, 10, generator=g)
        y = torch.sin(x @ torch.randn(10, generator=g) / 3) + 0.1 * torch.randn(100, generator=g)
        factories.append(FactoryData(f"plant-{i}", x, y))
    return RegressionTaskSampler(factories, shots=10, query_size=10, seed=seed).sample(META_BATCH)


def _classification_batch(seed: int) -> TaskBatch:
    """4-way 5-shot tasks (5 query per class) of noisy 512-sample vibration-like signals."""
    g = torch.Generator().manual_seed(seed)
    classes, per_class = 6, 12
    y = torch.arange(classes).repeat_interleave(per_class)
    t = torch.linspace(0, 1, 512)
    x = torch.sin(2 * torch.pi * (5 + 3 * y[:, None]) * t) + torch.randn(len(y), 512, generator=g)
    factory = FactoryData("line-0", x.unsqueeze(1), y)
    sampler = ClassificationTaskSampler([factory], ways=4, shots=5, query_shots=5, seed=seed)
    return sampler.sample(META_BATCH)


_PROBLEMS: dict[str, _Problem] = {
    "mlp": _Problem(ModelConfig("mlp", (10,), 1, hidden=64, depth=2), "regression", _regression_batch),
    "cnn1d": _Problem(
        ModelConfig("cnn1d", (1, 512), 4, hidden=32, depth=3),
        "classification",
        _classification_batch,
    ),
}
MODEL_NAMES: tuple[str, ...] = tuple(_PROBLEMS)


@dataclass(frozen=True, eq=False)
class Setup:
    """What every variant of one model shares: model, batch, config and initial weights."""

    name: str
    model: nn.Module
    batch: TaskBatch
    config: MetaConfig
    initial: Params
    device: torch.device


def build_setup(name: str, device: torch.device, seed: int = SEED) -> Setup:
    """Deterministic in ``seed``, so a fresh process (memory runs) rebuilds the same problem."""
    problem = _PROBLEMS[name]
    torch.manual_seed(seed)
    model = build_model(problem.model).to(device).requires_grad_(False)
    config = MetaConfig(task_kind=problem.kind, inner_steps=INNER_STEPS, meta_batch_size=META_BATCH)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    return Setup(name, model, problem.make_batch(seed).to(device), config, initial, device)


# --------------------------------------------------------------------------- variants


@dataclass(eq=False)
class Variant:
    """One way to compute the meta-gradient, with its own parameters and outer Adam."""

    params: Params  # meta-parameters, named as in the model; ``compute`` fills their .grad
    compute: Callable[[], None]
    optimizer: torch.optim.Optimizer

    def step(self) -> None:
        """One full meta-step: the unit that is timed."""
        self.optimizer.zero_grad(set_to_none=True)
        self.compute()
        self.optimizer.step()

    def gradient(self) -> Params:
        """The meta-gradient at the current parameters (no optimizer step)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.compute()
        return {n: p.grad.detach().clone() for n, p in self.params.items()}


def _leaves(setup: Setup) -> Params:
    return {n: w.clone().requires_grad_() for n, w in setup.initial.items()}


def _variant(setup: Setup, params: Params, compute: Callable[[], None], extra: Sequence[Tensor] = ()) -> Variant:
    optimizer = torch.optim.Adam([*params.values(), *extra], lr=setup.config.outer_lr)
    return Variant(params, compute, optimizer)


def _build_ours(setup: Setup, algorithm: str, tasks_per_pass: int = 0) -> Variant:
    config = replace(setup.config, algorithm=algorithm, tasks_per_pass=tasks_per_pass)
    weights = _leaves(setup)
    inner_lrs: Params = {}
    if algorithm == "metasgd":
        inner_lrs = {n: t.requires_grad_() for n, t in init_inner_lrs(weights, config.inner_lr).items()}
    compute = partial(meta_step, setup.model, weights, inner_lrs, setup.batch, config)
    return _variant(setup, weights, compute, list(inner_lrs.values()))


def _loss(setup: Setup, prediction: Tensor, y: Tensor) -> Tensor:
    """One task's mean loss (``task_losses`` also accepts tensors without a task dim)."""
    return task_losses(prediction, y, setup.config.task_kind)


def _task_data(setup: Setup) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    b = setup.batch
    return zip(b.support_x, b.support_y, b.query_x, b.query_y, strict=True)


def _accumulate_grads(params: Params, grads: Sequence[Tensor], scale: float) -> None:
    for p, g in zip(params.values(), grads, strict=True):
        p.grad = g * scale if p.grad is None else p.grad.add_(g, alpha=scale)


def _handwritten_compute(setup: Setup, weights: Params, second_order: bool) -> None:
    """Textbook per-task MAML; first order takes the query gradient at the adapted parameters."""
    model, lr, tasks = setup.model, setup.config.inner_lr, setup.batch.num_tasks
    for sx, sy, qx, qy in _task_data(setup):
        fast = weights if second_order else {n: w.detach().requires_grad_() for n, w in weights.items()}
        for _ in range(setup.config.inner_steps):
            loss = _loss(setup, functional_call(model, fast, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
            with torch.set_grad_enabled(second_order):
                fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads, strict=True)}
            if not second_order:
                fast = {n: p.requires_grad_() for n, p in fast.items()}
        query = _loss(setup, functional_call(model, fast, (qx,)), qy)
        if second_order:
            (query / tasks).backward()
        else:
            _accumulate_grads(weights, torch.autograd.grad(query, list(fast.values())), 1 / tasks)


def _build_handwritten(setup: Setup, second_order: bool) -> Variant:
    weights = _leaves(setup)
    return _variant(setup, weights, partial(_handwritten_compute, setup, weights, second_order))


def _torchopt_compute(setup: Setup, net: nn.Module, inner: torchopt.MetaSGD, meta: Params, second_order: bool) -> None:
    """torchopt's documented MAML recipe; first order cuts the graph after every inner step.

    `MetaSGD.step` always differentiates with ``create_graph=True``; `stop_gradient` then
    drops that graph, which is how torchopt expresses first-order MAML.
    """
    import torchopt

    net_state = torchopt.extract_state_dict(net, by="reference", detach_buffers=True)
    inner_state = torchopt.extract_state_dict(inner, by="reference")
    tasks = setup.batch.num_tasks
    for sx, sy, qx, qy in _task_data(setup):
        for _ in range(setup.config.inner_steps):
            inner.step(_loss(setup, net(sx), sy))
            if not second_order:
                torchopt.stop_gradient(net)
                torchopt.stop_gradient(inner)
        query = _loss(setup, net(qx), qy)
        if second_order:
            (query / tasks).backward()
        else:
            _accumulate_grads(meta, torch.autograd.grad(query, list(net.parameters())), 1 / tasks)
        torchopt.recover_state_dict(net, net_state)
        torchopt.recover_state_dict(inner, inner_state)


def _build_torchopt(setup: Setup, second_order: bool) -> Variant:
    import torchopt

    net = copy.deepcopy(setup.model)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(setup.initial[name])
    net.requires_grad_(True)
    meta = dict(net.named_parameters())
    inner = torchopt.MetaSGD(net, lr=setup.config.inner_lr)
    return _variant(setup, meta, partial(_torchopt_compute, setup, net, inner, meta, second_order))


def _vmap_gradient_fn(setup: Setup, second_order: bool) -> Callable[[Params], Params]:
    """Meta-gradient as pure functions: a `torch.func.grad` inner loop vmapped over tasks."""
    from torch.func import grad, vmap

    model, lr, steps = setup.model, setup.config.inner_lr, setup.config.inner_steps
    b = setup.batch
    data = (b.support_x, b.support_y, b.query_x, b.query_y)

    def loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
        return _loss(setup, functional_call(model, params, (x,)), y)

    def adapt(params: Params, x: Tensor, y: Tensor) -> Params:
        for _ in range(steps):
            g = grad(loss)(params, x, y)
            params = {n: p - lr * g[n] for n, p in params.items()}
        return params

    def query_loss(params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        return loss(adapt(params, sx, sy), qx, qy)

    def first_order(params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Params:
        return grad(loss)(adapt(params, sx, sy), qx, qy)

    per_task = (None, 0, 0, 0, 0)
    if second_order:
        return grad(lambda p: vmap(query_loss, in_dims=per_task)(p, *data).mean())
    return lambda p: {n: g.mean(0) for n, g in vmap(first_order, in_dims=per_task)(p, *data).items()}


def _build_vmap(setup: Setup, second_order: bool) -> Variant:
    weights = _leaves(setup)
    gradient_fn = _vmap_gradient_fn(setup, second_order)

    def compute() -> None:
        grads = gradient_fn({n: w.detach() for n, w in weights.items()})
        for n, w in weights.items():
            w.grad = grads[n]

    return _variant(setup, weights, compute)


@dataclass(frozen=True)
class _Spec:
    family: str  # "ours" or the reference it belongs to
    order: int  # 2: differentiates through the inner loop; 1: first order
    build: Callable[[Setup], Variant]


_REFERENCES = {"hand-written": _build_handwritten, "torchopt": _build_torchopt, "vmap": _build_vmap}
_ORDER_SUFFIX = {2: "2nd", 1: "1st"}


def _reference(family: str, order: int) -> str:
    """Name of a reference variant, e.g. ``hand-written-2nd``."""
    return f"{family}-{_ORDER_SUFFIX[order]}"


_SPECS: dict[str, _Spec] = {
    **{a: _Spec("ours", 2, partial(_build_ours, algorithm=a)) for a in ("maml", "metasgd", "anil")},
    **{a: _Spec("ours", 1, partial(_build_ours, algorithm=a)) for a in ("fomaml", "reptile")},
    # The run setting tasks-per-pass=1: one task's graph at a time, as the hand-written loop holds.
    "maml-1-task-a-pass": _Spec("ours", 2, partial(_build_ours, algorithm="maml", tasks_per_pass=1)),
    **{
        _reference(family, order): _Spec(family, order, partial(build, second_order=order == 2))
        for family, build in _REFERENCES.items()
        for order in (2, 1)
    },
}
VARIANT_NAMES: tuple[str, ...] = tuple(_SPECS)
# Each gradient we own, and the references that must reproduce it before timing.
_GRADIENT_CHECKS = {
    ours: tuple(_reference(family, _SPECS[ours].order) for family in _REFERENCES)
    for ours in ("maml", "fomaml", "maml-1-task-a-pass")
}
TIME, MEMORY = "time", "peak memory"
# (ours, reference, measure, limit, strict): ours' median time, or peak memory, over the reference's.
_TARGETS: dict[str, tuple[tuple[str, str, str, float, bool], ...]] = {
    "mlp": (
        ("maml", "hand-written-2nd", TIME, 0.95, False),
        ("fomaml", "hand-written-1st", TIME, 0.80, False),
        ("maml", "torchopt-2nd", TIME, 1.0, True),
        ("fomaml", "torchopt-1st", TIME, 1.0, True),
    ),
    # The CNN's second-order meta-step, as a task batch and one task a pass: at most 0.75x the hand-written
    # loop's time and 2x its memory.
    "cnn1d": tuple(
        (ours, "hand-written-2nd", measure, limit, False)
        for ours in ("maml", "maml-1-task-a-pass")
        for measure, limit in ((TIME, 0.75), (MEMORY, 2.0))
    ),
}


def build_variant(name: str, setup: Setup) -> Variant:
    """A fresh variant starting from ``setup.initial``."""
    return _SPECS[name].build(setup)


def _selected_variants(with_torchopt: bool) -> list[str]:
    return [n for n in VARIANT_NAMES if with_torchopt or _SPECS[n].family != "torchopt"]


# --------------------------------------------------------------------------- checks


def check_gradients(expected: Mapping[str, Tensor], actual: Mapping[str, Tensor], *, label: str) -> float:
    """Largest scaled difference between two meta-gradients; raises if above tolerance.

    Each tensor's error is relative to its own largest entry, floored at 1e-3 of the
    largest entry overall so that a nearly-zero tensor does not turn rounding into a
    failure.
    """
    if expected.keys() != actual.keys():
        raise GradientMismatchError(f"{label}: parameter names differ: {sorted(expected)} vs {sorted(actual)}")
    overall = max(float(e.abs().max()) for e in expected.values())
    errors = {}
    for name, e in expected.items():
        scale = max(float(e.abs().max()), 1e-3 * overall, torch.finfo(e.dtype).tiny)
        error = float((actual[name].to(e) - e).abs().max()) / scale
        errors[name] = math.inf if math.isnan(error) else error
    worst_name = max(errors, key=errors.__getitem__)
    worst = errors[worst_name]
    if worst > GRADIENT_TOLERANCE:
        raise GradientMismatchError(
            f"{label}: meta-gradients disagree (scaled error {worst:.3g} in {worst_name!r}, "
            f"tolerance {GRADIENT_TOLERANCE:g}); timing them against each other would mislead"
        )
    return worst


def _check_all(setup: Setup, variants: Mapping[str, Variant]) -> dict[str, float]:
    errors = {}
    for ours, references in _GRADIENT_CHECKS.items():
        expected = variants[ours].gradient()
        for reference in (r for r in references if r in variants):
            label = f"{setup.name}: {ours} vs {reference}"
            errors[f"{ours}/{reference}"] = check_gradients(expected, variants[reference].gradient(), label=label)
    return errors


# --------------------------------------------------------------------------- timing


@contextmanager
def _gc_paused() -> Iterator[None]:
    """A collection in the middle of one variant's step would be charged to it alone."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _synchronizer(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def warm_up(steps: Mapping[str, Callable[[], None]], synchronize: Callable[[], None]) -> float:
    """Run every step once (lazy initialisation, Adam's state); returns the round's seconds."""
    start = time.perf_counter()
    for step in steps.values():
        step()
    synchronize()
    return time.perf_counter() - start


def repeats_within(budget_s: float, round_s: float) -> int:
    """Rounds that fit the time budget: many for cheap models, fewer on a loaded machine."""
    return max(MIN_REPEATS, min(MAX_REPEATS, int(budget_s / max(round_s, 1e-9))))


def time_round_robin(
    steps: Mapping[str, Callable[[], None]], *, repeats: int, synchronize: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds per call of each (warm) step, interleaved so that drifting load hits all alike.

    Each round starts one variant later, so no variant always runs right after the same one.
    """
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    with _gc_paused():
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                steps[name]()
                synchronize()
                times[name].append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- memory


def variant_peak_memory(model: str, variant: str, device: str) -> int:
    """Bytes ``MEMORY_STEPS`` meta-steps of a fresh variant need above its steady state.

    One step first creates Adam's state and pays one-time library initialisation, which
    are no part of what a meta-step costs. Module level so a ``spawn`` child can run it.
    """
    setup = build_setup(model, torch.device(device))
    built = build_variant(variant, setup)
    built.step()

    def work() -> None:
        for _ in range(MEMORY_STEPS):
            built.step()

    return peak_bytes(work, setup.device)


def _peak_memory(model: str, names: Sequence[str], device: torch.device) -> dict[str, int]:
    arguments = [(model, name, str(device)) for name in names]
    if device.type == "cuda":
        values = [variant_peak_memory(*args) for args in arguments]
    else:
        values = run_in_fresh_processes(variant_peak_memory, arguments, workers=2)
    return dict(zip(names, values, strict=True))


# --------------------------------------------------------------------------- results


@dataclass
class VariantResult:
    name: str
    family: str
    order: int
    median_ms: float
    iqr_ms: float
    peak_mib: float | None
    times_ms: list[float]


@dataclass
class TargetResult:
    numerator: str
    denominator: str
    ratio: float
    limit: float
    strict: bool
    passed: bool
    measure: str = TIME


@dataclass
class ModelResult:
    model: str
    repeats: int
    variants: dict[str, VariantResult]
    ratios: dict[str, float]  # "a/b": median(a) / median(b)
    gradient_errors: dict[str, float]
    targets: list[TargetResult] = field(default_factory=list)


@dataclass
class BenchmarkResult:
    device: str
    threads: int
    load_average: float  # 1-minute load when the run began: > 0 means others share the cores
    cpu_count: int
    torch_version: str
    torchopt_version: str | None
    meta_batch: int
    inner_steps: int
    models: list[ModelResult]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _variant_result(name: str, seconds: list[float], peak: int | None) -> VariantResult:
    ms = [s * 1e3 for s in seconds]
    quartiles = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    spec = _SPECS[name]
    mib = None if peak is None else peak / 2**20
    return VariantResult(name, spec.family, spec.order, statistics.median(ms), quartiles[2] - quartiles[0], mib, ms)


def _ratio_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Each variant vs the hand-written loop of its order; maml/fomaml also vs torchopt and vmap."""
    pairs = []
    for name in names:
        spec = _SPECS[name]
        if spec.family != "hand-written":
            pairs.append((name, _reference("hand-written", spec.order)))
        if name in _GRADIENT_CHECKS:
            pairs += [(name, _reference(family, spec.order)) for family in ("torchopt", "vmap")]
    return [(a, b) for a, b in pairs if b in names]


def _measured_ratio(measure: str, ours: str, reference: str, variants: Mapping[str, VariantResult],
                    ratios: Mapping[str, float]) -> float | None:
    """Time: the ratio of medians; peak memory: of peaks (None where either was not run or not measured)."""
    if measure == TIME:
        return ratios.get(f"{ours}/{reference}")
    peaks = [variants[name].peak_mib if name in variants else None for name in (ours, reference)]
    return None if None in peaks else peaks[0] / peaks[1]


def _targets(model: str, variants: Mapping[str, VariantResult], ratios: Mapping[str, float]) -> list[TargetResult]:
    results = []
    for numerator, denominator, measure, limit, strict in _TARGETS.get(model, ()):
        ratio = _measured_ratio(measure, numerator, denominator, variants, ratios)
        if ratio is not None:
            passed = ratio < limit if strict else ratio <= limit
            results.append(TargetResult(numerator, denominator, ratio, limit, strict, passed, measure))
    return results


def _bench_model(
    name: str,
    device: torch.device,
    repeats: int | None,
    with_torchopt: bool,
    memory: bool,
    log: Callable[[str], None],
) -> ModelResult:
    setup = build_setup(name, device)
    names = _selected_variants(with_torchopt)
    variants = {n: build_variant(n, setup) for n in names}
    log(f"{name}: checking that every reference reproduces our meta-gradient")
    errors = _check_all(setup, variants)
    steps, synchronize = {n: v.step for n, v in variants.items()}, _synchronizer(device)
    round_s = warm_up(steps, synchronize)
    repeats = repeats or repeats_within(TIMING_BUDGET_S[name], round_s)
    log(f"{name}: timing {len(names)} variants x {repeats} interleaved meta-steps")
    seconds = time_round_robin(steps, repeats=repeats, synchronize=synchronize)
    del steps, variants
    peaks: Mapping[str, int | None] = dict.fromkeys(names)
    if memory:
        log(f"{name}: measuring peak memory over {MEMORY_STEPS} meta-steps per variant")
        peaks = _peak_memory(name, names, device)
    results = {n: _variant_result(n, seconds[n], peaks[n]) for n in names}
    ratios = {f"{a}/{b}": results[a].median_ms / results[b].median_ms for a, b in _ratio_pairs(names)}
    return ModelResult(name, repeats, results, ratios, errors, _targets(name, results, ratios))


def _torchopt_version() -> str | None:
    """torchopt is optional (the ``bench`` extra): None if it is not installed."""
    if importlib.util.find_spec("torchopt") is None:
        return None
    import torchopt

    return torchopt.__version__


def bench_device(choice: str) -> torch.device:
    """``auto`` means CUDA if present, else the CPU: the two devices whose peak memory we can read."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_device(choice)


def run_inner_loop_benchmark(
    *,
    device: torch.device,
    models: Sequence[str] = MODEL_NAMES,
    repeats: int | None = None,
    memory: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> BenchmarkResult:
    """Check, time and measure every variant on each model; raises `GradientMismatchError`.

    ``repeats=None`` times as many rounds as fit in the model's `TIMING_BUDGET_S`.
    """
    unknown = [m for m in models if m not in _PROBLEMS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; valid: {', '.join(MODEL_NAMES)}")
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    version, load = _torchopt_version(), os.getloadavg()[0]
    results = [_bench_model(m, device, repeats, version is not None, memory, log) for m in models]
    return BenchmarkResult(
        device=str(device),
        threads=torch.get_num_threads(),
        load_average=load,
        cpu_count=os.cpu_count() or 1,
        torch_version=torch.__version__,
        torchopt_version=version,
        meta_batch=META_BATCH,
        inner_steps=INNER_STEPS,
        models=results,
    )


# --------------------------------------------------------------------------- output

_COLUMNS = ("variant", "order", "median ms", "IQR %", "vs hand", "vs topt", "vs vmap", "peak MiB")


def _ratio_cells(result: ModelResult, variant: VariantResult) -> list[str]:
    keys = (f"{variant.name}/{_reference(family, variant.order)}" for family in _REFERENCES)
    return [f"{result.ratios[k]:.2f}x" if k in result.ratios else "-" for k in keys]


def _variant_table(result: ModelResult, memory_note: str) -> Table:
    shape = _PROBLEMS[result.model].model
    table = Table(
        title=f"{result.model}: input {shape.input_shape}, hidden {shape.hidden}, "
        f"depth {shape.depth}; median of {result.repeats} interleaved repeats",
        caption="vs hand/topt/vmap: median / median of the hand-written, torchopt or vmap "
        "reference of the same order (< 1: faster); " + memory_note,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        caption_justify="left",
    )
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column == "variant" else "right", no_wrap=column == "variant")
    for v in result.variants.values():
        peak = "-" if v.peak_mib is None else f"{v.peak_mib:.1f}"
        table.add_row(
            v.name,
            f"{v.order}",
            f"{v.median_ms:.2f}",
            f"{100 * v.iqr_ms / v.median_ms:.0f}",
            *_ratio_cells(result, v),
            peak,
        )
    return table


def _target_table(result: ModelResult) -> Table:
    table = Table(title=f"{result.model} targets", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("ratio", "value", "target", "result"):
        table.add_column(column, justify="left" if column == "ratio" else "right")
    for t in result.targets:
        limit = f"{'<' if t.strict else '<='} {t.limit:.2f}x"
        table.add_row(f"{t.numerator} / {t.denominator} ({t.measure})", f"{t.ratio:.2f}x", limit, verdict(t.passed))
    return table


def _memory_note(device: str) -> str:
    if device.startswith("cuda"):
        return f"peak MiB: max allocated above steady state over {MEMORY_STEPS} steps"
    return f"peak MiB: peak RSS above steady state over {MEMORY_STEPS} steps, one fresh process each"


def render(result: BenchmarkResult, console: Console) -> None:
    """Print the header, then per model the gradient agreement, the table and the targets."""
    torchopt = result.torchopt_version or escape("not installed, its rows skipped (pip install -e '.[bench]')")
    console.print(
        f"[bold]inner-loop benchmark[/bold]: device {result.device}, torch {result.torch_version} "
        f"({result.threads} threads), torchopt {torchopt}. One meta-step = meta-gradient + Adam "
        f"step; {result.meta_batch} tasks, {result.inner_steps} inner steps. Load average at "
        f"start {result.load_average:.1f} on {result.cpu_count} CPUs (busy cores inflate the "
        f"IQR of multi-threaded steps most)."
    )
    for model in result.models:
        errors = ", ".join(f"{k} {v:.0e}" for k, v in model.gradient_errors.items())
        console.print(f"\n{model.model}: meta-gradients agree (scaled max error): {errors}")
        console.print(_variant_table(model, _memory_note(result.device)))
        if model.targets:
            console.print(_target_table(model))
