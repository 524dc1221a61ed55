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
  beside the plain weighted mean of the same deltas, at 10 and 100 factories; and SecAgg+ with a share of
  the factories dropping out after the shares: the round, the server's unmasking and one factory's own
  work. Aims: a factory's cost at 1,000 factories at most 2x its cost at 100, the round under 30 s.
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
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from rich.console import Console
from rich.table import Table

from fedmeta.common import Report
from fedmeta.common.federation.compression import COMPRESSIONS, Compression, decode_delta, encode_delta
from fedmeta.common.federation.deltas import weighted_average
from fedmeta.common.security.secure_aggregation import FixedPoint, SecureAggregation, aggregate_in_process
from fedmeta.simulations.attacks import ATTACKS, CLAIM_FACTOR, DATA_ATTACKS, attacked_delta, flipped_labels
from fedmeta.simulations.benchmarks.aims import verdict
from fedmeta.simulations.benchmarks.scaling import PlainLoop, Sender, Sent, held_out_metrics

__all__ = ["ATTACKERS", "PROTOCOLS", "CompressionResult", "RobustnessResult", "SecureAggregationCost",
           "render_compression", "render_robustness", "render_secure_aggregation_cost", "run_compression",
           "run_robustness", "run_secure_aggregation_cost"]

ATTACKERS = 2  # of the 10 training factories
ROBUST_AIM = 0.10  # a robust rule's loss under attack, above the clean plain mean's at most this share
INT8_BYTES_AIM, INT8_QUALITY_AIM = 3.9, 0.01
PROTOCOLS = ("pairwise", "plus")  # Bonawitz et al.'s complete graph, SecAgg+'s sparse one
FACTORY_GROWTH_AIM, ROUND_SECONDS_AIM = 2.0, 30.0  # SecAgg+: a factory's cost, largest size over smallest; a round


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
    console.print(f"int8: {ratio:.2f}x fewer bytes (aim >= {INT8_BYTES_AIM}x: {verdict(bytes_ok)}), "
                  f"held-out loss {change:+.2%} (aim under {INT8_QUALITY_AIM:.0%} worse: {verdict(quality_ok)})")



@dataclass
class SecureAggregationCost:
    parameters: int
    repeats: int
    seconds: dict[str, dict[str, float]]  # factories -> {"plain": s, "secure": s} (median of the repeats)
    dropout: float = 0.0  # SecAgg+: the share of the factories that leave after their shares
    plus: dict[str, dict[str, float]] = field(default_factory=dict)  # factories -> degree, threshold, dropped,
    # and the medians of the round's, the server's and one factory's seconds

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _encoded(deltas: Sequence[np.ndarray], weights: Sequence[float], fixed: FixedPoint) -> dict[int, np.ndarray]:
    return {i + 1: fixed.encode(np.append(w / 1000 * d, w / 1000)) for i, (d, w) in enumerate(zip(deltas, weights,
                                                                                                 strict=True))}


def _plus_round(inputs: Mapping[int, np.ndarray], dropout: float, seed: int) -> dict[str, float]:
    """One SecAgg+ round (graph and threshold as the server draws them, `SecureAggregation.round_graph`) with
    a ``dropout`` share of the factories leaving after their shares: its seconds, the server's and the median
    factory's (keys, shares, masked input, reveal) among those that stayed."""
    count = len(inputs)
    graph, threshold = SecureAggregation(enabled=True, plus=True, dropout=dropout).round_graph(count, seed)
    leaving = np.random.default_rng(seed).choice(np.arange(1, count + 1), math.floor(dropout * count), replace=False)
    dropped = {int(i) for i in leaving}
    seconds: dict[int | str, float] = {}
    started = time.perf_counter()
    aggregate_in_process(inputs, threshold, drop_before_input=sorted(dropped), neighbours=graph, seconds=seconds)
    total = time.perf_counter() - started
    stayed = [seconds[i] for i in inputs if i not in dropped]
    return {"degree": len(graph[1]) - 1, "threshold": threshold, "dropped": len(dropped), "round": total,
            "server": seconds["server"], "factory": statistics.median(stayed)}


