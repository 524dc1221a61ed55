"""Every run setting, declared once: name, type, default, help and which component reads it.

A run's settings travel as a Flower run config (``[tool.flwr.app.config]`` in
pyproject.toml, ``flwr run . --run-config``, ``fedmeta server --run-config`` and the
``fedmeta simulate`` flags all fill the same keys). This table is the only place that
gives them defaults: the server's, the round's and the evaluation's settings are built
from `resolve_run_config`, pyproject.toml's table is checked against it by a test, and
the simulate flags take their defaults and help from it.

A few defaults depend on the data (``0`` or ``""`` means *automatic*): the inner step
size comes from the data set (`DATASET_LR`), the evaluation and local-only step sizes
follow the inner one, and the evaluation shots are those every held-out factory of the
data can supply (`DATA_EVAL_SHOTS`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from fedmeta.common.validation import check_choice

__all__ = [
    "ADAPTATION_RECIPES",
    "AGGREGATIONS",
    "COMPRESSIONS",
    "DATASETS",
    "DATASET_LR",
    "DATA_EVAL_SHOTS",
    "FEDERATED_ALGORITHMS",
    "READERS",
    "RUN_SETTINGS",
    "TASK_KINDS",
    "TREE_ALGORITHMS",
    "Setting",
    "UnknownSettingError",
    "app_config_defaults",
    "check_run_config",
    "default_lr",
    "is_tree_algorithm",
    "parse_shots",
    "resolve_run_config",
]

SettingValue = bool | int | float | str

# Who reads a setting: the ServerApp, the ClientApp, or only the in-process simulation harness.
READERS = ("server", "client", "simulation")

DATASETS = ("synthetic", "ai4i", "cmapss", "cmapss-fd004", "cwru", "cwru-fe")
ADAPTATION_RECIPES = ("fixed", "cross-validated")
# The server's ways of combining deltas (`server.strategy.aggregation`) and the factories' delta encodings
# (`common.federation.compression`), named here so that reading run settings never imports torch.
AGGREGATIONS = ("mean", "median", "trimmed-mean", "krum", "multi-krum", "capped-mean")
COMPRESSIONS = ("none", "fp16", "int8", "topk")
# What a model predicts: a number, or a class (`common.meta.losses`); a table's schema names one.
TASK_KINDS = ("regression", "classification")
# Federated gradient-boosted trees (`common.trees`): every factory's new trees appended each round
# (bagging), or one factory's a round in turn (cyclic), as Flower's FedXgbBagging and FedXgbCyclic; or trees
# the server grows level by level on the sum of every factory's gradient histograms (histogram).
TREE_ALGORITHMS = ("xgb-bagging", "xgb-cyclic", "xgb-histogram")
# What a user picks; "fedavg" is the baseline whose local work is plain training.
FEDERATED_ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "anil", "r2d2", "fedavg", *TREE_ALGORITHMS)
# Step sizes that keep the real data sets' models stable: on CWRU's raw windows first-order
# MAML at 0.05 collapses to chance after ~150 meta-steps while 0.01 reaches ~98% (5-shot,
# held-out load). C-MAPSS' TCN normalises its features (see `common.meta.models.TCN`), so single
# windows fine-tune stably up to 0.1; 0.01 as for the other real data sets.
DATASET_LR = {"synthetic": 0.05, "ai4i": 0.01, "cwru": 0.01, "cwru-fe": 0.01, "cmapss": 0.01, "cmapss-fd004": 0.01}
# K values every held-out factory can supply, where fewer than 1,5,10,20: synthetic fault
# factories hold >= 10 windows per class; AI4I's variant H has only 21 failures.
DATA_EVAL_SHOTS = {"fault": "1,5", "ai4i": "1,5,10"}
_EVAL_SHOTS = "1,5,10,20"


def is_tree_algorithm(algorithm: str) -> bool:
    """Whether ``algorithm`` federates trees (`TREE_ALGORITHMS`) rather than a network."""
    return algorithm in TREE_ALGORITHMS


@dataclass(frozen=True)
class Setting:
    """One run-config key (dashes, as Flower spells them)."""

    name: str
    default: SettingValue
    help: str
    readers: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.readers or not set(self.readers) <= set(READERS):
            raise ValueError(f"setting {self.name!r}: readers must be some of {READERS}, got {self.readers}")

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def in_app(self) -> bool:
        """Read by the Flower apps, so `flwr run .` must accept it (pyproject.toml lists it)."""
        return "server" in self.readers or "client" in self.readers


_SERVER, _CLIENT, _BOTH, _SIM = ("server",), ("client",), ("server", "client"), ("simulation",)

_TABLE = (
    # The run
    Setting("algorithm", "maml", "Algorithm: maml, fomaml, reptile, metasgd, anil, r2d2, fedavg, or federated "
            "XGBoost trees: xgb-bagging (every factory's new trees each round), xgb-cyclic (one factory a round) or "
            "xgb-histogram (trees grown on every factory's gradient histograms, as boosting on their pooled rows).",
            _SERVER),
    Setting("compare-with", "", "Baselines trained in the same run on the same factories (comma-separated).", _SERVER),
    Setting("num-server-rounds", 10, "Federated rounds.", _SERVER),
    Setting("run-dir", "runs/latest", "Run folder: config, metrics per round, checkpoints.", _SERVER),
    Setting("resume", False, "Continue the run in run-dir from its last checkpoint.", _SERVER),
    Setting("seed", 0, "Seed for the model, task sampling and factory sampling.", _BOTH),
    Setting("device", "auto", "Where factories train: auto (CUDA, then MPS, then CPU), cpu, cuda or mps.", _CLIENT),
    # Where the factories come from
    Setting("schema", "", "A federation table schema (JSON); empty: each factory's own, or no tables.", _BOTH),
    Setting("dataset", "synthetic", "Synthetic factories or a shared real data set: " + ", ".join(DATASETS) + ".",
            _BOTH),
    Setting("family", "quality", "Synthetic factory family: quality (regression) or fault (classification).", _BOTH),
    Setting("num-factories", 12, "Synthetic training factories.", _BOTH),
    Setting("num-held-out", 4, "Synthetic factories that never train; they evaluate.", _BOTH),
    Setting("min-samples", 40, "Fewest rows of a synthetic factory.", _BOTH),
    Setting("max-samples", 400, "Most rows of a synthetic factory.", _BOTH),
    Setting("family-seed", 0, "Seed of the synthetic family.", _BOTH),
    Setting("factories-per-node", 1, "Factories one simulated node serves (each still sends its own delta).", _BOTH),
    Setting("validation-split", False, "Hyper-parameter search on the training side: the last training factory "
            "evaluates in place of the held-out factories, which are never loaded.", _BOTH),
    # A factory's local work each round
    Setting("inner-steps", 5, "Inner-loop adaptation steps.", _SERVER),
    Setting("inner-lr", 0.0, "Inner-loop and fine-tuning step size; 0: the data set's ("
            + ", ".join(f"{name} {lr}" for name, lr in DATASET_LR.items()) + ").", _SERVER),
    Setting("local-steps", 5, "Local meta-steps per round.", _SERVER),
    Setting("local-lr", 0.001, "Factories' local outer (Adam) step size.", _SERVER),
    Setting("meta-batch-size", 4, "Tasks per local meta-step.", _SERVER),
    Setting("tasks-per-pass", 0, "Second-order meta-steps (maml, metasgd, anil): tasks whose graphs are held in "
            "memory at once; 0: the whole meta-batch. Fewer bound a large model's memory; the step is the same.",
            _SERVER),
    Setting("shots", 5, "Support samples per training task (per class for classification).", _SERVER),
    Setting("query-size", 15, "Query samples per training task.", _SERVER),
    # A factory's local work each round, tree algorithms
    Setting("tree-depth", 6, "Trees: the depth of each tree.", _SERVER),
    Setting("tree-rate", 0.1, "Trees: the boosting rate (xgb-bagging divides it among the round's factories).",
            _SERVER),
    Setting("tree-subsample", 0.8, "Trees: the share of a factory's rows each tree sees.", _SERVER),
    Setting("local-trees", 1, "Trees: boosting rounds each factory adds per federated round (xgb-histogram: the "
            "federation grows per round).", _SERVER),
    Setting("tree-min-child-weight", 1.0, "Trees: the least hessian sum a leaf holds (squared error: rows).",
            _SERVER),
    Setting("tree-lambda", 1.0, "Trees: the L2 penalty on leaf weights.", _SERVER),
    Setting("tree-bins", 64, "Trees, xgb-histogram: the bins each column's values fall in (2-256; more: finer "
            "splits, larger histograms).", _SERVER),
    # The server's aggregation
    Setting("outer-optimizer", "sgd", "Server optimizer: sgd, momentum or adam.", _SERVER),
    Setting("outer-lr", 1.0, "Server step size (sgd 1.0 = plain averaging of deltas).", _SERVER),
    Setting("fraction-train", 1.0, "Fraction of the training factories sampled per round.", _SERVER),
    Setting("min-train-nodes", 2, "Fewest training factories a round needs.", _SERVER),
    Setting("max-delta-norm", 100.0, "A delta with a larger L2 norm is rejected (trees: a tree with a larger leaf "
            "value).", _SERVER),
    Setting("aggregation", "mean", "How accepted deltas combine: " + ", ".join(AGGREGATIONS) + " (mean: weighted by "
            "claimed examples; the others resist factories that send flipped, scaled or noisy deltas or claim too "
            "many examples: see server/strategy/aggregation.py).", _SERVER),
    Setting("trim-fraction", 0.2, "trimmed-mean: the share of values dropped at each end, per coordinate.", _SERVER),
    Setting("krum-malicious", 0, "krum, multi-krum: factories assumed malicious (f).", _SERVER),
    Setting("krum-select", 0, "multi-krum: deltas averaged (0: all but krum-malicious).", _SERVER),
    Setting("dp-noise-multiplier", 0.0, "Client-level differential privacy: Gaussian noise of this multiple of "
            "dp-clip-norm on the sum of the round's clipped deltas (0: off; needs aggregation 'mean'; with "
            "secure-aggregation each factory adds its share).", _SERVER),
    Setting("dp-clip-norm", 1.0, "DP: every delta is clipped to this L2 norm before averaging.", _SERVER),
    Setting("dp-delta", 1e-5, "DP: the delta at which the accountant reports epsilon after every round.", _SERVER),
    Setting("secure-aggregation", False, "The server learns only the weighted sum of a round's deltas, never one "
            "factory's (needs aggregation 'mean', no compression, one factory a node; DP noise then comes from the "
            "factories).", _SERVER),
    Setting("secagg-threshold", 0.6, "Secure aggregation: the share of a round's factories whose key shares unmask "
            "it; with fewer left the round fails and the model is unchanged.", _SERVER),
    Setting("secagg-plus", False, "Secure aggregation as SecAgg+: each factory masks and shares only with its "
            "neighbours in a random graph of degree O(log n), sized for secagg-dropout and secagg-corruption, so its "
            "cost grows with log n, not n (off: every factory with every other).", _SERVER),
    Setting("secagg-dropout", 0.1, "SecAgg+: the largest share of a round's factories assumed to drop out.", _SERVER),
    Setting("secagg-corruption", 0.1, "SecAgg+: the largest share of a round's factories assumed to collude with "
            "the server.", _SERVER),
    Setting("secagg-max-weight", 10000.0, "Secure aggregation: the most examples one delta weighs (more count as "
            "this).", _SERVER),
    Setting("compression", "none", "How factories encode their deltas: " + ", ".join(COMPRESSIONS) + " (int8: one "
            "scale per tensor; topk: the largest topk-fraction of each tensor, the rest carried to the next round).",
            _SERVER),
    Setting("topk-fraction", 0.01, "topk: the share of each tensor's values a factory sends.", _SERVER),
    Setting("weight-cap", 0.0, "capped-mean: most examples one delta counts for (0: the round's median claim).",
            _SERVER),
    Setting("timeout", 600.0, "Seconds a round waits for replies.", _SERVER),
    Setting("wait-for-factories", 0, "Factories round 1 waits for (0: min-train-nodes).", _SERVER),
    # Evaluation on held-out factories
    Setting("eval-every", 0, "Evaluate every N rounds (0: only after the last round).", _SERVER),
    Setting("eval-shots", "", "K values to adapt on (comma-separated); empty: " + _EVAL_SHOTS + ", or what the "
            "data can supply (" + "; ".join(f"{data} {k}" for data, k in DATA_EVAL_SHOTS.items()) + ").", _SERVER),
    Setting("eval-steps", 10, "Adaptation steps on the K rows.", _SERVER),
    Setting("eval-lr", 0.0, "Adaptation step size; 0: inner-lr.", _SERVER),
    Setting("eval-recipe", "fixed", "How a factory adapts: " + ", ".join(ADAPTATION_RECIPES) + " (fixed: eval-steps "
            "at eval-lr; cross-validated: steps and step size chosen per task on folds of its own support rows, "
            "no adaptation a candidate).", _SERVER),
    Setting("eval-tasks", 10, "Tasks scored per held-out factory and K.", _SERVER),
    Setting("eval-query-size", 10, "Query rows per evaluation task.", _SERVER),
    Setting("local-only-steps", 0, "Steps of the local-only baseline trained from scratch on the K rows (0: off).",
            _SERVER),
    Setting("local-only-lr", 0.0, "Step size of the local-only baseline; 0: inner-lr.", _SERVER),
    # The simulation harness only
    Setting("tables", "", "Factory tables to simulate, one factory per file (a glob such as 'plants/*.csv'; needs "
            "schema); empty: none.", _SIM),
    Setting("held-out-tables", "", "Tables (file names without suffix, comma-separated) that never train and "
            "evaluate.", _SIM),
    Setting("inject-faults", "", "Make simulated factories misbehave: PARTITION:FAULT, comma-separated; FAULT is "
            "crash, nan or shape (caught by the delta checks) or the attack sign-flip, scaled, noise (inside "
            "max-delta-norm) or claim (a million times its examples).", _SIM),
)

RUN_SETTINGS: Mapping[str, Setting] = {setting.name: setting for setting in _TABLE}


class UnknownSettingError(ValueError):
    """A run-config key that no component reads (a typo, usually)."""


def _unknown(key: str) -> UnknownSettingError:
    close = difflib.get_close_matches(key, list(RUN_SETTINGS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known settings: {', '.join(RUN_SETTINGS)}"
    return UnknownSettingError(f"unknown run setting {key!r}{hint}")


def _typed(setting: Setting, value: object) -> SettingValue:
    """``value`` as the setting's type: ints are accepted for floats, nothing else is converted."""
    kind = setting.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise ValueError(f"run setting {setting.name!r} must be {names[kind]}, got {value!r}")


