"""The factory client: meta-trains on private data and replies with a delta only.

Handlers:
- ``query``: tells the server whether this factory trains or only evaluates (a held-out
  or brand-new factory) and its factory key, so a held-out factory is never trained on
  and sampling is reproducible.
- ``train``: receives the global meta-parameters and the round's settings, runs local
  meta-training (`common.algorithms.meta_train`) on this factory's GPU or CPU and
  replies with ``local - global`` and metrics. Never raw data, never full weights.
- ``evaluate``: adapts the received model to this factory's tasks from K labelled
  samples, for several K, and reports query metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from torch import Tensor

from client.evaluation import evaluate_factory
from client.factory import LoadedFactory, load_factory, node_device, sampler_for
from common.algorithms import meta_train
from common.deltas import subtract
from common.federation import EvaluationSettings, RoundSettings, pack_meta_parameters, unpack_meta_parameters
from common.models import build_model

__all__ = ["app", "make_client_app", "train_reply"]


def _received_parameters(msg: Message) -> dict[str, Tensor]:
    return dict(msg.content["meta-parameters"].to_torch_state_dict())


def train_reply(factory: LoadedFactory, msg: Message, device: object) -> RecordDict:
    """Local meta-training from the global meta-parameters: the delta and metrics."""
    if factory.role != "train":
        raise ValueError(f"factory {factory.data.name!r} is held out (role {factory.role!r}) and never trains")
    settings = RoundSettings.from_config(msg.content["config"])
    source = factory.source
    global_params = _received_parameters(msg)
    weights, inner_lrs = unpack_meta_parameters(global_params)
    result = meta_train(
        build_model(source.model_config),
        weights,
        sampler_for(factory, settings.shots, settings.query_size, seed=settings.seed, stream=settings.server_round),
        settings.meta_config(source.task_kind),
        inner_lrs=inner_lrs or None,
        device=device,
    )
    delta = subtract(pack_meta_parameters(result.weights, result.inner_lrs), global_params)
    metrics = {name.replace("_", "-"): value for name, value in result.metrics.items()}
    # Weighted by the factory's data size, as FedAvg does, not by the examples sampled.
    metrics["num-examples"] = factory.data.num_samples
    return RecordDict({"delta": ArrayRecord(torch_state_dict=delta), "metrics": MetricRecord(metrics)})


def make_client_app(run_config: Mapping[str, object] | None = None, mods: list[Mod] | None = None) -> ClientApp:
    """A ClientApp; ``run_config`` overrides the run's config (for in-process simulations)."""
    overrides = dict(run_config or {})
    app = ClientApp(mods=mods)

    def factory_of(context: Context) -> tuple[LoadedFactory, object]:
        config = {**context.run_config, **overrides}
        return load_factory(context.node_config, config), node_device(context.node_config, config)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Report this node's role and factory key; nothing about its data."""
        factory, _ = factory_of(context)
        record = ConfigRecord({"role": factory.role, "factory": factory.data.name})
        return Message(RecordDict({"role": record}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        factory, device = factory_of(context)
        return Message(train_reply(factory, msg, device), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """K-shot adaptation on this factory's tasks for each K the server asks for."""
        factory, device = factory_of(context)
        settings = EvaluationSettings.from_config(msg.content["config"])
        metrics = evaluate_factory(factory, _received_parameters(msg), settings, device=device)
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


app = make_client_app()
