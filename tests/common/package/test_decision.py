"""Decisions at a factory's base rate: the prior shift, the expected-F1 threshold, their guards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from fedmeta.common import BaseRateDecision, expected_f1_threshold, prior_shift


def test_prior_shift_is_bayes_rule_for_the_new_priors():
    logits = torch.tensor([[0.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    shifted = prior_shift(logits, torch.tensor([0.9, 0.1])).exp()
    # Balanced training prior: p'(1|x) = sigmoid(margin + log(0.1 / 0.9)).
    margin = logits[:, 1] - logits[:, 0]
    expected = torch.sigmoid(margin.double() + math.log(0.1 / 0.9))
    assert torch.allclose(shifted[:, 1], expected)
    assert torch.allclose(shifted.sum(-1), torch.ones(3, dtype=torch.float64))
    back = prior_shift(shifted.log(), torch.tensor([0.5, 0.5]), train_prior=torch.tensor([0.9, 0.1]))
    assert torch.allclose(back, logits.double().log_softmax(-1))


def test_expected_f1_threshold_matches_a_hand_computed_case():
    # sum 1.6; flag 1 row: 2*0.9/2.6 = 0.692; 2 rows: 2*1.5/3.6 = 0.833; 3 rows: 2*1.6/4.6 = 0.696.
    assert expected_f1_threshold(np.array([0.1, 0.9, 0.6])) == pytest.approx(0.6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_balanced_prior_model_decides_near_the_best_f1_at_a_two_percent_base_rate(seed):
    """Two Gaussian classes, 2% failures: the exact balanced-prior logit (the likelihood ratio) shifted to the
    base rate gives calibrated probabilities; the chosen threshold's F1 is close to the best any threshold
    reaches on the labels, far above argmax at the balanced prior, and the mean probability is the base rate."""
    rng = np.random.default_rng(seed)
    n, rate = 20_000, 0.02
    y = rng.random(n) < rate
    x = rng.normal(size=n) + 2.5 * y
    margin = torch.from_numpy(2.5 * x - 2.5**2 / 2)  # log N(x; 2.5, 1) - log N(x; 0, 1)
    logits = torch.stack([torch.zeros(n, dtype=torch.float64), margin], dim=1)
    decisions = BaseRateDecision(rate).decide(logits)
    f1 = f1_score(y, decisions.flags.numpy(), zero_division=0.0)
    thresholds = np.quantile(margin.numpy(), np.linspace(0.9, 0.999, 200))
    best = max(f1_score(y, margin.numpy() >= t, zero_division=0.0) for t in thresholds)
    assert f1 >= best - 0.03
    assert f1 >= f1_score(y, margin.numpy() > 0, zero_division=0.0) + 0.15
    assert float(decisions.probabilities.mean()) == pytest.approx(rate, rel=0.25)


def test_bad_priors_rates_and_shapes_are_refused():
    with pytest.raises(ValueError, match="target_prior"):
        prior_shift(torch.zeros(2, 2), torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match="target_prior"):
        prior_shift(torch.zeros(2, 3), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="strictly between"):
        BaseRateDecision(0.0)
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        BaseRateDecision(0.1).decide(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="finite probabilities"):
        expected_f1_threshold(np.array([0.2, float("nan")]))
