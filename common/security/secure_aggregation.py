"""Secure aggregation of a round's deltas: the server learns their weighted sum, never one factory's.

The protocol of Bonawitz et al. (CCS 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning"), every participant masked against every other, built from `cryptography`'s primitives:

1. **Keys.** Each factory makes two X25519 key pairs, one to agree mask seeds (s) and one to agree
   keys that encrypt the shares it sends through the server (c), and a random self-mask seed b.
2. **Shares.** It splits b and its s private key into Shamir shares (threshold t of the n factories),
   one pair per peer, each encrypted with AES-GCM under a key only it and that peer can derive.
3. **Masked input.** It sends its weighted, fixed-point delta plus the expansion of b plus, for every
   peer v, plus or minus the expansion of the seed it agrees with v (plus when its index is lower),
   all in integers modulo 2^64. The server sees a uniformly random vector.
4. **Unmasking.** Every factory still there reveals, for each peer that sent a masked input, its share
   of that peer's b, and for each peer that did not, its share of that peer's s key. With t shares the
   server rebuilds the seeds, removes the self masks of those who sent and the pairwise masks the
   missing ones left behind, and is left with the sum of the inputs it received. Fewer than t: the
   round fails and nothing is learned.

**SecAgg+** (Bell et al., CCS 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"):
the same steps within a sparse random graph. The server places the participants in a random order on a ring
(public randomness it draws for the round) and joins each to the k/2 nearest on either side
(`neighbourhoods`); a participant shares its b and s with its neighbours only (itself included, as above),
masks only against them and reveals only theirs, so its work grows with k = O(log n), not n. k and the
threshold t follow from the assumed dropout and corruption fractions (`secagg_plus_parameters`); k >= n - 1
is the complete graph, the protocol above.

Seeds are expanded by ChaCha20 (a cryptographic PRG); shared secrets go through HKDF-SHA256 with a
label per use and the round's identity, so no key serves two purposes or two rounds. Weighted averaging
sends ``w_i / max_weight * delta_i`` and ``w_i / max_weight`` as one more coordinate, so the server
divides the summed vector by the summed weight; every value lies in ``[-bound, bound]`` (the norm bound
bounds every coordinate) and the fixed-point scale leaves room for ``max_factories`` of them.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from torch import Tensor

__all__ = [
    "FIELD_BITS",
    "PRIME",
    "FixedPoint",
    "Participant",
    "PublicKeys",
    "SecureAggregation",
    "SecureAggregationError",
    "ShareRefusedError",
    "aggregate_in_process",
    "complete_graph",
    "neighbourhoods",
    "participant_from_state",
    "participant_state",
    "reconstruct",
    "reveal_text",
    "revealed_shares",
    "secagg_plus_parameters",
    "shamir_shares",
    "unmask_sum",
    "weighted_input",
    "weighted_mean",
]

FIELD_BITS = 64  # masked vectors live in the integers modulo 2^64 (2^32 left a weighted delta too coarse)
_FIELD = np.uint64
# Shamir's field: a Mersenne prime above every 3-byte chunk of a secret, small enough that numpy multiplies two
# elements, or an element and a share's place, without leaving uint64: a factory's shares for its k neighbours
# are t array operations, not k * t Python multiplications of 127-bit integers (sealing shares for 114
# neighbours at threshold 78, SecAgg+'s at 1,000 factories: 6.7 ms, against 16.1 ms in the field 2^127 - 1).
PRIME = 2**31 - 1
_PRIME = np.uint64(PRIME)
_CHUNK = 3  # bytes of a secret per field element
_SECRET = 32  # bytes of a seed or an X25519 private key
_SHARE_VALUES = math.ceil(_SECRET / _CHUNK)  # field elements of a share
_NONCE, _TAG = 12, 16  # bytes of AES-GCM's nonce before a sealed share, and of its tag after
SECURITY_BITS, CORRECTNESS_BITS = 40, 30  # SecAgg+'s sigma and eta: failure probabilities 2^-40 and 2^-30

Graph = dict[int, tuple[int, ...]]  # participant -> its neighbourhood, itself included


class SecureAggregationError(RuntimeError):
    """A round that cannot be unmasked: too few shares, or shares that do not fit together."""


class ShareRefusedError(SecureAggregationError, InvalidTag):
    """A sealed share its receiver refuses to open: altered, or sealed for another factory, sender or round
    (AES-GCM's `InvalidTag`, named)."""


# --------------------------------------------------------------------------- Shamir's secret sharing

def _random_elements(shape: tuple[int, ...]) -> np.ndarray:
    """Field elements drawn uniformly from the OS's CSPRNG: 31 random bits each, the one value above the field
    (``PRIME`` itself) drawn again."""
    count = math.prod(shape)
    values = np.frombuffer(secrets.token_bytes(4 * count), dtype=np.uint32) & np.uint32(PRIME)
    while (redraw := np.flatnonzero(values == PRIME)).size:
        values[redraw] = np.frombuffer(secrets.token_bytes(4 * redraw.size), dtype=np.uint32) & np.uint32(PRIME)
    return values.astype(np.uint64).reshape(shape)


def shamir_shares(secret: bytes, count: int, threshold: int) -> list[tuple[int, tuple[int, ...]]]:
    """``count`` shares ``(x, values)`` of ``secret``, any ``threshold`` of which rebuild it (x = 1..count)."""
    if not 1 <= threshold <= count < PRIME:
        raise ValueError(f"threshold must be in [1, {count}] and the count below {PRIME}, got {threshold} of {count}")
    chunks = np.array([int.from_bytes(secret[i:i + _CHUNK], "big") for i in range(0, len(secret), _CHUNK)],
                      dtype=np.uint64)
    places = np.arange(1, count + 1, dtype=np.uint64)[:, None]
    values = np.zeros((count, chunks.size), dtype=np.uint64)
    for coefficients in _random_elements((threshold - 1, chunks.size)):  # Horner, the highest degree first
        values = (values * places + coefficients) % _PRIME
    values = (values * places + chunks) % _PRIME
    return [(x, tuple(row)) for x, row in enumerate(values.tolist(), start=1)]


def _lagrange_at_zero(xs: Sequence[int]) -> np.ndarray:
    """The weights that take the values at ``xs`` (distinct places) of a polynomial of degree < len(xs) to its
    value at 0: prod_{j != i} x_j / (x_j - x_i), modulo ``PRIME``."""
    places = np.array(xs, dtype=np.uint64) % _PRIME
    numerators = np.ones(len(xs), dtype=np.uint64)
    denominators = np.ones(len(xs), dtype=np.uint64)
    for j, x_j in enumerate(places):
        others = np.arange(len(xs)) != j
        numerators[others] = numerators[others] * x_j % _PRIME
        denominators[others] = denominators[others] * ((x_j + _PRIME - places[others]) % _PRIME) % _PRIME
    inverses = np.array([pow(int(d), -1, PRIME) for d in denominators.tolist()], dtype=np.uint64)
    return numerators * inverses % _PRIME


def reconstruct(shares: Sequence[tuple[int, Sequence[int]]], threshold: int, length: int = _SECRET) -> bytes:
    """The secret of ``length`` bytes that ``threshold`` or more ``shares`` rebuild (Lagrange at 0)."""
    if len({x for x, _ in shares}) < threshold:
        raise SecureAggregationError(f"{len(shares)} shares, fewer than the threshold {threshold}: the secret "
                                     "stays hidden")
    chosen = list({x: values for x, values in shares}.items())[:threshold]
    weights = _lagrange_at_zero([x for x, _ in chosen])
    values = np.array([values for _, values in chosen], dtype=np.uint64)
    chunks = ((weights[:, None] * values % _PRIME).sum(axis=0) % _PRIME).tolist()  # t terms < 2^31: no overflow
    sizes = [min(_CHUNK, length - start) for start in range(0, length, _CHUNK)]
    try:
        return b"".join(chunk.to_bytes(size, "big") for chunk, size in zip(chunks, sizes, strict=True))
    except OverflowError:
        raise SecureAggregationError("the shares do not fit together: a share was altered") from None


# --------------------------------------------------------------------------- SecAgg+'s graph and parameters

def complete_graph(indices: Iterable[int]) -> Graph:
    """Everyone every participant's neighbour: Bonawitz et al.'s protocol."""
    members = tuple(sorted(indices))
    return {index: members for index in members}


def neighbourhoods(indices: Iterable[int], degree: int, seed: int | str | bytes) -> Graph:
    """Each participant's neighbourhood, itself included, in a random Harary graph of ``degree``: the
    participants on a ring in the order ``seed`` shuffles them to, each joined to the ``degree / 2`` nearest
    on either side (a symmetric relation). ``degree >= n - 1``: everyone is everyone's neighbour."""
    members = sorted(indices)
    count = len(members)
    if degree >= count - 1:
        return complete_graph(members)
    if degree < 2 or degree % 2:
        raise ValueError(f"a sparse graph's degree must be even and >= 2, got {degree}")
    ring = members.copy()
    random.Random(seed).shuffle(ring)
    half = degree // 2
    return {ring[place]: tuple(sorted(ring[(place + step) % count] for step in range(-half, half + 1)))
            for place in range(count)}


def _tail_quantile(population: int, marked: int, drawn: int, bits: int, union: int) -> int:
    """The smallest c with ``union * P[X > c] <= 2^-bits``, X hypergeometric (``drawn`` of ``population``,
    ``marked`` of them marked), computed exactly in integers."""
    total = math.comb(population, drawn)
    tail = 0  # P[X > c] * total
    for c in range(min(marked, drawn), -1, -1):
        wider = tail + math.comb(marked, c) * math.comb(population - marked, drawn - c)  # P[X > c - 1] * total
        if (union * wider) << bits > total:
            return c
        tail = wider
    raise AssertionError("P[X >= 0] = 1 exceeds any bound")  # unreachable: union << bits > 1


def secagg_plus_parameters(participants: int, dropout: float, corruption: float, *,
                           security_bits: int = SECURITY_BITS, correctness_bits: int = CORRECTNESS_BITS
                           ) -> tuple[int, int]:
    """SecAgg+'s degree k and threshold t for ``participants`` of whom at most a ``dropout`` fraction drop
    out and a ``corruption`` fraction collude with the server: the smallest even k (else the complete graph,
    ``participants - 1``) for which some t meets Bell et al.'s conditions, in this simplified union-bound
    form (the paper's connectivity condition on the honest survivors' graph is not checked):

    * correctness: over all participants, P[fewer than t of one's k neighbours survive] <= 2^-correctness;
    * security: over all participants, P[one has t or more corrupt neighbours] <= 2^-security, and
      2t > k + 1 + c_max, c_max the corrupt-neighbour count exceeded with probability <= 2^-security (over
      all): of an honest participant's k + 1 share holders (itself included: a lying server may ask it
      too), the server can then never collect t shares of its seed b and t of its key s both.

    Neighbour counts are hypergeometric (k drawn of the n - 1 others, floor(fraction * n) of them dropped
    or corrupt), their tails exact with `math.comb`. t is the least that is secure, leaving the most room
    for dropouts. SecureAggregationError: no t fits even the complete graph (too many dropouts or corrupt
    parties for this few participants: the round cannot be run)."""
    if not (0 <= dropout < 1 and 0 <= corruption < 1):
        raise ValueError(f"the dropout and corruption fractions must be in [0, 1), got {dropout} and {corruption}")
    others = participants - 1
    dropped, corrupt = math.floor(dropout * participants), math.floor(corruption * participants)
    for degree in [*range(2, others, 2), others]:
        survivors = degree - _tail_quantile(others, dropped, degree, correctness_bits, participants)
        most_corrupt = _tail_quantile(others, corrupt, degree, security_bits, participants)
        threshold = max(most_corrupt + 1, (degree + 1 + most_corrupt) // 2 + 1)
        if threshold <= survivors:
            return degree, threshold
    raise SecureAggregationError(f"SecAgg+ with {participants} participants, {dropped} dropping out and {corrupt} "
                                 "corrupt: no threshold is both reached by the surviving neighbours and out of the "
                                 "corrupt ones' reach")


# --------------------------------------------------------------------------- keys, masks, fixed point

def _derive(secret: bytes, label: str, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode() + b"|" + context).derive(secret)


def _expand(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random integers modulo 2^64 from a 32-byte seed (ChaCha20 keystream)."""
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(encryptor.update(b"\0" * (8 * length)), dtype=_FIELD).copy()


def _raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class FixedPoint:
    """Reals in ``[-bound, bound]`` as integers modulo 2^64, with room for ``max_factories`` summands."""

    bound: float
    max_factories: int

    @property
    def scale(self) -> float:
        return math.floor((2 ** (FIELD_BITS - 1) - 1) / (self.bound * self.max_factories))

    def encode(self, values: np.ndarray) -> np.ndarray:
        clipped = np.clip(np.asarray(values, dtype=np.float64), -self.bound, self.bound)
        return np.round(clipped * self.scale).astype(np.int64).view(_FIELD)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """A sum of encoded values, back to reals (two's complement: the sum stays inside the range)."""
        return total.astype(_FIELD).view(np.int64).astype(np.float64) / self.scale


@dataclass(frozen=True)
class PublicKeys:
    """What a participant advertises: its mask-agreement and share-encryption public keys."""

    mask: bytes
    share: bytes


@dataclass
class Participant:
    """One factory's side of one round; ``index`` is its place among the round's participants (1..n)."""

    index: int
    round_id: bytes
    mask_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    share_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    self_seed: bytes = field(default_factory=lambda: secrets.token_bytes(_SECRET))

    def public_keys(self) -> PublicKeys:
        return PublicKeys(_public(self.mask_key), _public(self.share_key))

    def _channel(self, peer: int, keys: PublicKeys) -> AESGCM:
        low, high = sorted((self.index, peer))
        secret = self.share_key.exchange(X25519PublicKey.from_public_bytes(keys.share))
        return AESGCM(_derive(secret, f"shares {low}-{high}", self.round_id))

    def encrypted_shares(self, peers: Mapping[int, PublicKeys], threshold: int) -> dict[int, bytes]:
        """For each peer (every participant, this one included), its shares of this one's self-mask seed
        and mask key, readable by that peer only."""
        indices = sorted(peers)
        count = len(indices)
        seed_shares = dict(zip(indices, shamir_shares(self.self_seed, count, threshold), strict=True))
        key_shares = dict(zip(indices, shamir_shares(_raw(self.mask_key), count, threshold), strict=True))
        sealed = {}
        for peer in indices:
            plaintext = json.dumps([self.index, peer, seed_shares[peer], key_shares[peer]]).encode()
            nonce = secrets.token_bytes(_NONCE)
            sealed[peer] = nonce + self._channel(peer, peers[peer]).encrypt(nonce, plaintext, self.round_id)
        return sealed

    def masked_input(self, encoded: np.ndarray, peers: Mapping[int, PublicKeys]) -> np.ndarray:
        """``encoded`` (`FixedPoint.encode`) plus this participant's self mask and pairwise masks."""
        masked = encoded.astype(_FIELD) + _expand(_derive(self.self_seed, "self", self.round_id), len(encoded))
        for peer, keys in peers.items():
            if peer == self.index:
                continue
            mask = _expand(_pair_seed(self.mask_key, keys.mask, self.index, peer, self.round_id), len(encoded))
            masked = masked + mask if self.index < peer else masked - mask
        return masked.astype(_FIELD)

    def reveal(self, sealed: Mapping[int, bytes], peers: Mapping[int, PublicKeys], sent: Sequence[int]
               ) -> dict[int, tuple[str, tuple[int, tuple[int, ...]]]]:
        """Its shares of each peer's secrets that the server may now see: the self-mask seed of those in
        ``sent`` (their masked inputs arrived), the mask key of the others; never both of one peer."""
        revealed = {}
        for owner, box in sealed.items():
            if len(box) < _NONCE + _TAG:
                raise ShareRefusedError(f"the share from participant {owner} to {self.index} is {len(box)} bytes, "
                                        f"fewer than its nonce and tag ({_NONCE + _TAG})")
            try:
                plaintext = self._channel(owner, peers[owner]).decrypt(box[:_NONCE], box[_NONCE:], self.round_id)
            except InvalidTag:
                raise ShareRefusedError(f"the share from participant {owner} to {self.index} fails authentication: "
                                        "it was altered, or sealed for another factory, sender or round") from None
            what = f"the share from participant {owner} to {self.index}"
            try:
                source, target, seed_share, key_share = json.loads(plaintext)
            except (ValueError, TypeError):  # not JSON (nor UTF-8), or not four items
                raise SecureAggregationError(f"{what} is not [source, target, seed share, key share]") from None
            if (source, target) != (owner, self.index):
                raise SecureAggregationError(f"a share addressed {source!r:.20}->{target!r:.20} arrived as "
                                             f"{owner}->{self.index}")
            revealed[owner] = ("seed", _share(seed_share, f"{what}: its seed")) if owner in sent else (
                "key", _share(key_share, f"{what}: its key"))
        return revealed


def _pair_seed(own: X25519PrivateKey, peer_public: bytes, own_index: int, peer_index: int, round_id: bytes) -> bytes:
    low, high = sorted((own_index, peer_index))
    return _derive(own.exchange(X25519PublicKey.from_public_bytes(peer_public)), f"mask {low}-{high}", round_id)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _share(value: object, what: str) -> tuple[int, tuple[int, ...]]:
    """A Shamir share ``[x, [values]]`` as JSON carries it, checked: x a place in [1, PRIME), one value in
    [0, PRIME) per chunk of a secret; `SecureAggregationError` naming ``what`` otherwise."""
    if (isinstance(value, list | tuple) and len(value) == 2 and _is_int(value[0]) and 1 <= value[0] < PRIME
            and isinstance(value[1], list | tuple) and len(value[1]) == _SHARE_VALUES
            and all(_is_int(v) and 0 <= v < PRIME for v in value[1])):
        return value[0], tuple(value[1])
    raise SecureAggregationError(f"{what} is not a share [x, [{_SHARE_VALUES} integers in [0, 2^31 - 1)]]: "
                                 f"{value!r:.100}")


def reveal_text(revealed: Mapping[int, tuple[str, tuple[int, Sequence[int]]]]) -> bytes:
    """A factory's revealed shares (`Participant.reveal`) as its reveal message carries them."""
    return json.dumps({str(owner): [kind, x, list(values)] for owner, (kind, (x, values)) in revealed.items()}
                      ).encode()


def revealed_shares(text: bytes, revealer: int) -> dict[int, tuple[str, tuple[int, tuple[int, ...]]]]:
    """The shares in participant ``revealer``'s reveal message (`reveal_text`), checked: owner -> (kind, share);
    `SecureAggregationError` naming what does not fit."""
    what = f"participant {revealer}'s revealed shares"
    try:
        data = json.loads(text)
    except ValueError:  # not JSON, nor UTF-8
        raise SecureAggregationError(f"{what} are not JSON") from None
    if not isinstance(data, dict):
        raise SecureAggregationError(f"{what} are not a JSON object of participant -> [kind, x, values]")
    shares = {}
    for owner, item in data.items():
        if not (owner.isascii() and owner.isdigit()) or not (isinstance(item, list) and len(item) == 3
                                                             and item[0] in ("seed", "key")):
            raise SecureAggregationError(f"{what}: {owner!r:.20} -> {item!r:.100} is not a participant -> "
                                         "[\"seed\" or \"key\", x, values]")
        shares[int(owner)] = (item[0], _share(item[1:], f"{what}: participant {owner}'s {item[0]}"))
    return shares


def unmask_sum(masked: Mapping[int, np.ndarray], revealed: Mapping[int, Mapping[int, tuple[str, object]]],
               peers: Mapping[int, PublicKeys], threshold: int, round_id: bytes,
               neighbours: Mapping[int, Sequence[int]] | None = None) -> np.ndarray:
    """The sum modulo 2^64 of the inputs in ``masked`` (participant -> masked vector), from the shares
    ``revealed`` (revealer -> owner -> ("seed" | "key", share)): each secret from ``threshold`` shares of its
    owner's ``neighbours`` (None: every participant in ``peers``, the complete graph), a missing
    participant's pairwise masks cancelled against its neighbours that sent."""
    if len(revealed) < threshold:
        raise SecureAggregationError(f"{len(revealed)} factories revealed their shares, fewer than the threshold "
                                     f"{threshold}: the round cannot be unmasked")
    shapes = {index: np.shape(vector) for index, vector in masked.items()}
    length = next(iter(shapes.values()), (0,))[0] if all(len(shape) == 1 for shape in shapes.values()) else 0
    wrong = sorted(index for index, vector in masked.items()
                   if np.shape(vector) != (length,) or np.asarray(vector).dtype != _FIELD)
    if wrong or not length:
        raise SecureAggregationError(f"the masked inputs must be vectors of unsigned 64-bit integers of one length; "
                                     f"those of {wrong or sorted(masked)} are not (shapes {shapes})")
    graph = neighbours if neighbours is not None else complete_graph(peers)
    total = np.zeros(length, dtype=_FIELD)
    for vector in masked.values():
        total = total + vector
    for owner in peers:
        kind = "seed" if owner in masked else "key"
        shares = []
        for revealer in graph[owner]:
            if owner in revealed.get(revealer, {}):
                revealed_kind, share = revealed[revealer][owner]
                if revealed_kind != kind:
                    raise SecureAggregationError(f"participant {owner}'s {revealed_kind} was revealed, its {kind} "
                                                 "was expected: a factory must never reveal both")
                shares.append(share)
        try:
            secret = reconstruct(shares, threshold)
        except SecureAggregationError as error:
            raise SecureAggregationError(f"participant {owner}'s {kind}, from its neighbours' shares: {error}"
                                         ) from None
        if kind == "seed":
            total = total - _expand(_derive(secret, "self", round_id), length)
            continue
        key = X25519PrivateKey.from_private_bytes(secret)  # a missing participant: cancel its pairwise masks
        for peer in graph[owner]:
            if peer in masked:
                mask = _expand(_pair_seed(key, peers[peer].mask, owner, peer, round_id), length)
                total = total - mask if peer < owner else total + mask  # what peer added against it, undone
    return total.astype(_FIELD)


def aggregate_in_process(inputs: Mapping[int, np.ndarray], threshold: int, *, drop_before_input: Sequence[int] = (),
                         drop_before_unmask: Sequence[int] = (), round_id: bytes = b"round",
                         neighbours: Mapping[int, Sequence[int]] | None = None,
                         seconds: MutableMapping[int | str, float] | None = None) -> np.ndarray:
    """One round of the protocol with every party in this process (tests, benchmarks): the sum modulo
    2^64 of the encoded ``inputs`` of those that sent theirs; ``drop_before_input`` leave after the
    shares, ``drop_before_unmask`` after their masked input. ``neighbours``: SecAgg+'s graph (None: the
    complete graph). ``seconds``, if given, receives each participant's time and the server's ("server")."""
    graph = neighbours if neighbours is not None else complete_graph(inputs)

    def timed(who: int | str, step: Callable, *args: object):
        started = time.perf_counter()
        result = step(*args)
        if seconds is not None:
            seconds[who] = seconds.get(who, 0.0) + time.perf_counter() - started
        return result

    parties = {index: timed(index, Participant, index, round_id) for index in inputs}
    keys = {index: timed(index, party.public_keys) for index, party in parties.items()}
    near = {index: {peer: keys[peer] for peer in graph[index]} for index in parties}
    sealed = {index: timed(index, party.encrypted_shares, near[index], threshold) for index, party in parties.items()}
    inbox = {peer: {owner: boxes[peer] for owner, boxes in sealed.items() if peer in boxes} for peer in parties}
    masked = {index: timed(index, party.masked_input, inputs[index], near[index]) for index, party in parties.items()
              if index not in drop_before_input}
    revealed = {index: timed(index, party.reveal, inbox[index], near[index], sorted(masked))
                for index, party in parties.items() if index in masked and index not in drop_before_unmask}
    return timed("server", unmask_sum, masked, revealed, keys, threshold, round_id, graph)


def participant_state(party: Participant) -> dict[str, bytes | int]:
    """What a factory keeps between the round's messages (its node's state), never sent."""
    return {"index": party.index, "round-id": party.round_id, "mask-key": _raw(party.mask_key),
            "share-key": _raw(party.share_key), "self-seed": party.self_seed}


def participant_from_state(state: Mapping[str, object]) -> Participant:
    return Participant(int(state["index"]), bytes(state["round-id"]),
                       X25519PrivateKey.from_private_bytes(bytes(state["mask-key"])),
                       X25519PrivateKey.from_private_bytes(bytes(state["share-key"])), bytes(state["self-seed"]))


@dataclass(frozen=True)
class SecureAggregation:
    """The run's secure aggregation: off, or on with the share of a round's participants that must answer
    and, in the complete graph, whose shares unmask it (``threshold``), the largest number of examples one
    delta may weigh (``max_weight``) and, with ``plus``, SecAgg+ sized for at most a ``dropout`` fraction of
    the round dropping out and a ``corruption`` fraction colluding with the server."""

    enabled: bool = False
    threshold: float = 0.6
    max_weight: float = 10_000.0
    plus: bool = False
    dropout: float = 0.1
    corruption: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"secagg-threshold must be in (0, 1], got {self.threshold}")
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ValueError(f"secagg-max-weight must be finite and > 0, got {self.max_weight}")
        if not (0 <= self.dropout < 1 and 0 <= self.corruption < 1):
            raise ValueError(f"secagg-dropout and secagg-corruption must be in [0, 1), got {self.dropout} and "
                             f"{self.corruption}")
        if self.plus and not 2 * self.dropout + self.corruption < 1:  # even the complete graph fails beyond
            raise ValueError(f"secagg-plus needs 2 x secagg-dropout + secagg-corruption < 1, got {self.dropout} and "
                             f"{self.corruption}: no threshold is then both reached by the survivors and out of "
                             "the corrupt factories' reach")

    def threshold_of(self, participants: int) -> int:
        """Shares needed to unmask a round of ``participants`` (at least 2, at most all)."""
        needed = math.ceil(self.threshold * participants - 1e-9)  # 0.6 * 5 is 3.0000000000000004 in floats
        return min(participants, max(2, needed))

    def round_graph(self, participants: int, seed: int | str | bytes) -> tuple[Graph, int]:
        """A round's neighbourhoods over participants 1..n and the shares that rebuild a secret: the complete
        graph and `threshold_of`, or with ``plus`` SecAgg+'s random graph (drawn from ``seed``, the server's
        public randomness) and its threshold (`secagg_plus_parameters`)."""
        indices = range(1, participants + 1)
        if not self.plus:
            return complete_graph(indices), self.threshold_of(participants)
        degree, threshold = secagg_plus_parameters(participants, self.dropout, self.corruption)
        return neighbourhoods(indices, degree, seed), threshold


def weighted_input(delta: Mapping[str, Tensor], weight: float, fixed: FixedPoint, max_weight: float) -> np.ndarray:
    """A factory's input: ``w / max_weight`` times its delta (parameters in name order) and then
    ``w / max_weight`` itself, as fixed-point integers (a weight above ``max_weight`` counts as it)."""
    share = min(float(weight), max_weight) / max_weight
    flat = np.concatenate([delta[name].detach().double().flatten().numpy() for name in sorted(delta)])
    return fixed.encode(np.append(share * flat, share))


def weighted_mean(total: np.ndarray, fixed: FixedPoint, reference: Mapping[str, Tensor],
                  inputs: int | None = None) -> dict[str, Tensor]:
    """The weighted mean delta from the unmasked sum of `weighted_input` vectors; with ``inputs``, how many
    were summed, a sum of weights above ``inputs`` (each at most 1: ``max_weight``) is refused, since an input
    weighed more than ``max_weight``."""
    sizes = [reference[name].numel() for name in sorted(reference)]
    if np.shape(total) != (sum(sizes) + 1,):
        raise SecureAggregationError(f"the unmasked sum holds {np.shape(total)} values, the model's {sum(sizes)} and "
                                     "the weight expected")
    values = fixed.decode(total)
    if not values[-1] > 0:
        raise SecureAggregationError("the unmasked weights sum to nothing: no input was counted")
    if inputs is not None and values[-1] > inputs * (1 + 1e-9):  # 1e-9: float rounding of the decoded integer
        raise SecureAggregationError(f"the unmasked weights sum to {values[-1]:.6g} secagg-max-weight, more than "
                                     f"the {inputs} inputs may weigh: an input weighed more than secagg-max-weight")
    flat = torch.from_numpy(values[:-1] / values[-1])
    names = sorted(reference)
    pieces = flat.split(sizes)
    return {name: piece.reshape(reference[name].shape).to(reference[name].dtype)
            for name, piece in zip(names, pieces, strict=True)}
