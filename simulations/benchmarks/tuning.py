"""``fedmeta tune``: every method's hyper-parameters searched on the training side, with one budget.

The benchmark's held-out factories and test splits are never seen: the search runs on the
data set's validation split (`FactorySplit.validation`: the last training factory is held
out in place of the real held-out ones, the others train), scored at K = 5 on
`objective` (AI4I: F1 at the factory's failure rate; other classification: query
accuracy; regression: query MSE). Every method gets the same number of optuna trials
(TPE sampler, trial n seeded with n), one seed per trial. The result file holds, per method, the best
values and the whole search log; ``fedmeta benchmark`` reads it (`load_tuned`), so a full
run never repeats the search. Committed results live in `TUNED_DIR` as ``<dataset>.json``.
Trials are recorded one by one in a journal beside the file (`journal_path`), so a search that
takes longer than one sitting (hours on 2 cores for C-MAPSS or CWRU) resumes where it stopped.

This module is imported only by the CLI commands, never by the package.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from fedmeta.common import resolve_run_config, source_from_config
from fedmeta.simulations.benchmarks.fewshot import (
    FEDERATED_METHODS,
    FEDERATED_TREES,
    HISTOGRAM_TREES,
    TARGET_K,
    BenchmarkError,
    BenchmarkPlan,
    primary_metric,
    run_seed,
)
from fedmeta.simulations.benchmarks.gradient_boosting import TREE_REFERENCES, TREE_SEARCH_SPACES
from fedmeta.simulations.benchmarks.provenance import provenance, strict_json
from fedmeta.simulations.benchmarks.search_space import Range, SearchSpace, suggest

__all__ = [
    "FEDERATED_SEARCH_SPACE",
    "FEDERATED_TREE_SEARCH_SPACE",
    "HISTOGRAM_TREE_SEARCH_SPACE",
    "SHARED_VALIDATION",
    "TUNABLE_METHODS",
    "TUNED_DIR",
    "Objective",
    "journal_path",
    "load_tuned",
    "objective_for",
    "search_space",
    "tune",
    "tuned_path",
]

TUNED_DIR = Path(__file__).resolve().parent / "tuned"
# Every federated method searches the same run settings: the inner (and fine-tuning) step size, the
# factories' local outer step size and number of local meta-steps per round (how long it trains, as the
# tree models search their number of trees), and the adaptation steps at evaluation.
FEDERATED_SEARCH_SPACE: SearchSpace = {
    "inner-lr": Range(1e-3, 0.3),
    "local-lr": Range(1e-4, 1e-2),
    "local-steps": Range(2, 50, integer=True),
    "eval-steps": Range(1, 20, integer=True),
}
# Federated trees search how each factory boosts: the rate, the trees' depth and row share, and how many trees a
# factory adds a round (with the rounds fixed, how long it trains). The adaptation recipe is not searched: the
# training factories choose it per K in the run itself.
FEDERATED_TREE_SEARCH_SPACE: SearchSpace = {
    "tree-rate": Range(0.03, 1.0),
    "tree-depth": Range(2, 8, log=False, integer=True),
    "tree-subsample": Range(0.5, 1.0, log=False),
    "local-trees": Range(1, 10, integer=True),
}
# Histogram trees are XGBoost's boosting on the pooled rows: its usual knobs, regularisation included (rows no
# longer need a row share to differ between factories).
HISTOGRAM_TREE_SEARCH_SPACE: SearchSpace = {
    "tree-rate": Range(0.01, 0.3),
    "tree-depth": Range(2, 8, log=False, integer=True),
    "local-trees": Range(2, 20, integer=True),
    "tree-min-child-weight": Range(1.0, 100.0),
    "tree-lambda": Range(0.01, 10.0),
    "tree-bins": Range(16, 256, integer=True),
}
TUNABLE_METHODS = (*FEDERATED_METHODS, *FEDERATED_TREES, *TREE_REFERENCES)
# Data sets that validate on another's validation split, so one search serves both: CWRU's fan-end
# variant reads the fan-end sensor on the held-out load only, and its training loads are CWRU's.
SHARED_VALIDATION = {"cwru-fe": "cwru"}
SAMPLER_SEED = 0
# What a method's entry records of how its draws were made (entries without it were tuned by one
# TPE sampler seeded 0 for the whole search).
SAMPLER = f"optuna TPE, trial n's sampler seeded with {SAMPLER_SEED} + n"


def search_space(method: str) -> SearchSpace:
    if method in TREE_REFERENCES:
        return TREE_SEARCH_SPACES[method]
    if method in FEDERATED_METHODS:
        return FEDERATED_SEARCH_SPACE
    if method == HISTOGRAM_TREES:
        return HISTOGRAM_TREE_SEARCH_SPACE
    if method in FEDERATED_TREES:
        return FEDERATED_TREE_SEARCH_SPACE
    raise BenchmarkError(f"method {method!r} is not tuned; choose from {', '.join(TUNABLE_METHODS)}")


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a trial is scored on, at K = `TARGET_K` on the validation factory."""

    table: str  # "field" or "scores" (the K-shot query sets)
    metric: str
    higher_is_better: bool

    def of(self, seed_run: Mapping[str, object], method: str) -> float:
        value = float(seed_run[self.table][method][TARGET_K][self.metric])
        # A diverged trial is the worst possible, not an error: optuna then steers away from it.
        return value if math.isfinite(value) else (-math.inf if self.higher_is_better else math.inf)


