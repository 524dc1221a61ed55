"""Client-level differential privacy of the federation's model: clipping, Gaussian noise and the accountant.

Central DP with fixed clipping, as Flower's ``DifferentialPrivacyServerSideFixedClipping``: the server
clips every accepted delta to L2 norm ``clip_norm`` (C), averages the clipped deltas with equal weights
(a weight a factory claims would change how much one factory can move the mean) and adds Gaussian noise
of standard deviation ``noise_multiplier * C / n`` to the mean of ``n`` deltas, i.e. ``z * C`` to their
sum: one factory's whole data changes that sum by at most C. The privacy spent over the rounds is
counted by Google's ``dp-accounting`` RDP accountant, each round a Gaussian mechanism on a Poisson
sample of the training factories at rate ``fraction-train`` (the server samples a fixed number of
factories; Poisson sampling at the same rate is the usual accounting for it).

Under secure aggregation the server never holds a single delta, so it can neither clip nor add noise to
one: the noise is distributed. Each factory clips its own delta to C, adds Gaussian noise of standard
deviation ``z * C / sqrt(t)`` (``t``: the round's unmasking threshold, the fewest inputs a round can be
unmasked from) and sends it with weight 1 (`noisy_share`). Any ``m >= t`` such inputs sum to noise of
standard deviation ``z * C * sqrt(m / t) >= z * C``, at least what central DP adds, so the same accountant
holds. What it does not cover: factories that collude know their own noise and can subtract it, which
leaves the others' sum with less than ``z * C``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from fedmeta.common.federation.deltas import global_norm

__all__ = ["NOISE_SIGMAS", "ORDERS", "DifferentialPrivacy", "clip_delta", "spent_epsilon"]

ORDERS = tuple(range(2, 257))  # integer Renyi orders: the accountant's fractional ones warn near q = 1
# A secure round's fixed point holds each value within the norm bound; a noisy share must fit there with
# its noise this many standard deviations out (a value beyond it would be cut, biasing the noise).
NOISE_SIGMAS = 6.0


def clip_delta(delta: Mapping[str, Tensor], clip_norm: float) -> dict[str, Tensor]:
    """``delta`` scaled down to global L2 norm ``clip_norm`` if it is longer (unchanged otherwise)."""
    norm = global_norm(delta)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {name: tensor * scale for name, tensor in delta.items()}


def spent_epsilon(rounds: int, sampling_rate: float, noise_multiplier: float, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` Gaussian mechanisms of ``noise_multiplier``, each on a Poisson
    sample of the factories at ``sampling_rate``."""
    if rounds == 0:
        return 0.0
    # dp-accounting imports SciPy (about a second): only where epsilon is counted, not in every client process.
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(orders=list(ORDERS))
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class DifferentialPrivacy:
    """The run's DP settings; ``noise_multiplier`` 0 turns DP off."""

    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"dp-noise-multiplier must be finite and >= 0 (0: off), got {self.noise_multiplier}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"dp-clip-norm must be finite and > 0, got {self.clip_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp-delta must be in (0, 1), got {self.delta}")

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0

    def noisy_mean(self, deltas: list[Mapping[str, Tensor]], generator: torch.Generator) -> dict[str, Tensor]:
        """The equal-weight mean of the clipped ``deltas`` plus noise of std ``z * C / n`` per value."""
        clipped = [clip_delta(delta, self.clip_norm) for delta in deltas]
        std = self.noise_multiplier * self.clip_norm / len(clipped)
        mean = {}
        for name, tensor in clipped[0].items():
            total = torch.stack([delta[name].to(torch.float64) for delta in clipped]).mean(dim=0)
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * std
            mean[name] = (total + noise).to(tensor.dtype)
        return mean

    def share_std(self, threshold: int) -> float:
        """The noise one factory adds to its share in a secure round that unmasks from ``threshold`` inputs."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(threshold)

    def share_range(self, threshold: int) -> float:
        """How far from zero a value of a noisy share may reach (`NOISE_SIGMAS` noise deviations past C)."""
        return self.clip_norm + NOISE_SIGMAS * self.share_std(threshold)

    def noisy_share(self, delta: Mapping[str, Tensor], threshold: int, generator: torch.Generator
                    ) -> dict[str, Tensor]:
        """A factory's input to a secure round with distributed DP: ``delta`` clipped to C plus noise of std
        ``z * C / sqrt(threshold)`` per value, so that any ``threshold`` inputs sum to noise of ``z * C``."""
        std = self.share_std(threshold)
        return {name: (tensor.to(torch.float64)
                       + torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * std).to(tensor.dtype)
                for name, tensor in clip_delta(delta, self.clip_norm).items()}
