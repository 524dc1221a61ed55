"""A factory's side of a secure round (`server.secure_round`): its keys, its sealed shares, its masked
input in place of the delta, and the shares it reveals. Its secrets stay in its node's state between
the messages and are never sent; the server forwards sealed shares it cannot open."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from torch import Tensor

from fedmeta.common import RoundSettings
from fedmeta.common.federation import protocol
from fedmeta.common.security.privacy import DifferentialPrivacy, clip_delta
from fedmeta.common.security.secure_aggregation import (
    FixedPoint,
    Participant,
    PublicKeys,
    participant_from_state,
    participant_state,
    reveal_text,
    weighted_input,
)

__all__ = ["advertise_keys", "masked_input", "reveal_shares", "seal_shares"]

SECAGG, MASKED = protocol.SECAGG, protocol.MASKED


def advertise_keys(msg: Message, state: RecordDict) -> RecordDict:
    """A new round: fresh secrets kept in ``state``, the two public keys answered."""
    fields = msg.content[SECAGG]
    party = Participant(int(fields["index"]), str(fields["round-id"]).encode())
    state[SECAGG] = ConfigRecord(participant_state(party))
    keys = party.public_keys()
    return RecordDict({SECAGG: ConfigRecord({"mask": keys.mask, "share": keys.share})})


def _party(fields: Mapping[str, object], state: RecordDict) -> Participant:
    """This round's secrets; a message of another round or index is refused, and so is any after the reveal
    (its secrets are gone: a second reveal could show both a peer's seed and its key)."""
    if SECAGG not in state:
        raise ValueError(f"a secure-round message for round {fields['round-id']!r} arrived while this node holds no "
                         "round's keys: before they were made, or after its shares were revealed (once a round)")
    party = participant_from_state(state[SECAGG])
    if (party.round_id, party.index) != (str(fields["round-id"]).encode(), int(fields["index"])):
        raise ValueError(f"a secure-round message for round {fields['round-id']!r} as participant {fields['index']} "
                         f"arrived, this node holds round {party.round_id.decode()!r} as {party.index}")
    return party


def _keys(fields: Mapping[str, object]) -> dict[int, PublicKeys]:
    indices = [int(key.split("/", 1)[1]) for key in fields if key.startswith("mask/")]
    return {i: PublicKeys(bytes(fields[f"mask/{i}"]), bytes(fields[f"share/{i}"])) for i in indices}


def _inbox(fields: Mapping[str, object]) -> dict[int, bytes]:
    return {int(key.split("/", 1)[1]): bytes(value) for key, value in fields.items() if key.startswith("inbox/")}


def seal_shares(msg: Message, state: RecordDict) -> RecordDict:
    """Its shares for every participant, each sealed for that participant alone."""
    fields = msg.content[SECAGG]
    sealed = _party(fields, state).encrypted_shares(_keys(fields), int(fields["threshold"]))
    return RecordDict({SECAGG: ConfigRecord({str(peer): box for peer, box in sealed.items()})})


def masked_input(delta: Mapping[str, Tensor], metrics: Mapping[str, float], settings: RoundSettings, msg: Message,
                 state: RecordDict) -> RecordDict:
    """The round's local update ``delta`` (trained under the message's round ``settings``) clipped to the
    server's norm bound (the server cannot check a masked delta), weighted by its examples, in fixed point
    and masked; the ``metrics`` beside it, but no delta. In a round with differential privacy the delta is
    clipped to the DP bound instead, carries this factory's share of the noise and weighs as much as any
    other (`common.security.privacy`)."""
    fields = msg.content[SECAGG]
    party = _party(fields, state)
    bound, max_weight = float(fields["bound"]), float(fields["max-weight"])
    fixed = FixedPoint(bound, int(fields["participants"]))
    if settings.dp_noise_multiplier > 0:
        privacy = DifferentialPrivacy(settings.dp_noise_multiplier, float(fields["dp-clip-norm"]), settings.dp_delta)
        noise = torch.Generator().manual_seed(secrets.randbits(63))  # nobody else may know this factory's noise
        # Its share of the noise for the fewest inputs the round is unmasked from (SecAgg+'s threshold of shares
        # is a neighbourhood's, smaller: the noise would be needlessly large).
        vector = weighted_input(privacy.noisy_share(delta, int(fields["min-inputs"]), noise), max_weight, fixed,
                                max_weight)
    else:
        vector = weighted_input(clip_delta(delta, bound), metrics[protocol.NUM_EXAMPLES], fixed, max_weight)
    masked = party.masked_input(vector, _keys(fields))
    return RecordDict({MASKED: ArrayRecord({"input": Array(masked)}), protocol.METRICS: MetricRecord(dict(metrics))})


def reveal_shares(msg: Message, state: RecordDict) -> RecordDict:
    """Its shares the server may now see: of each peer's self-mask seed if that peer's input arrived, of
    its mask key if not."""
    fields = msg.content[SECAGG]
    party = _party(fields, state)
    revealed = party.reveal(_inbox(fields), _keys(fields), [int(i) for i in fields["sent"]])
    del state[SECAGG]  # the round is over for this factory: its secrets go
    return RecordDict({SECAGG: ConfigRecord({"reveal": reveal_text(revealed)})})
