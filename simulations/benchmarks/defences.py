"""``fedmeta bench robustness`` and ``fedmeta bench compression``: what the federation's defences cost and
buy, measured on the same federation in one run.

Both train the synthetic quality family (10 training factories, 4 held out) with the plain loop
(`simulations.benchmarks.scaling.PlainLoop`: the client's local update, the strategy's delta checks,
aggregation and outer step, in-process) and score the held-out factories' 5-shot query loss after the
last round (lower is better).

* robustness: for each aggregation rule, a clean run and one per attack (`simulations.attacks`, label
  flips included) with 2 of the 10 factories (20%) attacking every round. Aim: a robust rule's loss
  under attack within 10% of the clean run with the plain mean, while the plain mean breaks.
* secure aggregation: a round's aggregation cost with every party of the protocol in one process,
  beside the plain weighted mean of the same deltas, at 10 and 100 factories.
* compression: each encoding's reply size, from the serialised message (Flower's own protobuf of the
  delta and metrics records a factory sends), and the held-out loss it trains to. Aim: int8 at least
  3.9x fewer bytes than float32 with under 1% loss of held-out quality.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from rich.console import Console
from rich.table import Table

from fedmeta.common import Report
from fedmeta.common.federation.compression import COMPRESSIONS, Compression, decode_delta, encode_delta
from fedmeta.common.federation.deltas import weighted_average
from fedmeta.common.security.secure_aggregation import FixedPoint, aggregate_in_process
from fedmeta.simulations.attacks import ATTACKS, CLAIM_FACTOR, DATA_ATTACKS, attacked_delta, flipped_labels
from fedmeta.simulations.benchmarks.scaling import PlainLoop, Sender, Sent, held_out_metrics

__all__ = ["ATTACKERS", "CompressionResult", "RobustnessResult", "SecureAggregationCost", "render_compression",
           "render_robustness", "render_secure_aggregation_cost", "run_compression", "run_robustness",
           "run_secure_aggregation_cost"]

ATTACKERS = 2  # of the 10 training factories
ROBUST_AIM = 0.10  # a robust rule's loss under attack, above the clean plain mean's at most this share
INT8_BYTES_AIM, INT8_QUALITY_AIM = 3.9, 0.01


def _config(rounds: int, seed: int, **settings: object) -> dict[str, object]:
    return {"family": "quality", "num-factories": 10, "num-held-out": 4, "num-server-rounds": rounds,
            "algorithm": "fomaml", "local-lr": 0.005, "eval-shots": "5", "eval-tasks": 25, "seed": seed,
            "family-seed": seed, "device": "cpu", "krum-malicious": ATTACKERS, **settings}


def _train(config: Mapping[str, object], send: Sender | None = None, poisoned: int = 0) -> float:
    """The held-out loss after the run; the first ``poisoned`` factories train on flipped labels."""
    loop = PlainLoop(config, send)
    for index in range(poisoned):
        factory = loop.factories[index]
        source = factory.source
        data = flipped_labels(factory.data, source.task_kind, source.model_config.output_dim)
        loop.factories[index] = dataclasses.replace(factory, data=data)
    for _ in range(int(config["num-server-rounds"])):
        loop.run_round()
    return held_out_metrics(config, loop.strategy.optimizer.params)["loss-k5"]


def _attackers(attack: str, max_norm: float, seed: int) -> Sender:
    def send(index: int, round_: int, delta, metrics) -> Sent:
        if index >= ATTACKERS:
            return delta, metrics
        generator = torch.Generator().manual_seed(seed * 1_000_003 + round_ * 101 + index)
        if attack == "claim":
            return delta, {**metrics, "num-examples": metrics["num-examples"] * CLAIM_FACTOR}
        return attacked_delta(delta, attack, max_norm, generator), metrics

    return send


@dataclass
class RobustnessResult:
    rounds: int
    seed: int
    loss: dict[str, dict[str, float]]  # rule -> "clean" or attack -> held-out 5-shot loss

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def run_robustness(rounds: int, seed: int, rules: Sequence[str], attacks: Sequence[str],
                   log: Report) -> RobustnessResult:
    loss: dict[str, dict[str, float]] = {}
    for rule in rules:
        for attack in ("clean", *attacks):
            config = _config(rounds, seed, aggregation=rule)
            sends = attack in ATTACKS
            send = _attackers(attack, float(config.get("max-delta-norm", 100.0)), seed) if sends else None
            loss.setdefault(rule, {})[attack] = _train(config, send, ATTACKERS if attack in DATA_ATTACKS else 0)
            log(f"{rule}, {attack}: held-out 5-shot loss {loss[rule][attack]:.4f}")
    return RobustnessResult(rounds, seed, loss)


def render_robustness(result: RobustnessResult, console: Console) -> None:
    attacks = list(next(iter(result.loss.values())))
    table = Table(title=f"Held-out 5-shot query loss after {result.rounds} rounds, {ATTACKERS} of 10 factories "
                        f"attacking (seed {result.seed}; lower is better)")
    table.add_column("aggregation")
    for attack in attacks:
        table.add_column(attack, justify="right")
    clean = result.loss.get("mean", {}).get("clean")
    for rule, row in result.loss.items():
        table.add_row(rule, *(f"{row[a]:.4f}" + ("" if clean is None or a == "clean" else f" ({row[a] / clean:.2f}x)")
                              for a in attacks))
    console.print(table)
    if clean is None:
        return
    for attack in attacks[1:]:
        within = [rule for rule, row in result.loss.items()
                  if rule != "mean" and row[attack] <= (1 + ROBUST_AIM) * clean]
        console.print(f"{attack}: plain mean {result.loss['mean'][attack] / clean:.2f}x the clean run; within "
                      f"{ROBUST_AIM:.0%} of it: {', '.join(within) or 'none'}")


def _wire_bytes(encoded: Mapping[str, torch.Tensor], metrics: Mapping[str, float]) -> int:
    """The size of the records a factory's reply carries, serialised as Flower sends them."""
    reply = RecordDict({"delta": ArrayRecord(torch_state_dict=dict(encoded)), "metrics": MetricRecord(dict(metrics))})
    return recorddict_to_proto(reply).ByteSize()


