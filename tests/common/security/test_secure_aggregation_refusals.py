"""What secure aggregation's protocol core refuses, each a way for a lying server or factory to learn or
steer more than the weighted sum: an altered share, a share delivered to or from the wrong participant or
in the wrong round, a round where one participant's seed and key were both revealed, and inputs that
weigh more than ``secagg-max-weight``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmeta.common.security.secure_aggregation import (
    FixedPoint,
    Participant,
    PublicKeys,
    SecureAggregationError,
    unmask_sum,
    weighted_input,
    weighted_mean,
)

ROUND = b"run/3"
REFUSED = "fails authentication: it was altered, or sealed for another factory, sender or round"


Round = tuple[dict[int, Participant], dict[int, PublicKeys], dict[int, dict[int, bytes]]]


def _round(round_id: bytes = ROUND) -> Round:
    """Three participants, their public keys and each one's sealed shares, by addressee (threshold 2)."""
    parties = {index: Participant(index, round_id) for index in (1, 2, 3)}
    keys = {index: party.public_keys() for index, party in parties.items()}
    return parties, keys, {index: party.encrypted_shares(keys, threshold=2) for index, party in parties.items()}


@pytest.mark.parametrize("where", [0, 12, -1], ids=["nonce", "ciphertext", "tag"])
def test_an_altered_share_is_refused_by_its_addressee(where):
    parties, keys, sealed = _round()
    box = bytearray(sealed[1][2])
    box[where] ^= 1
    assert parties[2].reveal({1: sealed[1][2]}, keys, sent=[1, 2, 3])  # as sealed, it opens
    with pytest.raises(SecureAggregationError, match=f"the share from participant 1 to 2 {REFUSED}"):
        parties[2].reveal({1: bytes(box)}, keys, sent=[1, 2, 3])


def test_a_share_delivered_to_another_factory_or_as_from_another_sender_is_refused():
    """1's share for 2 handed to 3, or handed to 2 as 3's: neither opens under the key that pair derives."""
    parties, keys, sealed = _round()
    with pytest.raises(SecureAggregationError, match=f"the share from participant 1 to 3 {REFUSED}"):
        parties[3].reveal({1: sealed[1][2]}, keys, sent=[1, 2, 3])
    with pytest.raises(SecureAggregationError, match=f"the share from participant 3 to 2 {REFUSED}"):
        parties[2].reveal({3: sealed[1][2]}, keys, sent=[1, 2, 3])


def test_a_share_reflected_to_its_sender_is_refused():
    """1 and 2 derive the same key for their shares both ways: 1's share for 2, handed back to 1 as 2's, opens.
    Its addressing inside is what refuses it; else 1 would reveal its own secrets' shares as 2's."""
    parties, keys, sealed = _round()
    with pytest.raises(SecureAggregationError, match="a share addressed 1->2 arrived as 2->1"):
        parties[1].reveal({2: sealed[1][2]}, keys, sent=[1, 2, 3])


def test_a_share_of_another_round_is_refused():
    """The same participants and keys in round 4: round 3's shares do not open."""
    parties, keys, sealed = _round()
    later = Participant(2, b"run/4", parties[2].mask_key, parties[2].share_key, parties[2].self_seed)
    with pytest.raises(SecureAggregationError, match=f"the share from participant 1 to 2 {REFUSED}"):
        later.reveal({1: sealed[1][2]}, keys, sent=[1, 2, 3])


def test_a_round_where_a_participants_seed_and_key_were_both_revealed_is_refused():
    """A server told 2 that 3's input arrived and 1 that it did not: it holds a share of 3's self-mask seed
    and one of its mask key. Unmasking refuses the mix by name."""
    parties, keys, sealed = _round()
    fixed = FixedPoint(bound=1.0, max_factories=3)
    masked = {index: party.masked_input(fixed.encode(np.full(4, 0.5)), keys) for index, party in parties.items()}
    revealed = {index: party.reveal({owner: sealed[owner][index] for owner in parties}, keys, sent=[1, 2, 3])
                for index, party in parties.items()}
    revealed[1] |= parties[1].reveal({3: sealed[3][1]}, keys, sent=[1, 2])  # 3's key, from 1
    with pytest.raises(SecureAggregationError, match="participant 3's key was revealed, its seed was expected: a "
                                                     "factory must never reveal both"):
        unmask_sum(masked, revealed, keys, threshold=2, round_id=ROUND)


def test_a_weight_over_the_max_weight_counts_as_the_max_weight():
    """A factory's input weighs at most ``max_weight``: 10^9 examples weigh what 100 do."""
    fixed = FixedPoint(bound=1.0, max_factories=2)
    delta = {"w": torch.full((3,), 0.5)}
    assert np.array_equal(weighted_input(delta, 1e9, fixed, max_weight=100.0),
                          weighted_input(delta, 100.0, fixed, max_weight=100.0))
    assert fixed.decode(weighted_input(delta, 1e9, fixed, max_weight=100.0))[-1] == pytest.approx(1.0)


def test_an_unmasked_sum_weighing_more_than_its_inputs_may_is_refused():
    """The server cannot see one input's weight, but the sum of n inputs weighs at most n: a factory that
    skipped the cap (here one weighing 3 x secagg-max-weight) is caught there."""
    fixed = FixedPoint(bound=5.0, max_factories=2)
    reference = {"w": torch.zeros(2)}
    honest = fixed.encode(np.array([0.1, 0.2, 1.0]))
    inflated = fixed.encode(np.array([3.0, 3.0, 3.0]))
    weighted_mean(honest + honest, fixed, reference, inputs=2)  # exactly at the cap: accepted
    with pytest.raises(SecureAggregationError, match="the unmasked weights sum to 4 secagg-max-weight, more than "
                                                     "the 2 inputs may weigh"):
        weighted_mean(honest + inflated, fixed, reference, inputs=2)