def run_secure_aggregation_cost(factories: Sequence[int], parameters: int, repeats: int, log: Report,
                                protocols: Sequence[str] = PROTOCOLS, dropout: float = 0.1) -> SecureAggregationCost:
    """A round's aggregation of ``parameters``-long deltas, every party in this process. ``pairwise``: with
    and without secure aggregation, the secure round counting all factories' key agreement, sharing, masking
    and revealing and the server's unmasking (threshold two thirds), the plain one the weighted mean alone.
    ``plus``: SecAgg+ with a ``dropout`` share of the factories leaving after their shares (`_plus_round`)."""
    seconds: dict[str, dict[str, float]] = {}
    plus: dict[str, dict[str, float]] = {}
    generator = np.random.default_rng(0)
    for count in factories:
        deltas = [generator.normal(0, 0.01, parameters) for _ in range(count)]
        weights = [float(w) for w in generator.integers(100, 1000, count)]
        fixed = FixedPoint(bound=1.0, max_factories=count)
        if "pairwise" in protocols:
            plain, secure = [], []
            tensors = [{"w": torch.from_numpy(d)} for d in deltas]
            for _ in range(repeats):
                started = time.perf_counter()
                weighted_average(tensors, weights)
                plain.append(time.perf_counter() - started)
                started = time.perf_counter()
                fixed.decode(aggregate_in_process(_encoded(deltas, weights, fixed),
                                                  threshold=max(2, math.ceil(2 * count / 3))))
                secure.append(time.perf_counter() - started)
            seconds[str(count)] = {"plain": statistics.median(plain), "secure": statistics.median(secure)}
            log(f"{count} factories: plain {seconds[str(count)]['plain']:.4f} s, "
                f"secure {seconds[str(count)]['secure']:.3f} s")
        if "plus" in protocols:
            inputs = _encoded(deltas, weights, fixed)
            rounds = [_plus_round(inputs, dropout, seed) for seed in range(repeats)]
            plus[str(count)] = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            row = plus[str(count)]
            log(f"{count} factories, SecAgg+ (k {row['degree']:.0f}, t {row['threshold']:.0f}): round "
                f"{row['round']:.2f} s, server {row['server']:.2f} s, a factory {row['factory']:.4f} s")
    return SecureAggregationCost(parameters, repeats, seconds, dropout, plus)


def render_secure_aggregation_cost(result: SecureAggregationCost, console: Console) -> None:
    if result.seconds:
        table = Table(title=f"One round's aggregation of {result.parameters:,}-parameter deltas, median of "
                            f"{result.repeats} (every party in one process)")
        for heading in ("factories", "plain mean (s)", "secure aggregation (s)", "ratio", "per factory (s)"):
            table.add_column(heading, justify="right")
        for count, row in result.seconds.items():
            table.add_row(count, f"{row['plain']:.4f}", f"{row['secure']:.3f}",
                          f"{row['secure'] / row['plain']:.0f}x", f"{row['secure'] / int(count):.4f}")
        console.print(table)
    if not result.plus:
        return
    table = Table(title=f"SecAgg+ rounds of {result.parameters:,}-parameter deltas, {result.dropout:.0%} of the "
                        f"factories dropping out after the shares, median of {result.repeats} (every party in one "
                        "process; k, t for 10% corruption)")
    for heading in ("factories", "degree k", "threshold t", "dropped", "round (s)", "server (s)", "a factory (s)"):
        table.add_column(heading, justify="right")
    for count, row in result.plus.items():
        table.add_row(count, f"{row['degree']:.0f}", f"{row['threshold']:.0f}", f"{row['dropped']:.0f}",
                      f"{row['round']:.2f}", f"{row['server']:.2f}", f"{row['factory']:.4f}")
    console.print(table)
    sizes = sorted(result.plus, key=int)
    smallest, largest = result.plus[sizes[0]], result.plus[sizes[-1]]
    if len(sizes) > 1:
        growth = largest["factory"] / smallest["factory"]
        console.print(f"at {int(sizes[-1]):,} factories a factory's cost at most {FACTORY_GROWTH_AIM:g}x its cost at "
                      f"{int(sizes[0]):,}: {growth:.2f}x {verdict(growth <= FACTORY_GROWTH_AIM)}")
    console.print(f"at {int(sizes[-1]):,} factories the round's total under {ROUND_SECONDS_AIM:g} s: "
                  f"{largest['round']:.1f} s {verdict(largest['round'] < ROUND_SECONDS_AIM)}")
