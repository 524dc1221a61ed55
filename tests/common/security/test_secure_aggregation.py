"""Secure aggregation's protocol core: the server's view of one masked delta says nothing about it, the
unmasked sum is the plain weighted sum within the fixed-point step, a factory that drops out is handled
exactly, and below the threshold nothing is unmasked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryptography.exceptions import InvalidTag
from scipy import stats

from fedmeta.common.federation.deltas import weighted_average
from fedmeta.common.security.secure_aggregation import (
    PRIME,
    FixedPoint,
    Participant,
    SecureAggregation,
    SecureAggregationError,
    aggregate_in_process,
    reconstruct,
    shamir_shares,
    weighted_input,
    weighted_mean,
)

SECRET = bytes(range(32))


def test_any_threshold_of_shamir_shares_rebuild_the_secret_and_fewer_do_not():
    shares = shamir_shares(SECRET, count=7, threshold=4)
    assert reconstruct(shares[3:], 4) == SECRET and reconstruct(shares[::2], 4) == SECRET
    with pytest.raises(SecureAggregationError, match="3 shares, fewer than the threshold 4"):
        reconstruct(shares[:3], 4)


def test_shares_for_a_thousand_places_rebuild_any_secret_from_any_threshold_of_them_in_any_order():
    """The field's arithmetic stays inside uint64 at SecAgg+'s sizes and beyond (a secret of all 0xff bytes:
    every chunk at its largest)."""
    rng = np.random.default_rng(0)
    for secret in (SECRET, b"\xff" * 32, bytes(32)):
        shares = shamir_shares(secret, count=1_000, threshold=700)
        assert all(0 <= value < PRIME for _, values in shares for value in values)
        for _ in range(3):
            chosen = [shares[i] for i in rng.permutation(1_000)[:700]]
            assert reconstruct(chosen, 700) == secret


def test_a_shares_coefficients_leave_a_single_share_uniform():
    """One share says nothing about the secret: over many sharings, a share's values fill the field evenly
    whatever the secret (a chi-square test on 16 bins)."""
    for secret in (bytes(32), b"\xff" * 32):
        values = np.array([shamir_shares(secret, count=2, threshold=2)[0][1] for _ in range(400)]).ravel()
        counts = np.bincount((values * 16 // PRIME).astype(int), minlength=16)
        assert stats.chisquare(counts).pvalue > 1e-4, counts


def test_a_masked_delta_is_uniform_whatever_the_delta():
    """The server's view of one factory's input: for an all-zero delta and for one at the bound alike, the
    masked vector's values fill the 2^64 residues uniformly and do not follow the input."""
    fixed = FixedPoint(bound=10.0, max_factories=10)
    peers = {index: Participant(index, b"r") for index in (1, 2, 3)}
    keys = {index: party.public_keys() for index, party in peers.items()}
    length = 20_000
    ramp = np.linspace(-10, 10, length)
    for delta in (np.zeros(length), ramp):
        masked = peers[1].masked_input(fixed.encode(delta), keys).astype(np.float64)
        counts = np.histogram(masked, bins=32, range=(0.0, 2.0**64))[0]
        assert stats.chisquare(counts).pvalue > 1e-6  # uniform residues (fails once in a million runs)
        assert abs(stats.pearsonr(masked, ramp).statistic) < 0.05  # ~7 standard errors of 1/sqrt(20000)


def test_the_unmasked_sum_is_the_plain_weighted_sum_within_the_fixed_point_step():
    generator = torch.Generator().manual_seed(0)
    deltas = [{"w": torch.randn(300, generator=generator) * 0.5, "b": torch.randn(7, generator=generator)}
              for _ in range(6)]
    weights = [40.0, 10.0, 25.0, 5.0, 60.0, 33.0]
    fixed = FixedPoint(bound=5.0, max_factories=6)
    inputs = {i + 1: weighted_input(delta, weight, fixed, max_weight=100.0)
              for i, (delta, weight) in enumerate(zip(deltas, weights, strict=True))}
    mean = weighted_mean(aggregate_in_process(inputs, threshold=4), fixed, deltas[0])
    plain = weighted_average(deltas, weights)
    # 64-bit fixed point: a step of 5 * 6 / 2^63 per value, below float32's own rounding of the mean
    for name in plain:
        torch.testing.assert_close(mean[name], plain[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("when", ["before its masked delta", "after its masked delta"])
def test_with_one_of_five_factories_gone_the_sum_is_still_recovered_exactly(when):
    fixed = FixedPoint(bound=1.0, max_factories=5)
    rng = np.random.default_rng(1)
    inputs = {index: fixed.encode(rng.uniform(-1, 1, 500)) for index in range(1, 6)}
    if when == "before its masked delta":  # its pairwise masks are cancelled from its rebuilt key
        unmasked = aggregate_in_process(inputs, threshold=3, drop_before_input=[5])
        counted = [1, 2, 3, 4]
    else:  # its input arrived: its self mask is removed from its rebuilt seed
        unmasked = aggregate_in_process(inputs, threshold=3, drop_before_unmask=[5])
        counted = [1, 2, 3, 4, 5]
    exact = np.zeros(500, dtype=np.uint64)
    for i in counted:
        exact += inputs[i]  # numpy's unsigned integers wrap: the sum modulo 2^64
    assert np.array_equal(unmasked, exact)


def test_below_the_threshold_the_round_fails_and_nothing_is_unmasked():
    fixed = FixedPoint(bound=1.0, max_factories=5)
    inputs = {index: fixed.encode(np.full(10, 0.5)) for index in range(1, 6)}
    with pytest.raises(SecureAggregationError, match="3 factories revealed their shares, fewer than the threshold 4"):
        aggregate_in_process(inputs, threshold=4, drop_before_input=[5], drop_before_unmask=[4])


def test_a_share_cannot_be_read_by_another_factory_or_the_server():
    parties = {index: Participant(index, b"r") for index in (1, 2, 3)}
    keys = {index: party.public_keys() for index, party in parties.items()}
    sealed = parties[1].encrypted_shares(keys, threshold=2)
    assert parties[2].reveal({1: sealed[2]}, keys, sent=[1])[1][0] == "seed"  # its addressee reads it
    with pytest.raises(InvalidTag):  # authenticated encryption under a key only 1 and 2 can derive
        parties[3].reveal({1: sealed[2]}, keys, sent=[1])


def test_the_threshold_is_the_share_of_participants_rounded_up_without_float_slips():
    rule = SecureAggregation(enabled=True, threshold=0.6)
    assert [rule.threshold_of(n) for n in (2, 3, 5, 10, 100)] == [2, 2, 3, 6, 60]  # 0.6 * 5 is 3.0000000000000004
    assert SecureAggregation(enabled=True, threshold=1.0).threshold_of(5) == 5
