"""The factory client: meta-trains on private data and replies with a delta only.

Handlers:
- ``query``: tells the server whether this factory trains or only evaluates (a held-out
  or brand-new factory) and its factory key, so a held-out factory is never trained on
  and sampling is reproducible.
- ``train``: receives the global meta-parameters and the round's settings, runs local
  meta-training (`common.meta.algorithms.meta_train`) on this factory's GPU or CPU and
  replies with ``local - global`` and metrics. Never raw data, never full weights. With a tree
  algorithm it receives the global ensemble and replies with the trees it boosted on its rows
  (`client.rounds.trees`) and metrics.
- ``evaluate``: adapts the received model to this factory's tasks from K labelled
  samples, for several K, and reports query metrics.
- ``query.model``: after the last round, stores the final model package under the node's
  ``model-dir`` (`fedmeta.client.rounds.package`) and replies only whether it did.

A node serving several factories (``factories-per-node`` > 1, see
`common.data_sources`) lists them all in its query reply; the server's messages name
the factories to work on, and the reply carries each one's own delta and metrics under
``delta/<factory>`` and ``metrics/<factory>``. One factory failing leaves out only its
own records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from torch import Tensor

from fedmeta.client.rounds.evaluation import evaluate_factory, evaluate_trees
from fedmeta.client.rounds.factory import LoadedFactory, load_factories, node_device, sampler_for
from fedmeta.client.rounds.joined_rounds import LEDGER_KEY, JoinedRounds
from fedmeta.client.rounds.package import MODEL_DIR_KEY, store_delivered_package
from fedmeta.client.rounds.policy import POLICY_KEY, load_policy
from fedmeta.client.rounds.secure_aggregation import advertise_keys, masked_input, reveal_shares, seal_shares
from fedmeta.client.rounds.trees import (
    factory_tree_shape,
    recipe_metrics,
    tree_histograms,
    tree_sketch,
    tree_update,
)
from fedmeta.common import (
    EvaluationSettings,
    ModelConfig,
    RoundSettings,
    build_model,
    is_tree_algorithm,
    local_algorithm,
    meta_train,
    model_config_for,
    pack_meta_parameters,
    subtract,
    unpack_meta_parameters,
)
from fedmeta.common.federation import protocol
from fedmeta.common.federation.compression import VALUES, ParameterLayout, encode_delta, unpack_parameters
from fedmeta.common.trees.histograms import LevelSplits, check_edges

__all__ = ["app", "check_model_fits", "local_update", "make_client_app", "train_replies", "train_reply"]

log = logging.getLogger(__name__)
UNSENT = "unsent"  # the node state's record of what top-k left unsent, per factory (never sent)


def _received_parameters(msg: Message) -> dict[str, Tensor]:
    """The global model the message carries, packed with its layout (`server.strategy.fedmeta.model_records`)."""
    packed = msg.content[protocol.META_PARAMETERS].to_torch_state_dict()
    return unpack_parameters(packed[VALUES], ParameterLayout.from_config(msg.content[protocol.PARAMETER_LAYOUT]))


def check_model_fits(factory: LoadedFactory, global_params: Mapping[str, Tensor], algorithm: str) -> None:
    """The server's model must be the one this factory's data gives (same schema: features and outputs).

    A factory with its own schema file can disagree with the server's; say so instead of
    failing deep inside a matrix product.
    """
    weights, _ = unpack_meta_parameters(global_params)
    for name, shape in _parameter_shapes(model_config_for(factory.source, algorithm)).items():
        received = weights.get(name)
        if received is None or tuple(received.shape) != shape:
            got = "nothing" if received is None else f"shape {tuple(received.shape)}"
            raise ValueError(
                f"factory {factory.data.name!r}: the server's model does not fit this factory's schema "
                f"(parameter {name!r}: the schema gives shape {shape}, the server sent {got}); "
                "use the federation's schema"
            )


@cache
def _parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in build_model(config).named_parameters()}


def local_update(
    factory: LoadedFactory, global_params: Mapping[str, Tensor], settings: RoundSettings, device: object
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Local meta-training from the global meta-parameters: ``local - global`` and metrics.

    Free of Flower so that every reply format (and the scaling benchmark's plain loop)
    runs exactly this work.
    """
    if factory.role != "train":
        raise ValueError(f"factory {factory.data.name!r} is held out (role {factory.role!r}) and never trains")
    source = factory.source
    meta = settings.meta_config(source.task_kind)
    check_model_fits(factory, global_params, meta.algorithm)
    weights, inner_lrs = unpack_meta_parameters(global_params)
    result = meta_train(
        build_model(model_config_for(source, meta.algorithm)),
        weights,
        sampler_for(factory, settings.shots, settings.query_size, seed=settings.seed, stream=settings.server_round),
        meta,
        inner_lrs=inner_lrs or None,
        device=device,
    )
    delta = subtract(pack_meta_parameters(result.weights, result.inner_lrs), global_params)
    metrics = {name.replace("_", "-"): value for name, value in result.metrics.items()}
    # Weighted by the factory's data size, as FedAvg does, not by the examples sampled.
    metrics[protocol.NUM_EXAMPLES] = factory.data.num_samples
    return delta, metrics


