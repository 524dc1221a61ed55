"""Secure aggregation's messages, however they arrive: a factory opening the shares its peers sealed for it (any
bytes, altered boxes, or a malicious peer sealing any plaintext under their shared key) and the server reading
the factories' revealed shares (any bytes, any JSON) and masked inputs (of any length and dtype) either go on
or refuse with a `SecureAggregationError` saying what is wrong: a malformed message never ends the round with
a ``ValueError``, ``TypeError`` or ``KeyError`` the server does not expect."""

from __future__ import annotations

import json
import secrets

import numpy as np
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from fedmeta.common.security.secure_aggregation import (
    FixedPoint,
    Participant,
    SecureAggregationError,
    reveal_text,
    revealed_shares,
    unmask_sum,
    weighted_input,
    weighted_mean,
)
from tests.fuzz.strategies import FUZZ, WIRE_ARRAYS, changed_document, json_bytes, names_the_problem

ROUND = b"run/3"
THRESHOLD = 2
PARTIES = {index: Participant(index, ROUND) for index in (1, 2, 3)}
KEYS = {index: party.public_keys() for index, party in PARTIES.items()}
SEALED = {owner: party.encrypted_shares(KEYS, THRESHOLD) for owner, party in PARTIES.items()}  # owner -> peer -> box
INBOX = {peer: {owner: boxes[peer] for owner, boxes in SEALED.items()} for peer in PARTIES}
REFERENCE = {"w": torch.zeros(2), "b": torch.zeros(1)}
FIXED = FixedPoint(10.0, len(PARTIES))
MASKED = {index: party.masked_input(weighted_input({"w": torch.ones(2) * index, "b": torch.ones(1)}, 5.0, FIXED,
                                                   10.0), KEYS) for index, party in PARTIES.items()}
REVEALS = {index: reveal_text(party.reveal(INBOX[index], KEYS, sorted(MASKED))) for index, party in PARTIES.items()}


def _opened(owner: int) -> list[object]:
    """What ``owner`` sealed for factory 1, as factory 1 reads it."""
    box = INBOX[1][owner]
    return json.loads(PARTIES[1]._channel(owner, KEYS[owner]).decrypt(box[:12], box[12:], ROUND))


# What a malicious peer seals for factory 1, and what a factory may send as its reveal: built once.
PLAINTEXTS = {owner: json_bytes(changed_document(_opened(owner))) for owner in PARTIES}
REVEAL_TEXTS = {index: json_bytes(changed_document(json.loads(text))) for index, text in REVEALS.items()}


@st.composite
def boxes(draw: st.DrawFn, owner: int) -> bytes:
    """What arrives at factory 1 as ``owner``'s sealed shares: the real box, altered or cut, any bytes, or any
    plaintext that a malicious ``owner`` seals under the key it shares with factory 1."""
    kind = draw(st.sampled_from(("real", "altered", "bytes", "sealed", "sealed", "sealed")))
    box = INBOX[1][owner]
    if kind == "real":
        return box
    if kind == "altered":
        at = draw(st.integers(0, len(box) - 1))
        return box[:at] + draw(st.binary(max_size=3)) + box[at + draw(st.integers(0, 3)):]
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    plaintext = draw(PLAINTEXTS[owner])
    nonce = secrets.token_bytes(12)
    return nonce + PARTIES[owner]._channel(1, KEYS[1]).encrypt(nonce, plaintext, ROUND)


@FUZZ
@given(st.fixed_dictionaries({owner: boxes(owner) for owner in PARTIES}), st.sets(st.sampled_from(list(PARTIES))))
def test_a_factory_reveals_checked_shares_or_refuses_its_inbox_by_name(inbox: dict[int, bytes], sent: set[int]
                                                                       ) -> None:
    try:
        revealed = PARTIES[1].reveal(inbox, KEYS, sorted(sent))
    except SecureAggregationError as error:
        event("refused")
        names_the_problem(error, "share")
    else:
        event("accepted")
        assert set(revealed) == set(PARTIES)
        assert revealed_shares(reveal_text(revealed), 1) == revealed  # what it reveals, the server reads back


@st.composite
def rounds(draw: st.DrawFn) -> tuple[dict[int, np.ndarray], dict[int, bytes]]:
    """The round's masked inputs and revealed shares as the server receives them, one of each perhaps replaced:
    an input by any array, a factory's reveal by any bytes or any change of its JSON."""
    masked, reveals = dict(MASKED), dict(REVEALS)
    if draw(st.booleans()):
        masked[draw(st.sampled_from(tuple(masked)))] = draw(WIRE_ARRAYS)
    if draw(st.integers(0, 3)):
        index = draw(st.sampled_from(tuple(reveals)))
        reveals[index] = draw(REVEAL_TEXTS[index])
    return masked, reveals


@FUZZ
@given(rounds())
def test_the_server_unmasks_the_mean_or_refuses_the_round_by_name(round_: tuple[dict[int, np.ndarray],
                                                                                dict[int, bytes]]) -> None:
    masked, reveals = round_
    try:
        shares = {index: revealed_shares(text, index) for index, text in reveals.items()}
        total = unmask_sum(masked, shares, KEYS, THRESHOLD, ROUND)
        mean = weighted_mean(total, FIXED, REFERENCE, len(masked))
    except SecureAggregationError as error:
        event("refused")
        names_the_problem(error)
    else:
        event("accepted")
        assert {name: t.shape for name, t in mean.items()} == {name: t.shape for name, t in REFERENCE.items()}
