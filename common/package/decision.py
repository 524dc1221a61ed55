"""Decisions at a factory's own base rate, from a model adapted on class-balanced support rows.

A K-shot support set holds K rows of every class, so an adapted model's probabilities are
calibrated for equal class priors, while a plant sees, say, 2% failures. Two steps turn
them into the factory's decisions:

1. **Prior shift** (Saerens, Latinne and Decaestecker, 2002): with the class-conditional
   densities unchanged, probabilities under the training priors ``rho`` become those under the
   factory's priors ``pi`` by ``p'(c | x) ∝ p(c | x) * pi_c / rho_c``: a shift of the logits by
   ``log(pi_c / rho_c)``. The factory knows ``pi`` from its history (its failure rate).
2. **The failure threshold** that maximises the expected F1 of the failure class under those
   probabilities, computed on the factory's unlabelled rows (rows it has in plenty: the batch it
   is about to score). Flagging the ``n`` most likely rows has expected true positives
   ``S_n = sum of their p'`` and expected F1 ``2 S_n / (n + sum of all p')``; the threshold is
   the ``p'`` of the ``n`` that maximises it. No label is used.

Both are standard and need only what a factory has. On AI4I's variant H (seed 0, K = 5 and 10)
this rule gave a higher F1 than argmax at the balanced prior, 0.5 after the prior shift, or
flagging the top ``pi`` share, for both FedAvg + fine-tuning and gradient boosting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["BaseRateDecision", "FailureDecisions", "expected_f1_threshold", "prior_shift"]


def prior_shift(logits: Tensor, target_prior: Tensor, train_prior: Tensor | None = None) -> Tensor:
    """Log-probabilities ``[..., C]`` under ``target_prior`` of a model calibrated for ``train_prior``
    (default: equal priors, as class-balanced support sets give)."""
    classes = logits.shape[-1]
    target = torch.as_tensor(target_prior, dtype=torch.float64)
    train = (
        torch.full((classes,), 1.0 / classes, dtype=torch.float64)
        if train_prior is None
        else torch.as_tensor(train_prior, dtype=torch.float64)
    )
    for name, prior in (("target_prior", target), ("train_prior", train)):
        if prior.shape != (classes,) or not bool((prior > 0).all()) or abs(float(prior.sum()) - 1.0) > 1e-6:
            raise ValueError(f"{name} must hold {classes} positive class priors summing to 1, got {prior.tolist()}")
    shifted = logits.double().log_softmax(-1) + (target.log() - train.log())
    return shifted.log_softmax(-1)


def expected_f1_threshold(probabilities: np.ndarray | Tensor) -> float:
    """The threshold on failure probabilities ``[n]`` that maximises the expected F1 of flagging
    every row at or above it, the probabilities taken as calibrated (see the module docstring)."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if p.size == 0 or not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("need one or more finite probabilities in [0, 1]")
    ranked = np.sort(p)[::-1]
    expected_f1 = 2 * np.cumsum(ranked) / (np.arange(1, p.size + 1) + p.sum())
    return float(ranked[int(np.argmax(expected_f1))])


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class FailureDecisions:
    """Rows' failure probabilities at the base rate, their flags and the threshold that set them."""

    probabilities: Tensor
    flags: Tensor
    threshold: float


@dataclass(frozen=True)
class BaseRateDecision:
    """Failure decisions of binary class scores at a factory's failure rate ``base_rate``."""

    base_rate: float

    def __post_init__(self) -> None:
        if not 0.0 < self.base_rate < 1.0:
            raise ValueError(f"the failure rate must lie strictly between 0 and 1, got {self.base_rate}")

    def probabilities(self, logits: Tensor) -> Tensor:
        """``[n]`` failure probabilities at the base rate, from balanced-prior scores ``[n, 2]``."""
        if logits.ndim != 2 or logits.shape[1] != 2:
            raise ValueError(f"need binary class scores [n, 2], got shape {tuple(logits.shape)}")
        prior = torch.tensor([1.0 - self.base_rate, self.base_rate])
        return prior_shift(logits, prior)[:, 1].exp()

    def decide(self, logits: Tensor) -> FailureDecisions:
        """Flags ``[n]`` of the rows ``logits [n, 2]`` at the threshold chosen on these same unlabelled rows."""
        probabilities = self.probabilities(logits.detach().cpu())
        threshold = expected_f1_threshold(probabilities.numpy())
        return FailureDecisions(probabilities, probabilities >= threshold, threshold)