def _unsent_key(factory: LoadedFactory, run_id: int, state: RecordDict) -> str:
    """Where top-k's unsent rest of ``factory`` waits for its next round of run ``run_id``; the rest earlier
    runs left is dropped. Flower keeps a node's state from one run to the next (flwr 1.42: one context per
    run series, and every ordinary run is series 0), and another run's rest belongs to another model."""
    prefix = f"{protocol.factory_key(UNSENT, factory.data.name)}@run-"
    for stale in [key for key in state if key.startswith(prefix) and key != f"{prefix}{run_id}"]:
        del state[stale]
    return f"{prefix}{run_id}"


def _train_records(
    factory: LoadedFactory, global_params: Mapping[str, Tensor], settings: RoundSettings, device: object,
    state: RecordDict, run_id: int,
) -> dict[str, ArrayRecord | MetricRecord]:
    """`local_update` as the records a reply carries: the delta, encoded as the round asks, and the metrics,
    nothing else. What top-k leaves unsent stays in the node's ``state`` for the factory's next round."""
    delta, metrics = local_update(factory, global_params, settings, device)
    unsent_key = _unsent_key(factory, run_id, state)
    unsent = state[unsent_key].to_torch_state_dict() if unsent_key in state else None
    encoded, unsent = encode_delta(delta, settings.codec, unsent)
    if unsent:
        state[unsent_key] = ArrayRecord(torch_state_dict=unsent)
    return {protocol.DELTA: ArrayRecord(torch_state_dict=encoded), protocol.METRICS: MetricRecord(metrics)}


def _received_ensemble(msg: Message) -> bytes:
    """The global tree ensemble the message carries (one uint8 array: `server.strategy.trees`)."""
    record = msg.content[protocol.ENSEMBLE]
    if len(record) != 1:
        raise ValueError(f"the server's ensemble must be one array of bytes, got {len(record)} arrays")
    return next(iter(record.values())).numpy().tobytes()


def _tree_records(factory: LoadedFactory, ensemble: bytes, settings: RoundSettings) -> dict[str, object]:
    """`tree_update` as the records a reply carries: the new trees and the metrics, nothing else."""
    trees, metrics = tree_update(factory, ensemble, settings)
    return {protocol.TREES: ArrayRecord([np.frombuffer(trees, dtype=np.uint8)]),
            protocol.METRICS: MetricRecord(metrics)}


def _joined_rounds(context: Context) -> JoinedRounds:
    """The rounds this node's factory joined, in its state and its ledger file where the node names one."""
    ledger = context.node_config.get(LEDGER_KEY)
    return JoinedRounds(context.state, None if ledger is None else Path(str(ledger)))


def _sketch_records(factory: LoadedFactory, settings: RoundSettings) -> dict[str, object]:
    """xgb-histogram's first exchange: the factory's column sketch and its rows' count, nothing else."""
    sketch, rows = tree_sketch(factory, settings.tree_bins)
    return {protocol.SKETCH: ArrayRecord([sketch]), protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: rows})}


def _histogram_records(factory: LoadedFactory, msg: Message, settings: RoundSettings) -> dict[str, object]:
    """xgb-histogram's level exchange: the factory's gradient histograms at the sent ensemble, bins and splits."""
    edges_record = msg.content[protocol.BIN_EDGES]
    if len(edges_record) != 1:
        raise ValueError(f"the server's bin edges must be one array, got {len(edges_record)}")
    edges = next(iter(edges_record.values())).numpy()
    check_edges(edges, factory_tree_shape(factory))
    splits = LevelSplits.from_json(json.loads(str(msg.content[protocol.CONFIG][protocol.LEVEL_SPLITS])),
                                   factory_tree_shape(factory), edges.shape[1] + 1, settings.tree_depth)
    histograms = tree_histograms(factory, _received_ensemble(msg), edges, splits)
    return {protocol.HISTOGRAMS: ArrayRecord(histograms)}


