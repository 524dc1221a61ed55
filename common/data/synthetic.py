"""Synthetic factory families that behave like the seed use cases.

A *family* is a set of factories that share the physics of one use case but differ in
hidden machine characteristics drawn from a shared prior. Some factories train (they
are the federated clients); the held-out ones never train and stand for the new
factory that adapts from 5-20 labelled samples. Two kinds:

- ``quality`` (regression): standardised process parameters ``x [n, num_features]``
  to a quality measure ``y [n]`` of roughly unit scale. The response is one smooth
  nonlinear function plus a linear term, drawn once per family. Each factory runs it
  at its own operating point (a shift along one shared set-point direction) and
  spread, both hidden because every factory standardises its own parameters, with its
  own mix of nonlinear and linear behaviour, gain (the sign flipped in about half of
  the factories: the same knob raises quality on one line and lowers it on another),
  offset, noise and drift (a slow trend over the row order, which is production
  order). One model pooled over factories therefore predicts a new factory poorly,
  while a few labelled rows pin down the few hidden characteristics once the shared
  structure has been learned: the regime in which meta-learning beats federated
  averaging followed by fine-tuning.
- ``fault`` (classification): vibration windows ``x [n, 1, signal_length]`` of a
  rolling bearing, labelled 0 normal, 1 inner-race fault, 2 outer-race fault, 3 ball
  fault in every factory. A window holds shaft-rotation harmonics, plus for a fault a
  train of impulses at the fault's characteristic frequency (a multiple of the shaft
  speed) that each ring a decaying structural resonance, plus noise. Inner-race
  impulses are amplitude-modulated at the shaft speed and ball impulses at the cage
  speed, as the fault passes through the load zone. Shaft speed, resonance
  frequency and damping, impulse gain, harmonic levels and noise differ per factory,
  so the same fault looks different in each. Each window is normalised to zero mean
  and unit standard deviation.

Everything is deterministic by ``seed`` through private ``torch.Generator`` objects
(the global RNG is never touched). Each factory draws from its own generator, seeded
from ``(seed, kind, role, index)``, so a factory does not change when the family grows.
Generation is vectorised over rows; a default family takes a few milliseconds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor

from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.meta.tasks import FactoryData

__all__ = [
    "FAMILY_KINDS",
    "FAULT_CLASSES",
    "MIN_CLASS_SAMPLES",
    "FactoryFamily",
    "FamilyConfig",
    "make_family",
    "min_class_samples",
]

FAMILY_KINDS: tuple[str, ...] = ("quality", "fault")
_TASK_KIND = {"quality": "regression", "fault": "classification"}

# Label -> meaning, the same in every factory.
FAULT_CLASSES: tuple[str, ...] = ("normal", "inner_race", "outer_race", "ball")

# A fault family guarantees every factory at least max(MIN_CLASS_SAMPLES, min_samples // 8)
# windows of each class: enough for 4-way 5-shot tasks with 5 query shots per class.
MIN_CLASS_SAMPLES = 10
_MIN_SIGNAL_LENGTH = 64

# Characteristic fault frequencies as multiples of the shaft frequency (a typical deep
# groove ball bearing): ball pass frequency inner / outer race, ball spin, cage.
_BPFI, _BPFO, _BSF, _FTF = 5.42, 3.58, 2.36, 0.40

# --- Hidden-characteristic priors -------------------------------------------------------
# Quality: a factory's response is gain * (mix * nonlinear + (1 - mix) * linear)(raw x)
# + offset + drift * (time - 1/2) + noise, where raw x = shift * setpoint + spread * z,
# z standard normal, and the factory sees raw x standardised. Hidden effects that are
# few and low-dimensional are what a 5-shot adaptation can identify; a free shift of
# every parameter (tried first) made the factories too different to adapt from 5 rows.
_Q_HIDDEN_UNITS = 16
_Q_PREACTIVATION_SCALE = 1.5  # how far into tanh's bend the shared physics reaches
_Q_NORMALISING_ROWS = 4096
_Q_FLIP_PROBABILITY = 0.5
_Q_GAIN = (0.4, 1.6)  # log-uniform magnitude
_Q_OFFSET_STD = 0.5
_Q_MIX = (0.3, 1.0)  # uniform weight of the nonlinear term
_Q_SHIFT_STD = 0.5  # operating point along a shared set-point direction
_Q_SPREAD = (0.8, 1.25)  # log-uniform
_Q_NOISE = (0.05, 0.2)  # log-uniform standard deviation
_Q_DRIFT = 0.6  # total drift over the production run, uniform in [-_Q_DRIFT, _Q_DRIFT]

# Fault: frequencies in cycles per sample, times in samples.
_F_SHAFT = (1 / 96, 1 / 48)  # log-uniform: 2.7-5.3 revolutions in a 256-sample window
_F_SPEED_JITTER = 0.02  # relative speed fluctuation between windows
_F_RESONANCE = (0.12, 0.38)  # uniform
_F_DECAY = (2.0, 5.0)  # uniform time constant of the ringing
_F_IMPULSE_GAIN = (1.5, 4.0)  # log-uniform, relative to the first shaft harmonic
_F_SEVERITY = (0.6, 1.6)  # log-uniform per window
_F_IMPULSE_SPREAD = 0.15  # relative impulse-to-impulse amplitude variation
_F_SLIP = 0.02  # impulse timing jitter, fraction of the impulse period (bearing slip)
_F_HARMONIC = (0.5, 1.0)  # log-uniform amplitude of the first harmonic
_F_HARMONIC_DECAY = (0.3, 0.7)  # each further harmonic is this fraction of the previous
_F_NOISE = (0.2, 0.5)  # log-uniform
_F_NORMAL_SHARE = (0.4, 0.7)  # uniform share of normal windows beyond the per-class floor
_F_PREVIOUS_IMPULSES = 3  # ringing of this many earlier impulses is summed
_F_MODULATION_DEPTH = {1: 0.8, 3: 0.6}  # inner race (shaft speed), ball (cage speed)


@dataclass(frozen=True)
class FamilyConfig:
    """What family to generate; validated on creation.

    ``num_factories`` train and ``num_held_out`` (may be 0) never train. Each
    factory's row count is drawn log-uniformly from ``[min_samples, max_samples]``.
    ``num_features`` applies to ``quality``, ``signal_length`` to ``fault``.
    ``min_nonlinearity`` (quality) is the least weight a factory gives the shared nonlinear response
    (drawn uniformly up to 1): at 1 every factory's quality is nonlinear in its parameters, the case
    where a few rows alone cannot learn the response and the federation's model can.

    A fault family guarantees every factory ``min_class_samples(config)`` windows of
    each class, ``max(MIN_CLASS_SAMPLES, min_samples // 8)`` (10 by default): enough
    for 4-way 5-shot tasks with 5 query shots per class. It therefore needs
    ``min_samples >= 4 * MIN_CLASS_SAMPLES``.
    """

    kind: str
    num_factories: int = 12
    num_held_out: int = 4
    min_samples: int = 40
    max_samples: int = 400
    seed: int = 0
    num_features: int = 6
    signal_length: int = 256
    min_nonlinearity: float = _Q_MIX[0]

    def __post_init__(self) -> None:
        if self.kind not in FAMILY_KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; valid kinds: {', '.join(FAMILY_KINDS)}")
        minimums = {
            "num_factories": 1,
            "num_held_out": 0,
            "min_samples": 2,
            "max_samples": 2,
            "num_features": 1,
            "signal_length": _MIN_SIGNAL_LENGTH,
        }
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        share = self.min_nonlinearity
        if isinstance(share, bool) or not (isinstance(share, int | float) and 0.0 <= share <= _Q_MIX[1]):
            raise ValueError(f"min_nonlinearity must be a number in [0, {_Q_MIX[1]}], got {self.min_nonlinearity!r}")
        if self.min_samples > self.max_samples:
            raise ValueError(
                f"min_samples ({self.min_samples}) must be <= max_samples ({self.max_samples})"
            )
        if self.kind == "fault":
            needed = len(FAULT_CLASSES) * MIN_CLASS_SAMPLES
            if self.min_samples < needed:
                raise ValueError(
                    f"min_samples must be >= {needed} for kind 'fault' (each of the "
                    f"{len(FAULT_CLASSES)} classes gets >= {MIN_CLASS_SAMPLES} windows), "
                    f"got {self.min_samples}"
                )


@dataclass(frozen=True, eq=False)  # eq=False: the factories hold tensors
class FactoryFamily:
    """Generated factories and what a model for them needs.

    ``characteristics`` maps each factory's name to its hidden parameters (ground
    truth for analysis and tests; a client never sees them).
    """

    train: tuple[FactoryData, ...]
    held_out: tuple[FactoryData, ...]
    task_kind: str
    model_config: ModelConfig
    num_classes: int | None
    characteristics: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: MappingProxyType({})
    )


def min_class_samples(config: FamilyConfig) -> int:
    """Windows of each class every factory of a fault family is guaranteed to hold."""
    return max(MIN_CLASS_SAMPLES, config.min_samples // 8)


def make_family(config: FamilyConfig) -> FactoryFamily:
    """Generate the family ``config`` describes; the same config gives identical tensors."""
    kind = config.kind
    physics = _QualityPhysics(config) if kind == "quality" else None
    characteristics: dict[str, Mapping[str, float]] = {}
    groups: dict[str, list[FactoryData]] = {"train": [], "held-out": []}
    counts = {"train": config.num_factories, "held-out": config.num_held_out}
    for role, count in counts.items():
        width = max(2, len(str(count - 1)))
        for index in range(count):
            prefix = kind if role == "train" else f"{kind}-held-out"
            name = f"{prefix}-{index:0{width}d}"
            g = _generator(config.seed, kind, role, index)
            n = _log_uniform_int(g, config.min_samples, config.max_samples)
            if physics is not None:
                factory, hidden = _quality_factory(name, n, physics, g)
            else:
                factory, hidden = _fault_factory(name, n, config, g)
            groups[role].append(factory)
            characteristics[name] = MappingProxyType(hidden)
    if kind == "quality":
        model = ModelConfig("mlp", (config.num_features,), 1)
        num_classes = None
    else:
        num_classes = len(FAULT_CLASSES)
        model = ModelConfig(
            "cnn1d", (1, config.signal_length), num_classes, hidden=32, depth=3, kernel_size=5
        )
    return FactoryFamily(
        train=tuple(groups["train"]),
        held_out=tuple(groups["held-out"]),
        task_kind=_TASK_KIND[kind],
        model_config=model,
        num_classes=num_classes,
        characteristics=MappingProxyType(characteristics),
    )


# --- Random helpers -----------------------------------------------------------------------


def _generator(seed: int, *stream: object) -> torch.Generator:
    """A generator for one named stream of a seed (stable across runs and platforms)."""
    digest = hashlib.blake2b(repr((seed, *stream)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def _uniform(g: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g)


def _log_uniform(g: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    return _uniform(g, math.log(low), math.log(high), *shape).exp()


def _log_uniform_int(g: torch.Generator, low: int, high: int) -> int:
    value = round(float(_log_uniform(g, low, high)))
    return min(max(value, low), high)


# --- Quality prediction -------------------------------------------------------------------


class _QualityPhysics:
    """The response shared by every factory of a quality family, drawn once from the seed.

    ``nonlinear`` and ``linear`` each have zero mean and unit variance for raw
    parameters drawn from a standard normal.
    """

    def __init__(self, config: FamilyConfig) -> None:
        g = _generator(config.seed, config.kind, "physics")
        d, h = config.num_features, _Q_HIDDEN_UNITS
        self.weight = torch.randn(d, h, generator=g) * (_Q_PREACTIVATION_SCALE / math.sqrt(d))
        self.bias = _uniform(g, -1.0, 1.0, h)
        self.readout = torch.randn(h, generator=g)
        self.wave = torch.randn(d, generator=g) / math.sqrt(d)
        direction = torch.randn(d, generator=g)
        self.direction = direction / direction.norm()
        setpoint = torch.randn(d, generator=g)
        self.setpoint = setpoint / setpoint.norm()
        self.mix_range = (float(config.min_nonlinearity), _Q_MIX[1])
        self._mean, self._std = 0.0, 1.0
        sample = self._raw_nonlinear(torch.randn(_Q_NORMALISING_ROWS, d, generator=g))
        self._mean, self._std = float(sample.mean()), float(sample.std())

    def _raw_nonlinear(self, x: Tensor) -> Tensor:
        return torch.tanh(x @ self.weight + self.bias) @ self.readout + torch.sin(
            2.0 * x @ self.wave
        )

    def nonlinear(self, x: Tensor) -> Tensor:
        return (self._raw_nonlinear(x) - self._mean) / self._std

    def linear(self, x: Tensor) -> Tensor:
        return x @ self.direction


def _quality_factory(
    name: str, n: int, physics: _QualityPhysics, g: torch.Generator
) -> tuple[FactoryData, dict[str, float]]:
    d = physics.direction.numel()
    flipped = float(torch.rand((), generator=g)) < _Q_FLIP_PROBABILITY
    gain = float(_log_uniform(g, *_Q_GAIN)) * (-1.0 if flipped else 1.0)
    offset = float(torch.randn((), generator=g)) * _Q_OFFSET_STD
    mix = float(_uniform(g, *physics.mix_range))
    shift = float(torch.randn((), generator=g)) * _Q_SHIFT_STD
    spread = float(_log_uniform(g, *_Q_SPREAD))
    noise = float(_log_uniform(g, *_Q_NOISE))
    drift = float(_uniform(g, -_Q_DRIFT, _Q_DRIFT))

    raw = shift * physics.setpoint + spread * torch.randn(n, d, generator=g)
    response = mix * physics.nonlinear(raw) + (1.0 - mix) * physics.linear(raw)
    time = torch.linspace(-0.5, 0.5, n) if n > 1 else torch.zeros(1)
    y = gain * response + offset + drift * time + noise * torch.randn(n, generator=g)
    # The factory's own pipeline standardises its parameters, hiding the operating point.
    x = (raw - raw.mean(0)) / raw.std(0).clamp_min(1e-6)
    hidden = {
        "gain": gain,
        "offset": offset,
        "nonlinearity": mix,
        "operating_point": shift,
        "spread": spread,
        "noise": noise,
        "drift": drift,
    }
    return FactoryData(name, x.float(), y.float()), hidden


# --- Fault diagnosis ----------------------------------------------------------------------


def _class_counts(n: int, floor: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per-class counts summing to ``n``, each >= ``floor``, normal expected most common."""
    normal_share = _uniform(g, *_F_NORMAL_SHARE)
    fault_weights = -torch.rand(len(FAULT_CLASSES) - 1, generator=g).log()  # Dirichlet(1, 1, 1)
    proportions = torch.cat(
        [normal_share.reshape(1), (1 - normal_share) * fault_weights / fault_weights.sum()]
    )
    extra = n - floor * len(FAULT_CLASSES)
    counts = torch.full((len(FAULT_CLASSES),), floor, dtype=torch.int64)
    if extra > 0:
        draws = torch.multinomial(proportions, extra, replacement=True, generator=g)
        counts += torch.bincount(draws, minlength=len(FAULT_CLASSES))
    return counts, proportions