def check_run_config(config: Mapping[str, object], *, app: bool = False) -> dict[str, SettingValue]:
    """The keys of ``config``, each known and of its setting's type; no defaults added.

    ``app``: the run goes to the Flower apps (``fedmeta server``), where settings that only
    the simulation harness reads would be silently ignored, so they are refused too.
    """
    for key in config:
        if key not in RUN_SETTINGS:
            raise _unknown(key)
        if app and not RUN_SETTINGS[key].in_app:
            raise UnknownSettingError(f"run setting {key!r} applies to `fedmeta simulate` only, not to a deployment")
    return {key: _typed(RUN_SETTINGS[key], value) for key, value in config.items()}


def default_lr(dataset: str) -> float:
    """The inner-loop (and fine-tuning) step size a data set runs at unless one is given."""
    check_choice("dataset", dataset, DATASETS)
    return DATASET_LR[dataset]


def parse_shots(value: str, name: str = "eval-shots") -> tuple[int, ...]:
    """K values as ``"1,5,10"`` (Flower run configs hold no lists); ``name`` is what an error calls them."""
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError as error:
        raise ValueError(f"{name} must be comma-separated integers, got {value!r}") from error


def resolve_run_config(config: Mapping[str, object]) -> dict[str, SettingValue]:
    """Every setting: ``config``'s value (checked) or the default, automatic values filled in."""
    values = {name: setting.default for name, setting in RUN_SETTINGS.items()} | check_run_config(config)
    if not values["inner-lr"]:
        values["inner-lr"] = default_lr(str(values["dataset"]))
    for key in ("eval-lr", "local-only-lr"):
        values[key] = values[key] or values["inner-lr"]
    if not values["eval-shots"]:
        data = values["family"] if values["dataset"] == "synthetic" else values["dataset"]
        values["eval-shots"] = DATA_EVAL_SHOTS.get(str(data), _EVAL_SHOTS)
    return values


def app_config_defaults() -> dict[str, SettingValue]:
    """``[tool.flwr.app.config]``: the default of every setting the Flower apps read."""
    return {name: setting.default for name, setting in RUN_SETTINGS.items() if setting.in_app}