def train_reply(factory: LoadedFactory, msg: Message, device: object, state: RecordDict) -> RecordDict:
    """Local meta-training from the global meta-parameters: the delta and metrics (trees: the new trees)."""
    settings = RoundSettings.from_config(msg.content[protocol.CONFIG])
    if is_tree_algorithm(settings.algorithm):
        return RecordDict(_tree_records(factory, _received_ensemble(msg), settings))
    return RecordDict(_train_records(factory, _received_parameters(msg), settings, device, state, msg.metadata.run_id))


def _named_factories(factories: Sequence[LoadedFactory], msg: Message) -> list[LoadedFactory]:
    """The factories of this node that the server's message names, in its order."""
    served = {factory.data.name: factory for factory in factories}
    names = list(msg.content[protocol.FACTORIES][protocol.NAMES])
    unknown = [name for name in names if name not in served]
    if unknown:
        raise ValueError(f"this node does not serve factories {unknown}; it serves {sorted(served)}")
    return [served[name] for name in names]


def _per_factory(
    factories: Sequence[LoadedFactory], work: Callable[[LoadedFactory], Mapping[str, object]]
) -> RecordDict:
    """``work``'s records for each factory under ``<record>/<factory>``.

    A factory whose work raises is logged and left out, alone: the server counts it as
    failed, as it would a node of its own that crashed.
    """
    content = RecordDict()
    for factory in factories:
        try:
            records = work(factory)
        except Exception as error:  # what Flower would turn into an error reply from a node of its own
            log.warning("factory %s failed: %s", factory.data.name, error)
            continue
        for record, value in records.items():
            content[protocol.factory_key(record, factory.data.name)] = value
    return content


def train_replies(factories: Sequence[LoadedFactory], msg: Message, device: object, state: RecordDict) -> RecordDict:
    """`train_reply` for each factory the message names, each under its own keys."""
    settings = RoundSettings.from_config(msg.content[protocol.CONFIG])
    if is_tree_algorithm(settings.algorithm):
        ensemble = _received_ensemble(msg)
        return _per_factory(_named_factories(factories, msg),
                            lambda factory: _tree_records(factory, ensemble, settings))
    global_params = _received_parameters(msg)
    return _per_factory(_named_factories(factories, msg),
                        lambda factory: _train_records(factory, global_params, settings, device, state,
                                                       msg.metadata.run_id))


def _evaluate_reply(factory: LoadedFactory, msg: Message, device: object) -> dict[str, MetricRecord]:
    """K-shot adaptation on the factory's tasks for each K the server asks for."""
    settings = EvaluationSettings.from_config(msg.content[protocol.CONFIG])
    if is_tree_algorithm(settings.algorithm):
        return {protocol.METRICS: MetricRecord(evaluate_trees(factory, _received_ensemble(msg), settings))}
    global_params = _received_parameters(msg)
    check_model_fits(factory, global_params, local_algorithm(settings.algorithm))
    return {protocol.METRICS: MetricRecord(evaluate_factory(factory, global_params, settings, device=device))}


def _only(factories: Sequence[LoadedFactory]) -> LoadedFactory:
    if len(factories) != 1:
        raise ValueError(f"this node serves {len(factories)} factories: the message must name them")
    return factories[0]


