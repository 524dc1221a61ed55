"""The names a round's messages use, on both sides: record keys, their fields, factory roles.

The server (`fedmeta.server.strategy.fedmeta`) writes what the factories (`fedmeta.client.app`)
read and the other way round; both take the names from here, so a renamed key cannot
leave one side behind. Flower itself is not imported: these are plain strings.

- to a factory: ``meta-parameters`` (an ArrayRecord: weights and Meta-SGD rates) and
  ``config`` (a ConfigRecord: the round's or the evaluation's settings);
- from a factory: ``delta`` (``local - global``, an ArrayRecord) and ``metrics`` (a
  MetricRecord with ``num-examples``, the weight of its delta);
- a ``query`` reply: ``role`` (``role`` and ``factory``), or, from a node serving several
  factories, ``factories`` (``names`` and ``roles``); messages to such a node carry
  ``factories`` (``names``) and the replies hold each factory's records under
  ``<record>/<factory>`` (`factory_key`);
- after the last round, a ``query.model`` message (`MODEL_DELIVERY`) to every factory node:
  ``meta-parameters`` and ``config`` with the package's ``manifest`` (JSON text); the
  factory stores the package (`fedmeta.client.rounds.package`) and replies ``metrics`` with
  ``stored`` (1 stored or already there, 0 where the node names no model folder).
"""

from __future__ import annotations

__all__ = [
    "BIN_EDGES",
    "CONFIG",
    "DEFAULT_CONTROL_PORT",
    "DEFAULT_PORT",
    "DEFAULT_RUNTIME_PORT",
    "DELTA",
    "ENSEMBLE",
    "FACTORIES",
    "FACTORY",
    "HISTOGRAMS",
    "LEVEL_SPLITS",
    "MANIFEST",
    "MASKED",
    "META_PARAMETERS",
    "METRICS",
    "MODEL_DELIVERY",
    "NAMES",
    "NUM_EXAMPLES",
    "OPENS_ROUND",
    "PARAMETER_LAYOUT",
    "ROLE",
    "ROLES",
    "ROLES_FIELD",
    "SECAGG",
    "SECAGG_KEYS",
    "SECAGG_REVEAL",
    "SECAGG_SHARES",
    "SKETCH",
    "STORED",
    "TREES",
    "TREE_EXCHANGE",
    "TREE_EXCHANGES",
    "TREE_EXCHANGE_FIELDS",
    "TREE_HISTOGRAMS",
    "TREE_RECIPES",
    "TREE_SKETCH",
    "factory_key",
    "is_delta_key",
]

META_PARAMETERS = "meta-parameters"
PARAMETER_LAYOUT = "meta-parameters-layout"  # the names and shapes of the packed global model
CONFIG = "config"
DELTA = "delta"
METRICS = "metrics"
# Tree algorithms: the global ensemble the server sends, and the new trees a factory replies with (both
# XGBoost JSON models as one uint8 array: `common.trees.ensemble`).
ENSEMBLE = "ensemble"
TREES = "trees"
NUM_EXAMPLES = "num-examples"

# xgb-histogram (`common.trees.split_finding`): its exchanges (the columns' sketches once, then each level of each
# round's trees, then the recipes' losses in the last round). The server sends the ensemble, the shared bin edges
# (``bin-edges``, one float32 array) and, in the config, the level's splits (``level-splits``, JSON text) and
# whether the exchange opens a round (``opens-round``: a factory's policy counts that one); a factory replies
# with its ``sketch`` (one array, and ``metrics`` with its rows) or its ``histograms`` (one array per tree group).
TREE_SKETCH, TREE_HISTOGRAMS, TREE_RECIPES = "train.tree_sketch", "train.tree_histograms", "train.tree_recipes"
TREE_EXCHANGES = (TREE_SKETCH, TREE_HISTOGRAMS, TREE_RECIPES)
TREE_EXCHANGE = "tree-exchange"  # the config's field naming the exchange
BIN_EDGES = "bin-edges"
LEVEL_SPLITS = "level-splits"
OPENS_ROUND = "opens-round"
TREE_EXCHANGE_FIELDS = (TREE_EXCHANGE, LEVEL_SPLITS, OPENS_ROUND)  # an exchange's config beside the round's settings
SKETCH = "sketch"
HISTOGRAMS = "histograms"

# The query reply and the records of a node serving several factories.
ROLE = "role"
FACTORY = "factory"
FACTORIES = "factories"
NAMES = "names"
ROLES_FIELD = "roles"

# The final model package, delivered to every factory after the last round.
MODEL_DELIVERY = "query.model"
MANIFEST = "manifest"
STORED = "stored"

# A secure round (`server.secure_round`): its three extra message types, the record that carries the
# protocol's fields both ways, and the reply's record of a masked input (sent instead of ``delta``).
SECAGG_KEYS, SECAGG_SHARES, SECAGG_REVEAL = "train.secagg_keys", "train.secagg_shares", "train.secagg_reveal"
SECAGG = "secagg"
MASKED = "masked"

# Where the two sides meet: Flower's own default ports, the SuperLink's Fleet API (factories connect to
# it), the server's own Control and runtime API (`flwr` and the ServerApp, on loopback: Flower's former
# Control API port) and a SuperNode's local runtime API (its ClientApp processes connect to it).
DEFAULT_PORT = 8000
DEFAULT_CONTROL_PORT = 9093
DEFAULT_RUNTIME_PORT = 9094

# What a factory does in a federation: trains, or only adapts and evaluates (held out, or new).
ROLES = ("train", "evaluate")


def factory_key(record: str, factory: str) -> str:
    """Where a node serving several factories puts one factory's record (``delta/<factory>``)."""
    return f"{record}/{factory}"


def is_delta_key(key: str) -> bool:
    """Whether a reply's record ``key`` holds a delta: one factory's, or one of several a node serves."""
    return key == DELTA or key.startswith(factory_key(DELTA, ""))
