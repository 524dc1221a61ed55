"""``fedmeta benchmark``: few-shot accuracy of every method on a data set's held-out factories.

For each seed and each K of the evaluation shots, on the held-out factories (never trained on):

- ``local-only``: a model trained from scratch on the K support rows only
  (`EvaluationSettings.local_only_steps`, scored by `client.rounds.evaluation.evaluate_factory`).
- ``linear``: least squares (regression) or logistic regression (classes) on the K support rows'
  inputs (a window model: the last step's channels), `common.meta.factory_choice.linear_predictor`.
- ``fedavg``: federated averaging without adaptation (the K=0 column), and ``fedavg+ft``:
  the same model fine-tuned on the K rows.
- ``maml``, ``fomaml``, ``reptile``, ``metasgd``, ``r2d2``: federated meta-learning, adapted on K rows
  (``r2d2``: its closed-form head solved on them).
- ``chosen``: the model each task keeps by cross-validation on its own K rows among the first
  meta-learner's (of `CHOSEN_WITH`) adapted and unadapted model and the linear model, the rule
  ``fedmeta adapt`` applies: what a factory ends up with.
- ``centralized-maml``: MAML meta-trained on the pooled training factories' data (one task
  sampler over all of them), with as many sampled tasks as the federated runs; the upper bound.
- ``xgb-bagging``, ``xgb-cyclic``: federated XGBoost trees (`tree_rounds`), the plan's rounds in-process
  with the client's own `tree_update` and the server's own checks and appending (bagging: every training
  factory's new trees each round; cyclic: one factory's a round, in turn). In the last round the training
  factories score the continued-boosting recipes on K-shot tasks of their rows and the lowest mean loss is
  kept for each K; a held-out factory boosts its K's recipe from the ensemble on each task's K rows, as
  `client.rounds.evaluation.evaluate_trees` does (C-MAPSS engine tables: the recipe of the K nearest the
  target engines' window count). What a factory spends on a tree round's update is timed beside one
  meta-learning round's update of the same factories (``meta-round``).
- ``trees-alone``: XGBoost on each task's K support rows and nothing else (window statistics for windows),
  from no trees, as `fedmeta adapt` and the federation's evaluation fit a factory's own trees
  (`common.trees.settings.ROWS_ALONE_TREES`: 20 trees of depth 3 at rate 0.3). What a factory gets from its
  own rows alone (scored beside ``chosen``, not in it, as `fedmeta adapt` reports it).
- ``gradient-boosting``, ``lightgbm``: tree models on the pooled training rows plus the K rows; like
  ``centralized-maml`` and ``pooled-oracle`` they pool every training factory's rows (`POOLED`), so they
  are references, not private.
- ``oracle``: a model trained from scratch on the held-out factory's own rows except every
  row of the evaluation query sets, scored on those query sets without adaptation.

``BenchmarkPlan.methods`` and ``shots`` select a slice; ``tuned`` holds each method's
hyper-parameters from ``fedmeta tune`` (`tuning`), recorded in the results with the commit,
package versions and wall time per method. The tree methods read their run settings (tree-depth,
tree-rate, tree-subsample, local-trees) from it the same way (`BenchmarkPlan.run_config`); ``fedmeta tune``
does not search them yet, so they run at the run settings' defaults.

Federated methods run the in-process loop of the scaling benchmark (`scaling.PlainLoop`):
every training factory each round, the client's own `client.app.local_update`, the
strategy's delta validation, weighted averaging and server outer optimizer. After every
round the held-out factories are scored at the target K (5), so the rounds a method needs
to reach FedAvg+FT's final K=5 score can be reported.

This module is imported only by the CLI command, never by the package.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedmeta.client import (
    LoadedFactory,
    evaluate_factory,
    factory_predictors,
    load_factories,
    local_only_adaptation,
    prepare_adaptation,
    sampler_for,
    task_sampler,
)
from fedmeta.client.rounds.trees import RECIPE_TASKS, chosen_recipe, rows_alone_trees, tree_predictor
from fedmeta.common import (
    ADAPTATION_RECIPES,
    DATASETS,
    NUM_EXAMPLES,
    RUN_SETTINGS,
    TREE_ALGORITHMS,
    DataSource,
    EvaluationSettings,
    FactoryData,
    MetaModel,
    SplitSource,
    TaskBatch,
    build_model,
    default_lr,
    evaluate_adaptation,
    expand_for_tasks,
    meta_train,
    pack_meta_parameters,
    predict,
    resolve_run_config,
    source_from_config,
    task_scores,
)
from fedmeta.common.data.datasets import TRANSFERS as CMAPSS_TRANSFERS
from fedmeta.common.meta.closed_form_head import LOGISTIC_PENALTY
from fedmeta.common.meta.factory_choice import Predictor, chosen_outputs, on_rows
from fedmeta.common.trees.continuation import TREE_RECIPES
from fedmeta.common.trees.features import WINDOW_STATISTICS
from fedmeta.common.trees.settings import ROWS_ALONE_TREES
from fedmeta.server import ServerSettings, initial_meta_parameters, weighted_metrics
from fedmeta.simulations.benchmarks.engine_shots import EngineShots
from fedmeta.simulations.benchmarks.field_metrics import FIELD_METRICS, FieldRows, field_rows, row_matches, score_field
from fedmeta.simulations.benchmarks.gradient_boosting import (
    TREE_DEFAULTS,
    TREE_REFERENCES,
    GradientBoostingReference,
)
from fedmeta.simulations.benchmarks.provenance import provenance
from fedmeta.simulations.benchmarks.reference_models import TrainedModel, train_from_scratch
from fedmeta.simulations.benchmarks.scaling import PlainLoop
from fedmeta.simulations.benchmarks.seed_records import SeedRecords, SeedSteps, Step, round_trip
from fedmeta.simulations.benchmarks.supervised import SupervisedRecipe
from fedmeta.simulations.benchmarks.tree_rounds import (
    engine_predictor,
    ensemble_of,
    ensemble_tensor,
    joined_histogram_predictor,
    meta_round_seconds,
    recipe_settings,
    run_tree_rounds,
)

__all__ = [
    "FEDERATED_METHODS",
    "FEDERATED_TREES",
    "FULL_DATA_REFERENCES",
    "HISTOGRAM_TREES",
    "JOINED_TREES",
    "METHODS",
    "POOLED",
    "REFERENCES",
    "TARGET_K",
    "TREES_ALONE",
    "TREE_METHODS",
    "BenchmarkError",
    "BenchmarkPlan",
    "available_shots",
    "plan_for",
    "primary_metric",
    "run_benchmark",
    "run_seed",
]

META_METHODS = ("maml", "fomaml", "reptile", "metasgd", "r2d2")
CHOSEN_WITH = ("r2d2", "maml", "fomaml", "reptile", "metasgd")  # whose run scores "chosen": the first run
FEDERATED_METHODS = ("fedavg", *META_METHODS)
FULL_DATA_REFERENCES = ("oracle", "pooled-oracle")
REFERENCES = (*TREE_REFERENCES, *FULL_DATA_REFERENCES)
FEDERATED_TREES = TREE_ALGORITHMS
HISTOGRAM_TREES = "xgb-histogram"
# C-MAPSS engine shots only: the new factory joins an xgb-histogram federation with its K engines (one run per K).
JOINED_TREES = "xgb-histogram-joined"
TREES_ALONE = "trees-alone"
TREE_METHODS = (*FEDERATED_TREES, JOINED_TREES, TREES_ALONE)
# What trees alone boost on the K rows: the recipe of a factory whose federation chose none.
METHODS = ("local-only", "linear", "fedavg", "fedavg+ft", *META_METHODS, "chosen", "centralized-maml", *TREE_METHODS,
           *REFERENCES)
# The methods that pool every training factory's rows in one place: references, not private.
POOLED = ("centralized-maml", *TREE_REFERENCES, "pooled-oracle")
# What comes out of FedAvg's run: its global model, fine-tuned, and the local-only and linear baselines.
FROM_FEDAVG = ("local-only", "linear", "fedavg", "fedavg+ft")
TARGET_K = 5
DEFAULT_SHOTS = (1, 5, 10, 20)
DATASET_SHOTS = {"ai4i": (1, 5, 10)}
NOT_YET = (
    "ANIL and sampling a fraction of the factories per round",
)


class BenchmarkError(RuntimeError):
    """The benchmark cannot run as asked (an existing results file, a data set too small)."""


@dataclass(frozen=True)
class BenchmarkPlan:
    """How big the benchmark is: rounds, seeds and the per-round work."""

    dataset: str
    seeds: tuple[int, ...]
    rounds: int
    quick: bool
    local_steps: int
    meta_batch_size: int
    inner_steps: int
    eval_tasks: int
    eval_steps: int
    local_only_steps: int
    oracle_steps: int
    # The engine tables' full-data references (C-MAPSS), trained by epochs with early stopping.
    reference: SupervisedRecipe = field(default_factory=SupervisedRecipe)
    family: dict[str, object] = field(default_factory=dict)
    recipe: str = "fixed"  # how held-out factories adapt (eval-recipe): fixed or cross-validated
    methods: tuple[str, ...] = METHODS  # the slice of methods to run (`--methods`)
    shots: tuple[int, ...] = ()  # the K values to score (`--shots`); empty: the data set's
    # Tuned hyper-parameters per method (run settings, or a tree library's own), from `tuning.load_tuned`.
    tuned: dict[str, dict[str, object]] = field(default_factory=dict)
    tuned_from: str = ""  # the tuned configuration's file, or "" for the defaults
    validation: bool = False  # score on the training side's validation factory (`fedmeta tune`), never held out
    curves: bool = True  # score the held-out factories after every round (False: after the last only)

    def run_config(self, seed: int, algorithm: str = "maml") -> dict[str, object]:
        """The Flower-style run config of one seed and federated algorithm, with its tuned values
        (centralized MAML runs with MAML's)."""
        tuned = self.tuned.get(algorithm, {})
        base = {
            "dataset": self.dataset,
            **self.family,
            "family-seed": seed,
            "seed": seed,
            "algorithm": algorithm,
            "num-server-rounds": self.rounds,
            "local-steps": self.local_steps,
            "meta-batch-size": self.meta_batch_size,
            "inner-steps": self.inner_steps,
            "eval-tasks": self.eval_tasks,
            "eval-steps": self.eval_steps,
            "local-only-steps": self.local_only_steps,
            "min-train-nodes": 1,
            "fraction-train": 1.0,
            "device": "cpu",
            "inner-lr": default_lr(self.dataset),
            "eval-recipe": self.recipe,
            "local-only-lr": default_lr(self.dataset),
            "validation-split": self.validation,
        }
        return base | {key: value for key, value in tuned.items() if key in RUN_SETTINGS}

    def tree_params(self, name: str) -> dict[str, object]:
        """A tree reference's hyper-parameters: tuned, else the library defaults of `TREE_DEFAULTS`."""
        return dict(self.tuned.get(name, TREE_DEFAULTS[name]))

    def hyper_parameters(self, method: str) -> dict[str, object]:
        """What ``results.json`` records of one method's hyper-parameters."""
        if method in TREE_REFERENCES:
            return self.tree_params(method)
        if method in FULL_DATA_REFERENCES:
            return {"oracle-steps": self.oracle_steps, "reference": dataclasses.asdict(self.reference)}
        if method == TREES_ALONE:  # fedmeta adapt's, never tuned (like the linear model)
            alone = ROWS_ALONE_TREES
            return {"tree-depth": alone.settings.depth, "tree-subsample": alone.settings.subsample,
                    "recipe": alone.recipe_for(1).name}
        if method in FEDERATED_TREES:
            config = resolve_run_config(self.run_config(0, method))
            keys = ("tree-depth", "tree-rate", "local-trees", *(
                ("tree-min-child-weight", "tree-lambda", "tree-bins") if method == HISTOGRAM_TREES
                else ("tree-subsample",)))
            return {**{key: config[key] for key in keys},
                    "recipe": "chosen per K by the training factories' query losses"}
        if method == "linear":  # nothing to tune: the penalty is chosen on each task's rows
            return {"ridge-penalty": "least leave-one-out error", "logistic-penalty": LOGISTIC_PENALTY}
        run = {"centralized-maml": "maml", "chosen": chosen_with(self)}.get(
            method, "fedavg" if method in FROM_FEDAVG else method)
        config = resolve_run_config(self.run_config(0, run))
        keys = ("inner-lr", "local-lr", "eval-steps", "eval-lr", "inner-steps", "local-steps", "meta-batch-size")
        if method == "local-only":
            keys = ("local-only-steps", "local-only-lr")
        return {key: config[key] for key in keys}


def plan_for(
    dataset: str,
    *,
    quick: bool,
    seeds: int | None = None,
    rounds: int | None = None,
    recipe: str = "fixed",
    methods: Sequence[str] | None = None,
    shots: Sequence[int] | None = None,
    tuned: Mapping[str, Mapping[str, object]] | None = None,
    tuned_from: str = "",
) -> BenchmarkPlan:
    """The default plan of a data set; ``quick`` is a tiny smoke-sized run; ``methods`` and ``shots``
    a slice of it; ``tuned`` the hyper-parameters per method (default: the shared defaults)."""
    if dataset not in DATASETS:
        raise BenchmarkError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    family: dict[str, object] = {}
    if dataset == "synthetic":
        family = {"family": "quality"}
        if quick:
            family.update({"num-factories": 4, "num-held-out": 2, "max-samples": 200})
    sizes = (
        dict(rounds=5, local_steps=2, meta_batch_size=2, inner_steps=2, eval_tasks=5, eval_steps=5,
             local_only_steps=20, oracle_steps=60, reference=SupervisedRecipe(batch_size=1024, max_epochs=1))
        if quick
        else dict(rounds=20, local_steps=5, meta_batch_size=4, inner_steps=5, eval_tasks=10, eval_steps=10,
                  local_only_steps=100, oracle_steps=500)
    )
    if rounds is not None:
        sizes["rounds"] = rounds
    count = seeds if seeds is not None else (1 if quick else 3)
    if count < 1 or sizes["rounds"] < 1:
        raise BenchmarkError(f"seeds and rounds must be >= 1, got {count} and {sizes['rounds']}")
    if recipe not in ADAPTATION_RECIPES:
        raise BenchmarkError(f"unknown recipe {recipe!r}; choose one of {', '.join(ADAPTATION_RECIPES)}")
    chosen = tuple(m for m in METHODS if m != JOINED_TREES or dataset in CMAPSS_TRANSFERS) if methods is None \
        else tuple(methods)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise BenchmarkError(f"unknown method(s) {unknown or 'none given'}; choose from {', '.join(METHODS)}")
    if shots is not None and (not shots or min(shots) < 1):
        raise BenchmarkError(f"shots must be K values >= 1, got {list(shots)}")
    if methods is not None and JOINED_TREES in chosen and dataset not in CMAPSS_TRANSFERS:
        raise BenchmarkError(f"{JOINED_TREES} is scored on C-MAPSS engine shots only, not on {dataset}")
    if "chosen" in chosen and not set(chosen) & set(CHOSEN_WITH):
        raise BenchmarkError(f"'chosen' is scored with a meta-learner's run: add one of {', '.join(CHOSEN_WITH)}")
    return BenchmarkPlan(dataset=dataset, seeds=tuple(range(count)), quick=quick, family=family, recipe=recipe,
                         methods=tuple(m for m in METHODS if m in chosen), shots=tuple(sorted(set(shots or ()))),
                         tuned={m: dict(v) for m, v in (tuned or {}).items()}, tuned_from=tuned_from, **sizes)


# --------------------------------------------------------------------------- pieces


def _factories(config: Mapping[str, object], role: str) -> list[LoadedFactory]:
    source = source_from_config(config)
    return [
        factory
        for node in range(source.num_nodes)
        for factory in load_factories({"partition-id": node}, config)
        if factory.role == role
    ]


def _eval_query_size(factory: LoadedFactory, settings: EvaluationSettings) -> int:
    """Rows of one class (classification) or of the task (regression) a K-shot query takes."""
    if factory.source.task_kind == "regression":
        return settings.query_size
    return max(1, settings.query_size // factory.source.model_config.output_dim)


def available_shots(factories: Sequence[LoadedFactory], settings: EvaluationSettings, wanted: Sequence[int]) -> tuple[
    int, ...
]:
    """The K values every held-out factory can supply (support + query rows; per class for classification)."""
    usable = []
    for k in wanted:
        ok = True
        for factory in factories:
            query = _eval_query_size(factory, settings)
            if factory.source.task_kind == "regression":
                ok &= factory.data.num_samples >= k + query
            else:
                counts = torch.bincount(factory.data.y, minlength=factory.source.model_config.output_dim)
                ok &= int(counts.min()) >= k + query
        if ok:
            usable.append(int(k))
    return tuple(usable)


def _evaluate(
    factories: Sequence[LoadedFactory], params: Mapping[str, Tensor], settings: EvaluationSettings
) -> dict[str, float]:
    """`evaluate_factory` on every held-out factory, averaged as the strategy does (by query rows)."""
    device = torch.device("cpu")
    return weighted_metrics([evaluate_factory(f, params, settings, device=device) for f in factories])


def primary_metric(task_kind: str) -> tuple[str, bool]:
    """The metric the query tables show and whether higher is better."""
    return ("accuracy", True) if task_kind == "classification" else ("loss", False)


def _scores(metrics: Mapping[str, float], suffix: str, prefix: str = "") -> dict[str, float]:
    return {
        name: float(metrics[f"{prefix}{name}-{suffix}"])
        for name in ("loss", "accuracy")
        if f"{prefix}{name}-{suffix}" in metrics
    }


def _bytes_per_reply(params: Mapping[str, Tensor]) -> int:
    """A reply's delta: one float32 value per global parameter value (packed; headers not counted)."""
    return sum(t.numel() * 4 for t in params.values())


@dataclass
class FederatedRun:
    final: dict[str, float]
    curve: list[float]
    bytes_sent: int
    params: dict[str, Tensor]


def _federated(
    plan: BenchmarkPlan,
    config: Mapping[str, object],
    held_out: Sequence[LoadedFactory],
    evaluation: EvaluationSettings,
    target_k: int,
    advance: Callable[[], None],
) -> FederatedRun:
    """R rounds of the plain loop, scoring the held-out factories at ``target_k`` after each."""
    loop = PlainLoop(config)
    per_round = dataclasses.replace(evaluation, shots=(target_k,), local_only_steps=0)
    metric, _ = primary_metric(held_out[0].source.task_kind)
    curve, sent = [], 0
    for round_number in range(1, plan.rounds + 1):
        sent += len(loop.factories) * _bytes_per_reply(loop.strategy.optimizer.params)
        loop.run_round()
        if plan.curves or round_number == plan.rounds:
            curve.append(_evaluate(held_out, loop.strategy.optimizer.params, per_round)[f"{metric}-k{target_k}"])
        advance()
    params = dict(loop.strategy.optimizer.params)
    return FederatedRun(_evaluate(held_out, params, evaluation), curve, sent, params)


def _centralized_maml(
    plan: BenchmarkPlan, config: Mapping[str, object], held_out: Sequence[LoadedFactory],
    evaluation: EvaluationSettings,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """MAML on one task sampler over every training factory's rows, as many tasks as a federated run:
    the held-out metrics and the meta-parameters."""
    settings = ServerSettings.from_run_config(config)
    train = _factories(config, "train")
    source = train[0].source
    rs = settings.round
    sampler = task_sampler(train, rs.shots, rs.query_size, seed=rs.seed)
    meta = dataclasses.replace(
        rs.meta_config(source.task_kind),
        local_steps=plan.rounds * rs.local_steps,
        meta_batch_size=rs.meta_batch_size * len(train),
    )
    params = initial_meta_parameters(source, "maml", rs.inner_lr, rs.seed)
    result = meta_train(build_model(source.model_config), params, sampler, meta, device="cpu")
    params = pack_meta_parameters(result.weights, {})
    return _evaluate(held_out, params, dataclasses.replace(evaluation, algorithm="maml")), params


def _query_rows(data: FactoryData, batch: TaskBatch) -> Tensor:
    """Which of the factory's rows appear in any query set of ``batch`` (a bool mask)."""
    matches = row_matches(data.x, batch.query_x)
    if not bool(matches.any(dim=1).all()):
        raise BenchmarkError(f"factory {data.name!r}: an evaluation query row was not found among its rows")
    return matches.any(dim=0)


def _enough_rows(factory: LoadedFactory, y: Tensor) -> bool:
    """Can an oracle sampler draw tasks from these rows (two of every class for classification)?"""
    if factory.source.task_kind == "regression":
        return y.numel() >= 2
    return int(torch.bincount(y, minlength=factory.source.model_config.output_dim).min()) >= 2


@dataclass(frozen=True)
class Trained:
    """A full-data reference model and its scores on the query rows."""

    scores: dict[str, float]
    reference: TrainedModel


def _train_and_score(
    plan: BenchmarkPlan, factory: LoadedFactory, batch: TaskBatch, seed: int, pooled: Sequence[FactoryData] = ()
) -> Trained:
    """A model trained from scratch on the factory's rows outside ``batch``'s query sets (plus the
    ``pooled`` factories' rows), scored on those query sets."""
    keep = ~_query_rows(factory.data, batch)
    data = FactoryData(
        f"{factory.data.name}-oracle",
        torch.cat([factory.data.x[keep], *(f.x for f in pooled)]),
        torch.cat([factory.data.y[keep], *(f.y for f in pooled)]),
    )
    reference = train_from_scratch(factory.source, data, steps=plan.oracle_steps, seed=seed)
    scores = evaluate_adaptation(reference.model, reference.weights, batch.in_factory_units(),
                                 kind=factory.source.task_kind, steps=0, lr=0.0)
    scores = {name.removeprefix("query_"): v for name, v in scores.items()} | {NUM_EXAMPLES: batch.query_y.numel()}
    return Trained(scores, reference)


Outputs = Callable[[LoadedFactory, TaskBatch, Tensor], Tensor]
"""Each task's model outputs ``[T, n, outputs]`` on field rows ``x``, given a factory's evaluation batch."""


def _task_outputs(model: MetaModel, params: Mapping[str, Tensor], x: Tensor, num_tasks: int) -> Tensor:
    with torch.no_grad():
        return predict(model, params, x.expand(num_tasks, *x.shape))


def _adapted_outputs(params: Mapping[str, Tensor], settings: EvaluationSettings, steps: int) -> Outputs:
    """What `evaluate_factory` does at each K, scored on field rows instead of the query rows."""

    def outputs(factory: LoadedFactory, batch: TaskBatch, x: Tensor) -> Tensor:
        adaptation = prepare_adaptation(factory, params, settings, device=torch.device("cpu"))
        adapted = adaptation.adapt(batch, steps, cross_validate=settings.recipe == "cross-validated")
        return _task_outputs(adaptation.model, adapted, x, batch.num_tasks)

    return outputs


def _choice_outputs(params: Mapping[str, Tensor], settings: EvaluationSettings, name: str | None) -> Outputs:
    """A factory's own predictor ``name`` of `client.rounds.evaluation.factory_predictors` (None: the one each
    task keeps by cross-validation on its K rows) on field rows."""

    def outputs(factory: LoadedFactory, batch: TaskBatch, x: Tensor) -> Tensor:
        adaptation = prepare_adaptation(factory, params, settings, device=torch.device("cpu"))
        predictors = factory_predictors(factory, adaptation, settings)
        if name is None:
            return chosen_outputs(predictors, batch, factory.source.task_kind, x)
        with torch.no_grad():
            return predictors[name](on_rows(batch, x))

    return outputs


def chosen_with(plan: BenchmarkPlan) -> str | None:
    """The federated run that scores the ``chosen`` column (`CHOSEN_WITH`), None where it is not chosen."""
    if "chosen" not in plan.methods:
        return None
    return next((method for method in CHOSEN_WITH if method in plan.methods), None)


def _local_only_outputs(settings: EvaluationSettings) -> Outputs:
    """The local-only baseline of `evaluate_factory`: from a seeded fresh model, trained on the support rows."""

    def outputs(factory: LoadedFactory, batch: TaskBatch, x: Tensor) -> Tensor:
        adaptation = local_only_adaptation(factory.source, settings)
        return _task_outputs(adaptation.model, adaptation.adapt(batch, settings.local_only_steps), x, batch.num_tasks)

    return outputs


class HeldOut:
    """One seed's held-out factories: their evaluation batches per K and their field-metric rows."""

    def __init__(self, dataset: str, factories: Sequence[LoadedFactory], evaluation: EvaluationSettings) -> None:
        self.dataset, self.factories, self.evaluation = dataset, list(factories), evaluation
        self.rows: dict[str, FieldRows | None] = {}
        for factory in self.factories:
            split = factory.source.split if isinstance(factory.source, SplitSource) else None
            test = split.test if split is not None else ()
            scale = split.target_scale if split is not None else 1.0
            self.rows[factory.data.name] = field_rows(dataset, factory.data, test, scale)

    @property
    def has_field_metrics(self) -> bool:
        return self.dataset in FIELD_METRICS

    @property
    def field_rows_are_own(self) -> bool:
        """The field rows are the factories' own (AI4I): any model trained on them must not be scored there."""
        return any(rows is not None and rows.own_rows for rows in self.rows.values())

    def batch(self, factory: LoadedFactory, k: int) -> TaskBatch:
        """The very batch `evaluate_factory` scores at this K (same sampler, seed and stream)."""
        sampler = sampler_for(factory, k, self.evaluation.query_size, seed=self.evaluation.seed, stream=f"eval-k{k}")
        return sampler.sample(self.evaluation.tasks)

    def query(self, score: Callable[[LoadedFactory, TaskBatch], list[dict[str, float]]],
              shots: Sequence[int] | None = None) -> dict[int, dict[str, float]]:
        """``score`` of every factory's evaluation batch per K (of ``shots``, default all), averaged by query rows."""
        out: dict[int, dict[str, float]] = {}
        for k in self.evaluation.shots if shots is None else shots:
            merged = weighted_metrics([record for f in self.factories for record in score(f, self.batch(f, k))])
            out[k] = {name: merged[name] for name in ("loss", "accuracy") if name in merged}
        return out

    def field(self, outputs: Outputs, shots: Sequence[int] | None = None) -> dict[int, dict[str, float]]:
        """The data set's field metrics of ``outputs`` per K, averaged over factories ({} without any)."""
        if not self.has_field_metrics:
            return {}
        out: dict[int, dict[str, float]] = {}
        for k in self.evaluation.shots if shots is None else shots:
            records = []
            for factory in self.factories:
                rows, batch = self.rows[factory.data.name], self.batch(factory, k)
                records.append(score_field(self.dataset, outputs(factory, batch, rows.x), rows, batch))
            out[k] = {name: statistics.fmean(r[name] for r in records) for name in FIELD_METRICS[self.dataset]}
        return out


@dataclass
class Scored:
    """One method's scores per K: on the K-shot query rows, and the field metrics."""

    query: dict[int, dict[str, float]]
    field: dict[int, dict[str, float]]


def _oracle(plan: BenchmarkPlan, held: HeldOut, seed: int, pooled: Sequence[FactoryData] = ()) -> Scored:
    """Per K: a model trained on each held-out factory's rows except the K-shot query rows (plus the
    ``pooled`` training factories' rows), scored on those query rows.

    Where the query sets of all tasks together use up a rare class (AI4I's variant H has
    21 failures), one oracle per task is trained instead, each without only that task's
    query rows. Field metrics only where the field rows are not the factory's own (the
    oracle trained on those).
    """
    trained: dict[tuple[str, int], Trained] = {}

    def score(factory: LoadedFactory, batch: TaskBatch) -> list[dict[str, float]]:
        if _enough_rows(factory, factory.data.y[~_query_rows(factory.data, batch)]):
            model = _train_and_score(plan, factory, batch, seed, pooled)
            trained[factory.data.name, batch.support_x.shape[1]] = model
            return [model.scores]
        return [_train_and_score(plan, factory, batch.task(t), seed, pooled).scores for t in range(batch.num_tasks)]

    def outputs(factory: LoadedFactory, batch: TaskBatch, x: Tensor) -> Tensor:
        reference = trained[factory.data.name, batch.support_x.shape[1]].reference
        params = expand_for_tasks(reference.weights, list(reference.weights), batch.num_tasks)
        return _task_outputs(reference.model, params, x, batch.num_tasks)

    query = held.query(score)
    return Scored(query, {} if held.field_rows_are_own else held.field(outputs))


def _tree(held: HeldOut, train: Sequence[FactoryData], seed: int, name: str, params: Mapping[str, object]) -> Scored:
    source = held.factories[0].source
    classes = source.model_config.output_dim if source.task_kind == "classification" else None
    reference = GradientBoostingReference(train, task_kind=source.task_kind, num_classes=classes, seed=seed,
                                          name=name, params=params)
    fitted: dict[tuple[str, int], list[object]] = {}

    def models(factory: LoadedFactory, batch: TaskBatch) -> list[object]:
        key = (factory.data.name, batch.support_x.shape[1])
        if key not in fitted:
            fitted[key] = reference.fit(batch)
        return fitted[key]

    return Scored(
        held.query(lambda factory, batch: [reference.query_scores(models(factory, batch), batch)]),
        held.field(lambda factory, batch, x: reference.predict(models(factory, batch), x)),
    )


def _query_scores(predictions: Tensor, batch: TaskBatch, kind: str) -> dict[str, float]:
    """The query scores of ``predictions`` averaged over the batch's tasks, with the query rows that weigh them."""
    scores = {name: float(values.mean()) for name, values in task_scores(predictions, batch, kind).items()}
    return scores | {NUM_EXAMPLES: batch.query_y.numel()}


TreePredictor = Callable[[LoadedFactory, int], Predictor]  # a factory's tree model for K support rows


def federated_trees(ensemble: bytes, settings: EvaluationSettings) -> TreePredictor:
    """Trees adapted as `evaluate_trees` adapts them: each K's recipe (`chosen_recipe`) boosted from ``ensemble``."""
    return lambda factory, k: tree_predictor(factory, ensemble, chosen_recipe(settings, k), settings)


def _boosted_trees(held: HeldOut, ensemble: bytes, settings: EvaluationSettings) -> Scored:
    """`federated_trees` on every task's support rows, scored on the task's query rows and on the field rows."""
    return _tree_scores(held, settings.shots, federated_trees(ensemble, settings))


def _tree_scores(held: HeldOut, shots: Sequence[int], predictor_at: TreePredictor) -> Scored:
    """Each K's tree predictor (``predictor_at(factory, K)``) scored on the tasks' query rows and on the field rows."""
    kind = held.factories[0].source.task_kind

    def at(k: int) -> Scored:
        def predictor(factory: LoadedFactory) -> Predictor:
            return predictor_at(factory, k)

        return Scored(held.query(lambda factory, batch: [_query_scores(predictor(factory)(batch), batch, kind)], (k,)),
                      held.field(lambda factory, batch, x: predictor(factory)(on_rows(batch, x)), (k,)))

    per_k = [at(k) for k in shots]
    return Scored({k: v for scored in per_k for k, v in scored.query.items()},
                  {k: v for scored in per_k for k, v in scored.field.items()})


def _rounds_to(curve: Sequence[float], target: float, higher_better: bool) -> int | None:
    for index, value in enumerate(curve, start=1):
        if (value >= target) if higher_better else (value <= target):
            return index
    return None


# --------------------------------------------------------------------------- running


def _method_evaluation(plan: BenchmarkPlan, seed: int, method: str, shots: Sequence[int]) -> EvaluationSettings:
    """The evaluation a federated method's run scores with: its own (tuned) steps and step sizes (tree methods:
    the trees' depth and row share); FedAvg's run also trains the local-only baseline where it is chosen."""
    evaluation = ServerSettings.from_run_config(plan.run_config(seed, method)).evaluation
    local_only = method == "fedavg" and "local-only" in plan.methods
    return dataclasses.replace(evaluation, shots=tuple(shots), algorithm=method,
                               local_only_steps=evaluation.local_only_steps if local_only else 0)


def _federated_runs(plan: BenchmarkPlan) -> tuple[str, ...]:
    """The federated runs the chosen methods need (FedAvg's gives fedavg, fedavg+ft and local-only)."""
    wanted = set(plan.methods)
    return tuple(m for m in FEDERATED_METHODS if m in wanted or (m == "fedavg" and wanted & set(FROM_FEDAVG)))


def _federated_step(
    plan: BenchmarkPlan, seed: int, method: str, held: HeldOut, run_eval: EvaluationSettings,
    advance: Callable[[], None],
) -> Step:
    """One federated method's run: the query scores and field metrics of the columns it gives (FedAvg's
    gives those of fedavg, fedavg+ft and local-only that are chosen), its curve and bytes sent."""
    shots = run_eval.shots
    run = _federated(plan, plan.run_config(seed, method), held.factories, run_eval, TARGET_K, advance)
    scores: dict[str, dict[int, dict[str, float]]] = {}
    field: dict[str, dict[int, dict[str, float]]] = {}
    if method == "fedavg":  # FedAvg's run scores only the columns chosen of the three it gives
        if "fedavg" in plan.methods:
            scores["fedavg"] = {0: _scores(run.final, "k0")}
            unadapted = held.field(_adapted_outputs(run.params, run_eval, 0), shots=shots[:1])
            field["fedavg"] = {0: unadapted[shots[0]]} if unadapted else {}
        if "fedavg+ft" in plan.methods:
            scores["fedavg+ft"] = {k: _scores(run.final, f"k{k}") for k in shots}
            field["fedavg+ft"] = held.field(_adapted_outputs(run.params, run_eval, run_eval.steps))
        if "local-only" in plan.methods:
            scores["local-only"] = {k: _scores(run.final, f"k{k}", "local-") for k in shots}
            field["local-only"] = held.field(_local_only_outputs(run_eval))
        if "linear" in plan.methods:
            scores["linear"] = {k: _scores(run.final, f"k{k}", "linear-") for k in shots}
            field["linear"] = held.field(_choice_outputs(run.params, run_eval, "linear"))
    else:
        scores[method] = {k: _scores(run.final, f"k{k}") for k in shots}
        field[method] = held.field(_adapted_outputs(run.params, run_eval, run_eval.steps))
        if method == chosen_with(plan):
            scores["chosen"] = {k: _scores(run.final, f"k{k}", "chosen-") for k in shots}
            field["chosen"] = held.field(_choice_outputs(run.params, run_eval, None))
    return {"scores": scores, "field": field, "federated": {"bytes_sent": run.bytes_sent, "curve": run.curve}}, \
        run.params


def _tree_run_step(
    plan: BenchmarkPlan, seed: int, method: str, held: HeldOut, evaluation: EvaluationSettings,
    advance: Callable[[], None],
) -> Step:
    """One federated tree method's rounds (`tree_rounds`), its held-out factories scored after each K's chosen
    recipe: its scores and field metrics, bytes, trees, recipes and round costs; the ensemble as its parameters."""
    config = plan.run_config(seed, method)
    run = run_tree_rounds(config, _factories(config, "train"), evaluation.shots, advance)
    summary = run.summary()
    scored = _boosted_trees(held, run.ensemble, recipe_settings(evaluation, summary["recipes"]))
    return {"scores": {method: scored.query}, "field": {method: scored.field}, "tree_rounds": {method: summary}}, \
        ensemble_tensor(run.ensemble)


def _trees_alone_step(held: HeldOut, shots: Sequence[int], seed: int) -> Step:
    """XGBoost on each task's K rows alone (`ROWS_ALONE_TREES`), as `fedmeta adapt` fits it."""
    scored = _tree_scores(held, shots, lambda factory, k: rows_alone_trees(factory, seed))
    return {"scores": {TREES_ALONE: scored.query}, "field": {TREES_ALONE: scored.field}}, None


def meta_learner(plan: BenchmarkPlan) -> str:
    """The meta-learner a tree round's cost is set beside: the plan's first of `META_METHODS`, else MAML."""
    return next((method for method in META_METHODS if method in plan.methods), META_METHODS[0])


def _meta_round_step(plan: BenchmarkPlan, seed: int) -> Step:
    """The mean seconds a training factory spends on one round's update of the plan's meta-learner."""
    algorithm = meta_learner(plan)
    config = plan.run_config(seed, algorithm)
    seconds = meta_round_seconds(config, _factories(config, "train"))
    return {"meta_round": {"algorithm": algorithm, "seconds": seconds}}, None


def _timed(compute: Callable[[], Step]) -> Step:
    """``compute()`` with its wall time in the results' ``seconds``."""
    started = time.perf_counter()
    results, params = compute()
    return {**results, "seconds": time.perf_counter() - started}, params


def run_seed(
    plan: BenchmarkPlan, seed: int, advance: Callable[[], None], steps: SeedSteps | None = None,
) -> dict[str, object]:
    """One seed of the plan's methods: their query scores and field metrics per K, federated curves,
    C-MAPSS engine tables and wall time per method (``advance`` is called after each step). With
    ``steps``, each finished step is recorded and steps recorded before are loaded instead of run."""
    steps = steps if steps is not None else SeedSteps(None, seed)
    config = plan.run_config(seed)
    held_out = _factories(config, "evaluate")
    if not held_out:
        raise BenchmarkError(f"data set {plan.dataset!r} has no held-out factories")
    task_kind = held_out[0].source.task_kind
    base = ServerSettings.from_run_config(config).evaluation
    if TARGET_K not in available_shots(held_out, base, (TARGET_K,)):
        raise BenchmarkError(f"the held-out factories of {plan.dataset!r} cannot supply K={TARGET_K} shots")
    wanted = plan.shots or DATASET_SHOTS.get(plan.dataset, DEFAULT_SHOTS)
    shots = available_shots(held_out, base, wanted)
    if not shots:
        raise BenchmarkError(f"the held-out factories of {plan.dataset!r} cannot supply any of K = {list(wanted)}")
    evaluation = dataclasses.replace(base, shots=shots)
    held = HeldOut(plan.dataset, held_out, evaluation)
    higher_better = primary_metric(task_kind)[1]
    scores: dict[str, dict] = {}
    field: dict[str, dict] = {}
    federated: dict[str, dict[str, object]] = {}
    final: dict[str, tuple[dict[str, Tensor], EvaluationSettings]] = {}
    seconds: dict[str, float] = {}

    def record(name: str, compute: Callable[[], Step], ticks: int) -> Step:
        """Run (or load) one step; a loaded step advances the progress by the ``ticks`` it advances inside."""
        results, params = steps.run(name, lambda: _timed(compute))
        if name in steps.resumed:
            for _ in range(ticks):
                advance()
        scores.update(results.get("scores", {}))
        field.update(results.get("field", {}))
        seconds[name] = results["seconds"]
        return results, params

    for method in _federated_runs(plan):
        run_eval = _method_evaluation(plan, seed, method, shots)
        results, params = record(
            method, lambda method=method, run_eval=run_eval: _federated_step(plan, seed, method, held, run_eval,
                                                                              advance), plan.rounds)
        federated[method] = results["federated"]
        final[method] = (params, run_eval)
    # The target: FedAvg+FT's K=5 score after its last round (its curve's last point), where FedAvg ran.
    target = federated["fedavg"]["curve"][-1] if "fedavg" in federated else None
    for run in federated.values():
        reached = target is not None and plan.curves
        run["rounds_to_target"] = _rounds_to(run["curve"], target, higher_better) if reached else None
    if "centralized-maml" in plan.methods:
        central_eval = _method_evaluation(plan, seed, "maml", shots)

        def centralized() -> Step:
            central, central_params = _centralized_maml(plan, plan.run_config(seed, "maml"), held_out, central_eval)
            return {"scores": {"centralized-maml": {k: _scores(central, f"k{k}") for k in shots}},
                    "field": {"centralized-maml": held.field(_adapted_outputs(central_params, central_eval,
                                                                              central_eval.steps))}}, central_params

        _, central_params = record("centralized-maml", centralized, 0)
        final["centralized-maml"] = (central_params, central_eval)
        advance()
    trees: dict[str, TreePredictor] = {}  # each tree method's model at a factory
    tree_rounds: dict[str, dict[str, object]] = {}
    for method in (m for m in FEDERATED_TREES if m in plan.methods):
        tree_eval = _method_evaluation(plan, seed, method, shots)
        results, params = record(
            method, lambda method=method, tree_eval=tree_eval: _tree_run_step(plan, seed, method, held, tree_eval,
                                                                              advance), plan.rounds)
        tree_rounds[method] = results["tree_rounds"][method]
        trees[method] = federated_trees(ensemble_of(params), recipe_settings(tree_eval, tree_rounds[method]["recipes"]))
    if TREES_ALONE in plan.methods:
        record(TREES_ALONE, lambda: _trees_alone_step(held, shots, seed), 0)
        trees[TREES_ALONE] = lambda factory, k: rows_alone_trees(factory, seed)
        advance()
    meta_round: dict[str, object] = {}
    if tree_rounds:  # a tree round's cost to a factory, beside a meta-learning round's on the same factories
        meta_round = record("meta-round", lambda: _meta_round_step(plan, seed), 0)[0]["meta_round"]
        advance()
    train = [factory.data for factory in _factories(config, "train")]
    references: dict[str, Callable[[], Scored]] = {
        name: (lambda name=name: _tree(held, train, seed, name, plan.tree_params(name))) for name in TREE_REFERENCES
    }
    references["oracle"] = lambda: _oracle(plan, held, seed)
    references["pooled-oracle"] = lambda: _oracle(plan, held, seed, pooled=train)

    def reference_step(name: str) -> Step:
        scored = references[name]()
        return {"scores": {name: scored.query}, "field": {name: scored.field}}, None

    for name in references:
        if name in plan.methods:
            record(name, lambda name=name: reference_step(name), 0)
            advance()
    engines = {}
    if plan.dataset in CMAPSS_TRANSFERS and not plan.validation:  # the engine tables adapt to the real target
        results, _ = record("engine-shots", lambda: ({"engine_shots": _engine_shots(plan, held_out[0].source, seed,
                                                                                     final, trees)}, None), 0)
        engines = results["engine_shots"]
    return {"seed": seed, "task_kind": task_kind, "shots": list(shots), "target": target, "scores": scores,
            "field": field, "engine_shots": engines, "federated": federated, "tree_rounds": tree_rounds,
            "meta_round": meta_round, "seconds": seconds,
            "held_out": [f.data.name for f in held_out], "train_factories": len(train)}


def _engine_shots(
    plan: BenchmarkPlan, source: DataSource, seed: int,
    final: Mapping[str, tuple[Mapping[str, Tensor], EvaluationSettings]],
    trees: Mapping[str, TreePredictor],
) -> dict[str, dict[int, dict[str, float]]]:
    """C-MAPSS adapted on K whole target engines (`engine_shots`), every chosen method (``trees``: each tree
    method's model at a factory, `tree_rounds.engine_predictor`)."""
    engines = EngineShots(source, seed, transfer=CMAPSS_TRANSFERS[plan.dataset])

    def adapted(run: str, steps: int | None = None) -> dict[int, dict[str, float]]:
        params, settings = final[run]
        return engines.score(engines.adapted(params, settings, settings.steps if steps is None else steps))

    makers: dict[str, Callable[[], dict[int, dict[str, float]]]] = {
        "fedavg": lambda: adapted("fedavg", 0),
        "fedavg+ft": lambda: adapted("fedavg"),
        "local-only": lambda: engines.score(engines.local_only(final["fedavg"][1])),
        **{method: (lambda method=method: adapted(method)) for method in (*META_METHODS, "centralized-maml")},
        **{method: (lambda method=method: engines.score(engine_predictor(source, trees[method])))
           for method in trees},
        **{name: (lambda name=name: engines.score(engines.gradient_boosting(seed, name, plan.tree_params(name))))
           for name in TREE_REFERENCES},
        JOINED_TREES: lambda: engines.score(joined_histogram_predictor(
            plan.run_config(seed, HISTOGRAM_TREES), [LoadedFactory(data, "train", source) for data in engines.train])),
        "oracle": lambda: engines.full_data(plan.reference),
        "pooled-oracle": lambda: engines.full_data(plan.reference, pooled=engines.train),
    }
    return {method: make() for method, make in makers.items() if method in plan.methods}


def _summary(values: Sequence[float]) -> dict[str, object]:
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def _per_seed_summary(runs: Sequence[Mapping[str, object]], key: str) -> dict[str, dict[str, dict[str, object]]]:
    """method -> K -> metric -> mean/std/values over seeds, of each run's ``key`` table."""
    first = runs[0][key]
    return {
        method: {
            str(k): {name: _summary([run[key][method][k][name] for run in runs]) for name in values}
            for k, values in first[method].items()
        }
        for method in METHODS
        if first.get(method)
    }


def _steps_per_seed(plan: BenchmarkPlan) -> int:
    """The progress ticks of one seed: a round of each federated run (trees too), and every other step."""
    federated_trees = sum(method in plan.methods for method in FEDERATED_TREES)
    rounds = (len(_federated_runs(plan)) + federated_trees) * plan.rounds
    others = ("centralized-maml", TREES_ALONE, *REFERENCES)
    return rounds + sum(name in plan.methods for name in others) + (federated_trees > 0)  # the meta-round


def _tree_round_summary(runs: Sequence[Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """Per federated tree method, over seeds: bytes sent, trees, each seed's recipes, and the seconds a factory
    spends on a tree round's update (a boosting round; the last, which also scores the recipes) beside one
    meta-learning round's update of the same factories."""
    out = {}
    for method in runs[0].get("tree_rounds", {}):
        seeds = [run["tree_rounds"][method] for run in runs]
        boosting = [entry["round_seconds"] for entry in seeds]
        out[method] = {
            "bytes_sent": _summary([entry["bytes_sent"] for entry in seeds]),
            "trees": [entry["trees"] for entry in seeds],
            "recipes": [entry["recipes"] for entry in seeds],
            "round_seconds": None if None in boosting else _summary(boosting),  # None: one round, the last
            "recipe_round_seconds": _summary([entry["recipe_round_seconds"] for entry in seeds]),
            "meta_algorithm": runs[0]["meta_round"]["algorithm"],
            "meta_round_seconds": _summary([run["meta_round"]["seconds"] for run in runs]),
        }
    return out


def _seed_on_a_node(plan: BenchmarkPlan, seed: int) -> tuple[dict[str, object], float]:
    """One seed as a task runs it (no step records: a node may not see the command's folder), and its wall time."""
    started = time.perf_counter()
    run = run_seed(plan, seed, lambda: None)
    return run, time.perf_counter() - started


def run_benchmark(
    plan: BenchmarkPlan, *, progress: Callable[[int, int], None] | None = None, records: SeedRecords | None = None,
    ray_address: str | None = None,
) -> dict[str, object]:
    """Every chosen method for every seed; results with mean and std over seeds (see the module docstring).

    With ``records``, each finished seed (and each finished step inside a seed) is written at once and
    what was recorded before is loaded instead of run; ``seconds`` is then the sum of the seeds' own
    wall times, a seed resumed midway counting its loaded steps' recorded times. With ``ray_address``, the
    seeds not recorded run as tasks on that Ray cluster (`cluster.on_the_cluster`), each recorded when it
    comes back (a seed is then the unit a stopped run resumes from), its node in ``seed_nodes``.
    """
    steps_per_seed = _steps_per_seed(plan)
    total = len(plan.seeds) * steps_per_seed
    done = 0

    def advance(steps: int = 1) -> None:
        nonlocal done
        done += steps
        if progress is not None:
            progress(done, total)

    commit = provenance()["commit"]
    ran: dict[int, tuple[dict[str, object], float, str | None]] = {}  # seed -> run, seconds, commit
    resumed: list[int] = []
    nodes: dict[str, str] = {}
    for seed in plan.seeds:
        recorded = records.load(seed) if records is not None else None
        if recorded is not None:
            resumed.append(seed)
            ran[seed] = recorded["run"], recorded["seconds"], recorded["commit"]
            advance(steps_per_seed)

    def keep(seed: int, run: dict[str, object], seconds: float, steps: SeedSteps) -> None:
        run["resumed_steps"] = steps.resumed
        saved = records.save(seed, run, seconds, commit) if records is not None else round_trip(run)
        ran[seed] = saved, seconds, commit
        steps.discard()

    to_run = [seed for seed in plan.seeds if seed not in ran]
    if ray_address:
        from fedmeta.simulations.benchmarks.cluster import on_the_cluster  # imports Ray: only for a cluster

        def finished(seed: int, outcome: tuple[dict[str, object], float], node: str) -> None:
            nodes[str(seed)] = node
            keep(seed, *outcome, SeedSteps(records, seed))
            advance(steps_per_seed)

        on_the_cluster(functools.partial(_seed_on_a_node, plan), to_run, ray_address, finished)
    else:
        for seed in to_run:
            started = time.perf_counter()
            steps = SeedSteps(records, seed)
            run = run_seed(plan, seed, advance, steps)
            # A seed resumed midway: this process's time plus the recorded time of the steps it loaded.
            resumed_seconds = sum(run["seconds"][name] for name in steps.resumed)
            keep(seed, run, time.perf_counter() - started + resumed_seconds, steps)
    runs = [ran[seed][0] for seed in plan.seeds]
    seed_seconds = [ran[seed][1] for seed in plan.seeds]
    seed_commits = [ran[seed][2] for seed in plan.seeds]
    first = runs[0]
    task_kind = str(first["task_kind"])
    metric, higher_better = primary_metric(task_kind)
    federated = {}
    for method in first["federated"]:
        reached = [run["federated"][method]["rounds_to_target"] for run in runs]
        per_round = [run["federated"][method]["bytes_sent"] / plan.rounds for run in runs]
        federated[method] = {
            "bytes_sent": _summary([run["federated"][method]["bytes_sent"] for run in runs]),
            "rounds_to_target": reached,
            "bytes_to_target": [None if r is None else r * b for r, b in zip(reached, per_round, strict=True)],
            f"{metric}_k{TARGET_K}_per_round": [run["federated"][method]["curve"] for run in runs],
        }
    targets = [run["target"] for run in runs]
    return {
        "dataset": plan.dataset,
        "task_kind": task_kind,
        "metric": metric,
        "higher_is_better": higher_better,
        "shots": list(first["shots"]),
        "methods": list(plan.methods),
        "target_k": TARGET_K,
        "target": None if None in targets else _summary(targets),
        "seeds": list(plan.seeds),
        "rounds": plan.rounds,
        "quick": plan.quick,
        "plan": dataclasses.asdict(plan),
        "hyper_parameters": {method: plan.hyper_parameters(method) for method in plan.methods},
        "tuned_from": plan.tuned_from or None,
        "provenance": provenance(),
        "held_out": first["held_out"],
        "train_factories": first["train_factories"],
        "results": _per_seed_summary(runs, "scores"),
        "field_metrics": list(FIELD_METRICS.get(plan.dataset, ())),
        "field": _per_seed_summary(runs, "field"),
        "engine_shots": _per_seed_summary(runs, "engine_shots") if first["engine_shots"] else {},
        "engine_transfer": list(CMAPSS_TRANSFERS.get(plan.dataset, ())),
        "federated": federated,
        "tree_rounds": _tree_round_summary(runs),
        "seconds": sum(seed_seconds),
        "seconds_per_seed": seed_seconds,
        "seed_commits": seed_commits,
        "resumed_seeds": resumed,
        "seed_nodes": nodes,
        "resumed_steps": {str(run["seed"]): run["resumed_steps"] for run in runs if run.get("resumed_steps")},
        "seconds_per_method": {name: [run["seconds"].get(name) for run in runs] for name in first["seconds"]},
        "notes": notes(plan, task_kind),
    }


def _engine_note(plan: BenchmarkPlan, source: str, target: str) -> str:
    return (
        f"{plan.dataset} ({source} -> {target}) K-shot columns count windows of the 5 held-out {target} engines "
        f"(scored on windows of the same engines); the engine tables count whole {target} engines (K = 1, 5, 10, "
        f"every window of each, one full-batch adaptation of the method's eval-steps) and score the official "
        f"{target} test split, true RUL capped at 125, every prediction clipped to [0, 125] "
        f"(simulations/benchmarks/engine_shots.py). Their oracle trains on the {target} training engines but 10, "
        f"a window at every cycle (pooled-oracle: plus the source factories' windows), Adam lr {plan.reference.lr}, "
        f"batch {plan.reference.batch_size}, at most {plan.reference.max_epochs} epochs, stopped after "
        f"{plan.reference.patience} without a better loss on those 10 whole validation {target} engines, the best "
        "epoch kept (simulations/benchmarks/supervised.py)."
    )


def notes(plan: BenchmarkPlan, task_kind: str) -> list[str]:
    metric, higher = primary_metric(task_kind)
    return [
        f"metric: query {metric} on the held-out factories ({'higher' if higher else 'lower'} is better), averaged "
        "over held-out factories weighted by query rows; mean +- sample std over seeds (std 0 with one seed).",
        f"each K: {plan.eval_tasks} tasks of K support rows (per class for classification) drawn from each held-out "
        f"factory, adapted with {plan.eval_steps} steps at eval-lr"
        + (" (fixed recipe)" if plan.recipe == "fixed" else
           "; recipe cross-validated: each task's steps and step size chosen on folds of its own support rows "
           "(no adaptation a candidate; C-MAPSS folds hold out whole engines)")
        + "; K=0 is the global model without adaptation.",
        f"federated: {plan.rounds} rounds, every training factory each round, {plan.local_steps} local meta-steps of "
        f"{plan.meta_batch_size} tasks, {plan.inner_steps} inner steps; server: weighted delta average + SGD lr 1 "
        "(FedAvg); the same local_update, check_delta and apply_deltas as the Flower strategy.",
        "bytes: sum over rounds and replies of the delta's float32 tensor sizes (Meta-SGD also sends its inner rates).",
        f"rounds-to-target: first round whose held-out K={TARGET_K} {metric} reaches FedAvg+FT's final K={TARGET_K} "
        "value of the same seed (None / 'not reached' otherwise; for fedavg+ft the round it first reaches its own "
        "final value); MB to target: those rounds' bytes, per seed.",
        f"local-only: from scratch (seeded init) on the K support rows, {plan.local_only_steps} SGD steps at "
        "local-only-lr.",
        "centralized-maml: MAML on one task sampler over all training factories' pooled rows, rounds x local-steps "
        "meta-steps of meta-batch x training-factories tasks (as many tasks as a federated run), then adapted on K.",
        f"oracle: per K and held-out factory, the exact evaluation batch is redrawn (one oracle per task where the "
        f"query sets together use up a rare class); every row appearing in any of "
        f"its query sets is removed from the factory, a model is trained from the same seeded init on all remaining "
        f"rows (support rows included; {plan.oracle_steps} Adam steps, lr 1e-3, each on the pooled rows "
        "of 4 sampled tasks of up to 32 rows (regression) or up to 16 rows per class (classification, "
        "class-balanced)) and scored on those query sets without adaptation.",
        "tree models: scikit-learn HistGradientBoosting (gradient-boosting) and LightGBM (lightgbm), no early "
        "stopping, classes weighted to balance (as the query sets are), per task on the training factories' pooled "
        "rows plus the task's K support rows, scored on the same query rows; windows become per-channel statistics ("
        + ", ".join(WINDOW_STATISTICS) + "), table rows are used as they are.",
        f"federated trees (xgb-bagging, xgb-cyclic, xgb-histogram): {plan.rounds} rounds of XGBoost in-process, each "
        "factory's tree_update and the server's check_reply and append_replies as TreeStrategy runs them: bagging "
        "appends every training factory's new trees each round (each boosted at the rate divided among them), cyclic "
        f"one factory's a round, in turn by factory key. In the last round each training factory scores the recipes "
        f"({', '.join(recipe.name for recipe in TREE_RECIPES)}: trees x rate) on {RECIPE_TASKS} K-shot tasks of "
        "its rows and the lowest mean query loss is kept for each K; each held-out task boosts the recipe of the "
        "nearest K from the ensemble on its K support rows. xgb-histogram: each round local-trees boosting rounds "
        "whose trees the server grows level by level on the sum of every training factory's gradient histograms "
        "(tree-bins bins a column, the edges from the factories' weighted column sketches), XGBoost's hist "
        "boosting on their pooled rows; adapted and scored as the other federated trees; MB sent: the sketches and "
        "histograms (float64). "
        f"{JOINED_TREES} (C-MAPSS engine shots): the new factory's K engines join the training factories in one "
        "xgb-histogram run per K, and its ensemble predicts the test split unadapted. trees-alone: "
        f"{ROWS_ALONE_TREES.recipe_for(1).name} at depth {ROWS_ALONE_TREES.settings.depth} from no trees on the K "
        "support rows, as fedmeta adapt's trees alone. The same features as "
        "the tree models; MB sent: the new trees' XGBoost JSON over rounds and replies.",
        "round cost (federated trees): the mean seconds of one factory's tree_update in the rounds before the last "
        "(the last also scores the recipes, shown apart) beside one local_update of "
        f"{meta_learner(plan)} on each training factory from the seeded first global model (after one untimed "
        "update: a process's first costs tens of times more).",
        f"private: {', '.join(POOLED)} pool every training factory's rows in one place, so they are references, "
        "not private (the query table's last column); every other method sees only a factory's own rows, or what "
        "a federation sends (deltas, new trees).",
        "hyper-parameters: "
        + (f"tuned by `fedmeta tune` on the training side's validation factory ({plan.tuned_from}) for "
           + ", ".join(sorted(plan.tuned)) + "; the others at the shared defaults" if plan.tuned else
           "the shared defaults for every method (no tuned configuration)")
        + " (results.json: hyper_parameters). The oracles, local-only, linear and trees-alone are never tuned; "
        "the federated trees run at the run settings' tree defaults (the tuner has no search space for them); "
        "chosen uses the "
        "hyper-parameters of the run it comes from.",
        "linear: least squares (ridge, the penalty of least leave-one-out error on the K rows) or logistic regression "
        "(L2 penalty 1, 10 Newton steps) on each task's K support rows, on the factory-scaled inputs (windows: the "
        "last step's channels).",
        f"chosen: each task keeps, by 5-fold cross-validation on its own K support rows (strict least error), one "
        f"of the adapted and the unadapted model of the first of {'/'.join(CHOSEN_WITH)} in the plan, and linear: "
        "the rule `fedmeta adapt` applies, so what a factory ends up with.",
        "field metrics (ai4i: F1/AUROC/Brier/threshold; cmapss: RMSE/NASA in cycles): each evaluation task's "
        "adapted model scores the field rows (ai4i: the held-out factory's rows minus that task's support rows, at "
        "the natural failure rate; cmapss: the official test split); mean over tasks. ai4i decisions are made at "
        "the factory's failure rate (its share of failed rows, known from its history): every model is trained "
        "or adapted at equal class priors, its probabilities are shifted to that rate and the failure threshold "
        "maximises the expected F1 on the scored rows, unlabelled (common/package/decision.py); the oracles trained on "
        "ai4i's field rows have none there. Compare ai4i's F1 within a K, not across: each task's K support "
        "failures leave the scored rows (H has 21), so at K=10 about half of them are gone and F1 falls with K "
        "for every method, the tree models included.",
        "pooled-oracle: as oracle, but trained on the training factories' pooled rows too (the stronger "
        "full-data reference where the held-out factory has few rows of a class).",
        "nan: the method's loss diverged at its hyper-parameters (e.g. Meta-SGD's learned step sizes on "
        f"C-MAPSS); untuned step sizes: inner, fine-tuning and local-only lr {default_lr(plan.dataset)} "
        "(fedmeta.common.run_settings.default_lr).",
        *([_engine_note(plan, *CMAPSS_TRANSFERS[plan.dataset])] if plan.dataset in CMAPSS_TRANSFERS else []),
        "seed s: run seed, synthetic family seed and the cmapss/cwru split seed (ai4i's split is fixed).",
        "not yet: " + "; ".join(NOT_YET) + ".",
    ]