def make_client_app(run_config: Mapping[str, object] | None = None, mods: list[Mod] | None = None) -> ClientApp:
    """A ClientApp; ``run_config`` overrides the run's config (for in-process simulations)."""
    overrides = dict(run_config or {})
    app = ClientApp(mods=mods)

    def factories_of(context: Context) -> tuple[list[LoadedFactory], object]:
        config = {**context.run_config, **overrides}
        return load_factories(context.node_config, config), node_device(context.node_config, config)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Report this node's roles and factory keys; nothing about their data."""
        factories, _ = factories_of(context)
        if factories[0].source.factories_per_node == 1:
            record = ConfigRecord({protocol.ROLE: factories[0].role, protocol.FACTORY: factories[0].data.name})
            return Message(RecordDict({protocol.ROLE: record}), reply_to=msg)
        names, roles = [f.data.name for f in factories], [f.role for f in factories]
        record = ConfigRecord({protocol.NAMES: names, protocol.ROLES_FIELD: roles})
        return Message(RecordDict({protocol.FACTORIES: record}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        settings = RoundSettings.from_config(msg.content[protocol.CONFIG])
        if POLICY_KEY in context.node_config:  # the factory's own rules, before anything runs
            load_policy(str(context.node_config[POLICY_KEY])).admit(settings, _joined_rounds(context))
        factories, device = factories_of(context)
        if protocol.SECAGG in msg.content:  # a secure round (never trees: the server refuses): the masked input
            delta, metrics = local_update(_only(factories), _received_parameters(msg), settings, device)
            return Message(masked_input(delta, metrics, settings, msg, context.state), reply_to=msg)
        if protocol.FACTORIES in msg.content:
            return Message(train_replies(factories, msg, device, context.state), reply_to=msg)
        return Message(train_reply(_only(factories), msg, device, context.state), reply_to=msg)

    def tree_exchange(msg: Message, context: Context,
                      work: Callable[[LoadedFactory, RoundSettings], Mapping[str, object]]) -> Message:
        """One of xgb-histogram's exchanges: the policy asked first (the round's first exchange counts as a round
        joined), then ``work`` for each factory the message names."""
        config = msg.content[protocol.CONFIG]
        settings = RoundSettings.from_config({key: value for key, value in config.items()
                                              if key not in protocol.TREE_EXCHANGE_FIELDS})
        if POLICY_KEY in context.node_config:
            load_policy(str(context.node_config[POLICY_KEY])).admit_exchange(
                settings, _joined_rounds(context), f"{msg.metadata.run_id}/{settings.server_round}",
                opens_round=bool(config[protocol.OPENS_ROUND]))
        factories, _ = factories_of(context)
        if protocol.FACTORIES in msg.content:
            return Message(_per_factory(_named_factories(factories, msg), lambda f: work(f, settings)), reply_to=msg)
        return Message(RecordDict(work(_only(factories), settings)), reply_to=msg)

    @app.train(protocol.TREE_SKETCH.removeprefix("train."))
    def tree_sketch_reply(msg: Message, context: Context) -> Message:
        return tree_exchange(msg, context, _sketch_records)

    @app.train(protocol.TREE_HISTOGRAMS.removeprefix("train."))
    def tree_histograms_reply(msg: Message, context: Context) -> Message:
        return tree_exchange(msg, context, lambda factory, settings: _histogram_records(factory, msg, settings))

    @app.train(protocol.TREE_RECIPES.removeprefix("train."))
    def tree_recipes_reply(msg: Message, context: Context) -> Message:
        ensemble = _received_ensemble(msg)
        return tree_exchange(msg, context, lambda factory, settings: {
            protocol.METRICS: MetricRecord(recipe_metrics(factory, ensemble, settings))})

    @app.train(protocol.SECAGG_KEYS.removeprefix("train."))
    def secure_keys(msg: Message, context: Context) -> Message:
        return Message(advertise_keys(msg, context.state), reply_to=msg)

    @app.train(protocol.SECAGG_SHARES.removeprefix("train."))
    def secure_shares(msg: Message, context: Context) -> Message:
        return Message(seal_shares(msg, context.state), reply_to=msg)

    @app.train(protocol.SECAGG_REVEAL.removeprefix("train."))
    def secure_reveal(msg: Message, context: Context) -> Message:
        return Message(reveal_shares(msg, context.state), reply_to=msg)

    @app.query(protocol.MODEL_DELIVERY.removeprefix("query."))
    def receive_model(msg: Message, context: Context) -> Message:
        """Store the final model package under this node's ``model-dir``; reply only whether it was stored."""
        model_dir = context.node_config.get(MODEL_DIR_KEY)
        if model_dir:
            manifest = str(msg.content[protocol.CONFIG][protocol.MANIFEST])
            if protocol.ENSEMBLE in msg.content:
                path = store_delivered_package({}, manifest, Path(str(model_dir)), _received_ensemble(msg))
            else:
                path = store_delivered_package(_received_parameters(msg), manifest, Path(str(model_dir)))
            log.info("model package stored in %s", path)
        stored = MetricRecord({protocol.STORED: 1 if model_dir else 0})
        return Message(RecordDict({protocol.METRICS: stored}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """K-shot adaptation on this node's factories' tasks for each K the server asks for."""
        factories, device = factories_of(context)
        if protocol.FACTORIES in msg.content:
            content = _per_factory(_named_factories(factories, msg), lambda f: _evaluate_reply(f, msg, device))
            return Message(content, reply_to=msg)
        return Message(RecordDict(_evaluate_reply(_only(factories), msg, device)), reply_to=msg)

    return app


app = make_client_app()