@dataclass
class CompressionResult:
    rounds: int
    seed: int
    topk_fraction: float
    bytes_per_reply: dict[str, float]
    loss: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def run_compression(rounds: int, seed: int, topk_fraction: float, log: Report) -> CompressionResult:
    sizes, loss = {}, {}
    for method in COMPRESSIONS:
        config = _config(rounds, seed, compression=method, **{"topk-fraction": topk_fraction})
        codec, unsent, sent_bytes = Compression(method, topk_fraction), {}, []

        def send(index: int, round_: int, delta, metrics, codec=codec, unsent=unsent, sent_bytes=sent_bytes) -> Sent:
            encoded, unsent[index] = encode_delta(delta, codec, unsent.get(index))  # top-k's rest, per factory
            sent_bytes.append(_wire_bytes(encoded, metrics))
            return decode_delta(encoded, codec, delta), metrics  # the delta's names and shapes are the model's

        loss[method] = _train(config, send)
        sizes[method] = sum(sent_bytes) / len(sent_bytes)
        log(f"{method}: {sizes[method]:.0f} bytes a reply, held-out 5-shot loss {loss[method]:.4f}")
    return CompressionResult(rounds, seed, topk_fraction, sizes, loss)


def render_compression(result: CompressionResult, console: Console) -> None:
    table = Table(title=f"Delta encodings over {result.rounds} rounds (seed {result.seed}; top-k "
                        f"{result.topk_fraction:g} with error feedback)")
    for heading in ("encoding", "bytes a reply", "fewer bytes", "held-out 5-shot loss", "change"):
        table.add_column(heading, justify="left" if heading == "encoding" else "right")
    base_bytes, base_loss = result.bytes_per_reply["none"], result.loss["none"]
    for method in result.loss:
        size = result.bytes_per_reply[method]
        table.add_row(method, f"{size:,.0f}", f"{base_bytes / size:.2f}x", f"{result.loss[method]:.4f}",
                      f"{result.loss[method] / base_loss - 1:+.1%}")
    console.print(table)
    ratio, change = base_bytes / result.bytes_per_reply["int8"], result.loss["int8"] / base_loss - 1
    bytes_ok, quality_ok = ratio >= INT8_BYTES_AIM, change < INT8_QUALITY_AIM
    console.print(f"int8: {ratio:.2f}x fewer bytes (aim >= {INT8_BYTES_AIM}x: {'met' if bytes_ok else 'missed'}), "
                  f"held-out loss {change:+.2%} (aim under {INT8_QUALITY_AIM:.0%} worse: "
                  f"{'met' if quality_ok else 'missed'})")



@dataclass
class SecureAggregationCost:
    parameters: int
    repeats: int
    seconds: dict[str, dict[str, float]]  # factories -> {"plain": s, "secure": s} (median of the repeats)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def run_secure_aggregation_cost(factories: Sequence[int], parameters: int, repeats: int,
                                log: Report) -> SecureAggregationCost:
    """A round's aggregation of ``parameters``-long deltas with and without secure aggregation, every party
    in this process: the secure round counts all factories' key agreement, sharing, masking and revealing
    and the server's unmasking (threshold two thirds), the plain one the weighted mean alone."""
    seconds: dict[str, dict[str, float]] = {}
    generator = np.random.default_rng(0)
    for count in factories:
        deltas = [{"w": torch.from_numpy(generator.normal(0, 0.01, parameters))} for _ in range(count)]
        weights = [float(w) for w in generator.integers(100, 1000, count)]
        fixed = FixedPoint(bound=1.0, max_factories=count)
        plain, secure = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            weighted_average(deltas, weights)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            inputs = {i + 1: fixed.encode(np.append(w / 1000 * d["w"].numpy(), w / 1000))
                      for i, (d, w) in enumerate(zip(deltas, weights, strict=True))}
            fixed.decode(aggregate_in_process(inputs, threshold=max(2, math.ceil(2 * count / 3))))
            secure.append(time.perf_counter() - started)
        seconds[str(count)] = {"plain": statistics.median(plain), "secure": statistics.median(secure)}
        log(f"{count} factories: plain {seconds[str(count)]['plain']:.4f} s, "
            f"secure {seconds[str(count)]['secure']:.3f} s")
    return SecureAggregationCost(parameters, repeats, seconds)


def render_secure_aggregation_cost(result: SecureAggregationCost, console: Console) -> None:
    table = Table(title=f"One round's aggregation of {result.parameters:,}-parameter deltas, median of "
                        f"{result.repeats} (every party in one process)")
    for heading in ("factories", "plain mean (s)", "secure aggregation (s)", "ratio", "per factory (s)"):
        table.add_column(heading, justify="right")
    for count, row in result.seconds.items():
        table.add_row(count, f"{row['plain']:.4f}", f"{row['secure']:.3f}", f"{row['secure'] / row['plain']:.0f}x",
                      f"{row['secure'] / int(count):.4f}")
    console.print(table)