def _fault_factory(
    name: str, n: int, config: FamilyConfig, g: torch.Generator
) -> tuple[FactoryData, dict[str, float]]:
    length = config.signal_length
    shaft = float(_log_uniform(g, *_F_SHAFT))
    resonance = float(_uniform(g, *_F_RESONANCE))
    decay = float(_uniform(g, *_F_DECAY))
    impulse_gain = float(_log_uniform(g, *_F_IMPULSE_GAIN))
    first_harmonic = float(_log_uniform(g, *_F_HARMONIC))
    harmonic_ratio = float(_uniform(g, *_F_HARMONIC_DECAY))
    noise = float(_log_uniform(g, *_F_NOISE))
    counts, proportions = _class_counts(n, min_class_samples(config), g)
    labels = torch.repeat_interleave(torch.arange(len(FAULT_CLASSES)), counts)
    labels = labels[torch.randperm(n, generator=g)]

    t = torch.arange(length, dtype=torch.float32)
    speed = shaft * (1 + _F_SPEED_JITTER * torch.randn(n, 1, generator=g))  # rev / sample
    # Shaft harmonics 1x, 2x, 3x with random phases.
    orders = torch.arange(1, 4, dtype=torch.float32)
    amplitudes = first_harmonic * harmonic_ratio ** (orders - 1)
    phases = 2 * math.pi * torch.rand(n, 3, 1, generator=g)
    harmonics = amplitudes[:, None] * torch.sin(
        2 * math.pi * orders[:, None] * speed[:, None] * t + phases
    )
    signal = harmonics.sum(1)

    # Impulse trains: a row's fault frequency is a multiple of its shaft speed.
    ratio = torch.tensor([1.0, _BPFI, _BPFO, _BSF])[labels][:, None]  # 1.0: unused (normal)
    period = 1.0 / (ratio * speed)  # samples between impulses
    start = torch.rand(n, 1, generator=g) * period
    slots = math.ceil(length / float(period.min())) + _F_PREVIOUS_IMPULSES + 2
    slip = _F_SLIP * period * torch.randn(n, slots, generator=g)
    strength = (1 + _F_IMPULSE_SPREAD * torch.randn(n, slots, generator=g)).clamp_min(0)
    latest = torch.floor((t - start) / period).long()  # index of the latest impulse due by t
    impulses = torch.zeros(n, length)
    for back in range(-1, _F_PREVIOUS_IMPULSES):  # -1: an impulse that slipped early
        k = latest - back
        slot = (k + _F_PREVIOUS_IMPULSES).clamp(0, slots - 1)
        since = t - start - k * period - slip.gather(1, slot)
        ring = torch.exp(-since.clamp_min(0) / decay) * torch.sin(2 * math.pi * resonance * since)
        impulses += torch.where(since >= 0, strength.gather(1, slot) * ring, 0.0)
    # Load-zone modulation: inner race at the shaft speed, ball at the cage speed.
    depth = torch.zeros(len(FAULT_CLASSES))
    modulation_rate = torch.zeros(len(FAULT_CLASSES))
    depth[1], modulation_rate[1] = _F_MODULATION_DEPTH[1], 1.0
    depth[3], modulation_rate[3] = _F_MODULATION_DEPTH[3], _FTF
    angle = 2 * math.pi * modulation_rate[labels][:, None] * speed * t
    angle = angle + 2 * math.pi * torch.rand(n, 1, generator=g)
    modulation = 1 - depth[labels][:, None] * 0.5 * (1 - torch.cos(angle))
    severity = _log_uniform(g, *_F_SEVERITY, n, 1)
    is_fault = (labels > 0).float()[:, None]
    signal = signal + is_fault * impulse_gain * severity * modulation * impulses
    signal = signal + noise * torch.randn(n, length, generator=g)

    signal = signal - signal.mean(1, keepdim=True)
    signal = signal / signal.std(1, keepdim=True).clamp_min(1e-6)
    hidden = {
        "shaft_speed": shaft,
        "resonance": resonance,
        "decay": decay,
        "impulse_gain": impulse_gain,
        "first_harmonic": first_harmonic,
        "harmonic_ratio": harmonic_ratio,
        "noise": noise,
    }
    hidden.update({f"share_{c}": float(p) for c, p in zip(FAULT_CLASSES, proportions, strict=True)})
    return FactoryData(name, signal.unsqueeze(1).float(), labels), hidden
