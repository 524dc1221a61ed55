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
    revealed_shares,
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


# Found by tests/fuzz: each of these reached the round as a bare ValueError, TypeError or KeyError (the server's
# round catches only SecureAggregationError, so a malformed message from one factory ended it).

def test_a_sealed_share_too_short_for_its_nonce_and_tag_is_refused():
    parties, keys, sealed = _round()
    with pytest.raises(SecureAggregationError, match="the share from participant 3 to 1 is 0 bytes, fewer than its "
                                                     r"nonce and tag \(28\)"):
        parties[1].reveal({2: sealed[2][1], 3: b""}, keys, [1, 2, 3])


@pytest.mark.parametrize(("plaintext", "problem"), [
    (b"[3, 1]", r"the share from participant 3 to 1 is not \[source, target, seed share, key share\]"),
    (b"\x80", r"the share from participant 3 to 1 is not \[source, target"),
    (b'[3, 1, [1, [1, 2, 3]], [1, [1, 2, "x"]]]', r"the share from participant 3 to 1: its key is not a share \[x, "
                                                 r"\[11 integers in \[0, 2\^31 - 1\)\]\]: \[1, \[1, 2, 'x'\]\]"),
    (b"[3, 1, [0, [1, 2, 3]], [1, [1, 2, 3]]]", "its seed is not a share"),
])
def test_a_share_a_malicious_peer_sealed_around_any_plaintext_is_refused_by_name(plaintext, problem):
    """A peer holds the key it shares with its addressee, so it can seal anything: the addressee checks it."""
    parties, keys, sealed = _round()
    nonce = b"\0" * 12
    forged = nonce + parties[3]._channel(1, keys[1]).encrypt(nonce, plaintext, ROUND)
    sent = [1, 2] if "its key" in problem else [1, 2, 3]
    with pytest.raises(SecureAggregationError, match=problem):
        parties[1].reveal({2: sealed[2][1], 3: forged}, keys, sent)


@pytest.mark.parametrize(("text", "problem"), [
    (b"not json", "participant 2's revealed shares are not JSON"),
    (b"[1]", "are not a JSON object of participant -> "),
    (b'{"1": ["seed", 1]}', r"'1' -> \['seed', 1\] is not a participant -> \[\"seed\" or \"key\", x, values\]"),
    (b'{"1": ["seed", 1, [1, 2]]}', r"participant 1's seed is not a share"),
])
def test_revealed_shares_that_do_not_fit_are_refused_by_the_server_by_name(text, problem):
    with pytest.raises(SecureAggregationError, match=problem):
        revealed_shares(text, 2)


def test_masked_inputs_of_another_length_or_dtype_and_a_sum_of_another_length_are_refused():
    _, keys, _ = _round()
    good = np.zeros(3, dtype=np.uint64)
    for wrong in (np.zeros(4, dtype=np.uint64), np.zeros(3, dtype=np.float32)):
        with pytest.raises(SecureAggregationError, match=r"must be vectors of unsigned 64-bit integers of one "
                                                         r"length; those of \[2\] are not"):
            unmask_sum({1: good, 2: wrong}, {1: {}, 2: {}}, keys, 2, ROUND)
    with pytest.raises(SecureAggregationError, match=r"the unmasked sum holds \(2,\) values, the model's 2 and the "
                                                     "weight expected"):
        weighted_mean(np.zeros(2, dtype=np.uint64), FixedPoint(1.0, 2), {"w": torch.zeros(2)})