def objective_for(dataset: str, task_kind: str) -> Objective:
    if dataset == "ai4i":
        return Objective("field", "f1", True)
    metric, higher = primary_metric(task_kind)
    return Objective("scores", metric, higher)


def _scored_as(method: str) -> str:
    """The benchmark column a method's trial is scored by: FedAvg's is its fine-tuned model's."""
    return "fedavg+ft" if method == "fedavg" else method


def _trial_plan(plan: BenchmarkPlan, method: str, params: Mapping[str, object]) -> BenchmarkPlan:
    return dataclasses.replace(plan, methods=tuple(dict.fromkeys((method, _scored_as(method)))), shots=(TARGET_K,),
                               tuned={method: dict(params)}, validation=True, seeds=plan.seeds[:1], curves=False)


def tune_method(
    plan: BenchmarkPlan, method: str, trials: int, journal: Path, *, log: Callable[[str], None] = lambda _: None
) -> dict[str, object]:
    """``trials`` optuna trials of one method on the validation split: best values and the log.

    Every finished trial is recorded at once in ``journal`` (optuna's journal file), so a search
    stopped midway, even inside a method, resumes there: a rerun runs only the trials still
    missing. A trial the stop interrupted is dropped. Trial n's sampler is seeded with n
    (`SAMPLER_SEED` + n), so its draw depends only on its number and the trials before it: a
    resumed search draws exactly what an unbroken one draws (one sampler seeded once would
    restart its random stream on resume and repeat draws already tried), and while TPE is in its
    random start-up every method with the same search space gets the same draws.
    """
    space = search_space(method)
    objective = objective_for(plan.dataset, source_from_config(plan.run_config(plan.seeds[0])).task_kind)
    study = _study(plan, method, objective, journal)
    done = _finished(study)
    if done:
        log(f"{method}: resuming after {len(done)} of {trials} trials recorded in {journal}")

    def run(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        started = time.perf_counter()
        seed_run = run_seed(_trial_plan(plan, method, params), plan.seeds[0], lambda: None)
        value = objective.of(seed_run, _scored_as(method))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        log(f"{method} trial {len(_finished(study)) + 1}/{trials}: {objective.metric} {value:.4f} {params}")
        return value

    while len(_finished(study)) < trials:
        study.sampler = optuna.samplers.TPESampler(seed=SAMPLER_SEED + len(_finished(study)))
        study.optimize(run, n_trials=1)
    finished = _finished(study)[:trials]
    best = (max if objective.higher_is_better else min)(finished, key=lambda trial: trial.value)
    history = [{"number": number, "params": trial.params, "value": trial.value, "seconds": trial.user_attrs["seconds"]}
               for number, trial in enumerate(finished)]
    return {"best": best.params, "value": best.value, "objective": dataclasses.asdict(objective),
            "trials": history, "seconds": sum(trial["seconds"] for trial in history)}


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _search_key(plan: BenchmarkPlan, objective: Objective) -> str:
    """What a recorded trial was scored under; a journal written under another is not resumed."""
    return json.dumps({"dataset": plan.dataset, **_plan_sizes(plan), "seed": plan.seeds[0],
                       "objective": dataclasses.asdict(objective)}, sort_keys=True)


def _plan_sizes(plan: BenchmarkPlan) -> dict[str, object]:
    """The benchmark sizes a trial runs with (the trial score depends on them)."""
    sizes = ("rounds", "local_steps", "meta_batch_size", "inner_steps", "eval_tasks", "quick")
    return {key: value for key, value in dataclasses.asdict(plan).items() if key in sizes}


def _study(plan: BenchmarkPlan, method: str, objective: Objective, journal: Path) -> optuna.Study:
    """The method's study in ``journal``, new or resumed; the untuned values are always among its trials
    (enqueued first, and again if the stop interrupted that trial)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    # No sampler here: `tune_method` gives every trial its own (seeded with the trial's number).
    study = optuna.create_study(storage=storage, study_name=method, load_if_exists=True,
                                direction="maximize" if objective.higher_is_better else "minimize")
    key = _search_key(plan, objective)
    recorded = study.user_attrs.get("search")
    if recorded is None:
        study.set_user_attr("search", key)
    elif recorded != key:
        raise BenchmarkError(f"{journal} holds {method} trials of another search ({recorded}); remove that file "
                             "to start this search afresh")
    defaults = _defaults(plan, method, search_space(method))
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    started_there = any(all(trial.params.get(name) == value for name, value in defaults.items())
                        for trial in _finished(study))
    if not waiting and not started_there:
        study.enqueue_trial(defaults)
    return study


def _defaults(plan: BenchmarkPlan, method: str, space: SearchSpace) -> dict[str, object]:
    """The untuned values, clipped into the space: where the search starts."""
    if method in TREE_REFERENCES:
        values = plan.tree_params(method)
    else:
        values = resolve_run_config(plan.run_config(plan.seeds[0], method))
    return {name: min(max(values[name], r.low), r.high) for name, r in space.items() if name in values}


def tuned_path(dataset: str) -> Path:
    """Where a data set's committed tuned configuration lives (`SHARED_VALIDATION`: another's)."""
    return TUNED_DIR / f"{SHARED_VALIDATION.get(dataset, dataset)}.json"


def load_tuned(path: Path) -> dict[str, dict[str, object]]:
    """method -> best values of a tuned configuration file, checked against each method's search space."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        methods = data["methods"]
        tuned = {method: dict(entry["best"]) for method, entry in methods.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise BenchmarkError(f"{path}: not a readable tuned configuration ({error})") from error
    for method, values in tuned.items():
        unknown = set(values) - set(search_space(method))
        if unknown:
            raise BenchmarkError(f"{path}: method {method!r} has values outside its search space: {sorted(unknown)}")
    return tuned


def _write_atomically(path: Path, data: Mapping[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, allow_nan=False)
        out.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp's file is private; a configuration file is not
    os.replace(temporary, path)


def tune(
    plan: BenchmarkPlan, methods: Sequence[str], trials: int, out: Path, *, log: Callable[[str], None] = lambda _: None
) -> dict[str, object]:
    """Tune ``methods`` and add them to the configuration file ``out`` (created if absent). A method
    already in ``out`` is refused before any work, so nothing saved is overwritten. A stopped search
    resumes from `journal_path` (``out`` + ``.journal``) when run again with the same arguments."""
    if trials < 1:
        raise BenchmarkError(f"trials must be >= 1, got {trials}")
    for method in methods:
        search_space(method)
    existing: dict[str, object] = {}
    if out.exists():
        load_tuned(out)
        existing = json.loads(out.read_text(encoding="utf-8"))
        if existing.get("dataset") != plan.dataset:
            raise BenchmarkError(f"{out} holds data set {existing.get('dataset')!r}, not {plan.dataset!r}")
        clash = sorted(set(methods) & set(existing["methods"]))
        if clash:
            raise BenchmarkError(f"{out} already holds tuned values for {', '.join(clash)}; never overwritten "
                                 "(write to another --out, or remove those entries first)")
    data = {
        "dataset": plan.dataset,
        "search": f"optuna TPE (seeded), {trials} trials per method, the first at the untuned values; each trial one "
        f"seed ({plan.seeds[0]}), K={TARGET_K}, scored on the validation split (the last training factory held out)",
        "plan": _plan_sizes(plan),
        **{key: value for key, value in existing.items() if key not in ("dataset", "search", "plan", "methods")},
        "methods": dict(existing.get("methods", {})),
    }
    journal = journal_path(out)
    for method in methods:  # written after each method; the journal keeps the trials of the one under way
        data["methods"][method] = {**tune_method(plan, method, trials, journal, log=log), "sampler": SAMPLER,
                                   "provenance": provenance()}
        _write_atomically(out, strict_json(data))
        _forget(journal, method)
    return data


def journal_path(out: Path) -> Path:
    """Where ``fedmeta tune`` records the trials of the methods still under way for ``out``."""
    return out.with_name(f"{out.name}.journal")


def _forget(journal: Path, method: str) -> None:
    """Drop a method written to the configuration file from the journal; the file goes with its last method."""
    if not journal.exists():
        return
    storage = JournalStorage(JournalFileBackend(str(journal)))
    if method in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=method, storage=storage)
    if not optuna.get_all_study_names(storage):
        journal.unlink()
