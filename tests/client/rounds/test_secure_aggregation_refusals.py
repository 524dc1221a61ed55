"""What a factory refuses in a secure round (`client.rounds.secure_aggregation`): a second reveal, which could
show both a peer's self-mask seed and its mask key, and any message of another round or as another
participant. The factory's functions are called with messages as the SuperLink delivers them; its two peers
are simulated here."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ConfigRecord, MessageType, RecordDict

from fedmeta.client.rounds.secure_aggregation import advertise_keys, masked_input, reveal_shares, seal_shares
from fedmeta.common import RoundSettings
from fedmeta.common.federation import protocol
from fedmeta.common.security.secure_aggregation import Participant, PublicKeys
from tests.support.flower_messages import delivered

ROUND = "run/3"
BASE = {"round-id": ROUND, "index": 1, "threshold": 2, "participants": 3, "min-inputs": 2, "max-weight": 100.0,
        "bound": 10.0, "dp-clip-norm": 1.0}


def _secure(kind: str, fields: dict[str, object]):
    """A secure round's message of ``kind`` carrying ``fields``, as factory 1's node receives it."""
    return delivered(RecordDict({protocol.SECAGG: ConfigRecord(fields)}), kind, dst_node_id=11)


@pytest.fixture()
def joined() -> tuple[RecordDict, dict[str, object]]:
    """Factory 1 through the keys and shares of round run/3 with peers 2 and 3: its node's state, and what
    every later message of the round carries (the round, the keys and factory 1's inbox)."""
    state = RecordDict()
    own = advertise_keys(_secure(protocol.SECAGG_KEYS, BASE), state)[protocol.SECAGG]
    peers = {index: Participant(index, ROUND.encode()) for index in (2, 3)}
    keys = {1: PublicKeys(bytes(own["mask"]), bytes(own["share"]))} | {i: p.public_keys() for i, p in peers.items()}
    keyed = BASE | {f"mask/{i}": k.mask for i, k in keys.items()} | {f"share/{i}": k.share for i, k in keys.items()}
    sealed = seal_shares(_secure(protocol.SECAGG_SHARES, keyed), state)[protocol.SECAGG]
    inbox = {"inbox/1": bytes(sealed["1"])} | {f"inbox/{i}": p.encrypted_shares(keys, 2)[1] for i, p in peers.items()}
    return state, keyed | inbox


def _reveal(state: RecordDict, fields: dict[str, object], sent: list[int]) -> dict[str, str]:
    reply = reveal_shares(_secure(protocol.SECAGG_REVEAL, fields | {"sent": sent}), state)
    return {owner: kind for owner, (kind, _, _) in json.loads(bytes(reply[protocol.SECAGG]["reveal"])).items()}


def test_a_factory_reveals_once_a_round_so_never_both_secrets_of_a_peer(joined):
    """Told first that 3's input arrived (3's seed share), then that it did not (3's key share): the second
    request is refused, its secrets gone with the first."""
    state, fields = joined
    assert _reveal(state, fields, sent=[1, 2, 3]) == {"1": "seed", "2": "seed", "3": "seed"}
    with pytest.raises(ValueError, match="holds no round's keys: before they were made, or after its shares were "
                                         r"revealed \(once a round\)"):
        _reveal(state, fields, sent=[1, 2])


def _train(msg, state: RecordDict) -> RecordDict:
    return masked_input({"w": torch.zeros(2)}, {protocol.NUM_EXAMPLES: 10.0}, RoundSettings(), msg, state)


@pytest.mark.parametrize(("round_id", "index"), [("run/2", 1), ("run/4", 1), (ROUND, 2)],
                         ids=["stale-round", "future-round", "other-participant"])
@pytest.mark.parametrize(("kind", "answer"), [(protocol.SECAGG_SHARES, seal_shares), (MessageType.TRAIN, _train),
                                              (protocol.SECAGG_REVEAL, reveal_shares)],
                         ids=["shares", "masked-input", "reveal"])
def test_a_message_of_another_round_or_participant_is_refused_and_the_round_goes_on(joined, round_id, index, kind,
                                                                                    answer):
    state, fields = joined
    wrong = fields | {"round-id": round_id, "index": index, "sent": [1, 2, 3]}
    with pytest.raises(ValueError, match=f"for round '{round_id}' as participant {index} arrived, this node holds "
                                         f"round '{ROUND}' as 1"):
        answer(_secure(kind, wrong), state)
    assert _reveal(state, fields, sent=[1, 2, 3])  # the refused message ended nothing
