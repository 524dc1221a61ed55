"""SecAgg+ (Bell et al., CCS 2020): the random Harary graph, the degree and threshold chosen for a dropout
and a corruption fraction (checked against an independent exact computation), and the protocol within the
graph: exact sums with factories dropping out, a participant's work confined to its neighbours, and a
round refused by name when a participant's surviving neighbours fall short of the threshold."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from fedmeta.common.security import secure_aggregation
from fedmeta.common.security.secure_aggregation import (
    FixedPoint,
    Participant,
    SecureAggregation,
    SecureAggregationError,
    aggregate_in_process,
    neighbourhoods,
    secagg_plus_parameters,
)

COUNT, DEGREE, THRESHOLD = 40, 10, 6  # 11 share holders a participant: t = 6 is a majority


def _inputs(count: int = COUNT, length: int = 200) -> dict[int, np.ndarray]:
    fixed = FixedPoint(bound=1.0, max_factories=count)
    rng = np.random.default_rng(3)
    return {index: fixed.encode(rng.uniform(-1, 1, length)) for index in range(1, count + 1)}


def _sum(inputs: dict[int, np.ndarray], counted) -> np.ndarray:
    exact = np.zeros(len(inputs[1]), dtype=np.uint64)
    for index in counted:
        exact += inputs[index]  # unsigned integers wrap: the sum modulo 2^64
    return exact


def test_the_graph_is_a_symmetric_ring_neighbourhood_of_the_degree_drawn_from_the_seed():
    graph = neighbourhoods(range(1, COUNT + 1), DEGREE, "run/3")
    assert set(graph) == set(range(1, COUNT + 1))
    assert all(index in near and len(set(near)) == DEGREE + 1 for index, near in graph.items())
    assert all(index in graph[peer] for index, near in graph.items() for peer in near)  # symmetric
    assert graph == neighbourhoods(range(1, COUNT + 1), DEGREE, "run/3")  # the server's public randomness
    assert graph != neighbourhoods(range(1, COUNT + 1), DEGREE, "run/4")
    everyone = tuple(range(1, COUNT + 1))
    assert neighbourhoods(everyone, COUNT - 1, "run/3") == dict.fromkeys(everyone, everyone)
    with pytest.raises(ValueError, match="even"):
        neighbourhoods(everyone, 9, "run/3")


def _tails(population: int, marked: int, drawn: int) -> list[Fraction]:
    """P[X > c] for c = 0..drawn, X hypergeometric, exactly from the pmf's ratio recurrence (no binomials)."""
    pmf = Fraction(1)
    for i in range(drawn):  # P[X = 0]: every draw unmarked
        pmf *= Fraction(population - marked - i, population - i)
    masses = []
    for x in range(drawn + 1):
        masses.append(pmf)
        if x < min(marked, drawn):
            pmf *= Fraction((marked - x) * (drawn - x), (x + 1) * (population - marked - drawn + x + 1))
        else:
            pmf = Fraction(0)
    return [sum(masses[c + 1:], Fraction(0)) for c in range(drawn + 1)]


def _thresholds(n: int, degree: int, dropped: int, corrupt: int) -> range:
    """Every t for which both conditions hold at this degree, computed independently: survivors counted among
    the k neighbours alone, corrupt share holders among the k + 1 (the participant's own share included)."""
    lost, bad = _tails(n - 1, dropped, degree), _tails(n - 1, corrupt, degree)
    most_corrupt = next(c for c in range(degree + 1) if n * bad[c] <= Fraction(1, 2**40))
    return range(next((t for t in range(1, degree + 2) if 2 * t > degree + 1 + most_corrupt
                       and n * bad[t - 1] <= Fraction(1, 2**40)), degree + 2),
                 next(t for t in range(degree, -1, -1) if t == 0 or n * lost[degree - t] <= Fraction(1, 2**30)) + 1)


@pytest.mark.parametrize(("n", "expected"), [(100, (32, 22)), (1000, (114, 78))])
def test_the_parameters_meet_both_bounds_with_the_least_even_degree(n, expected):
    """10% dropping out, 10% corrupt: a thousand factories need 114 neighbours each, not 999."""
    degree, threshold = secagg_plus_parameters(n, 0.1, 0.1)
    assert (degree, threshold) == expected
    assert threshold == _thresholds(n, degree, n // 10, n // 10)[0]  # the least that meets both bounds
    assert not _thresholds(n, degree - 2, n // 10, n // 10)  # no smaller degree fits


def test_with_too_few_participants_for_the_fractions_even_the_complete_graph_is_refused():
    assert secagg_plus_parameters(8, 0.3, 0.2) == (7, 5)  # no sparse graph fits: the complete graph (k = n - 1)
    with pytest.raises(SecureAggregationError, match="10 participants, 3 dropping out and 2 corrupt: no threshold"):
        secagg_plus_parameters(10, 0.3, 0.2)
    with pytest.raises(ValueError, match=r"2 x secagg-dropout \+ secagg-corruption < 1"):
        SecureAggregation(enabled=True, plus=True, dropout=0.3, corruption=0.4)


def test_the_sum_is_exact_with_factories_dropping_after_the_shares_and_after_their_input():
    inputs = _inputs()
    graph = neighbourhoods(inputs, DEGREE, "round")
    assert np.array_equal(aggregate_in_process(inputs, THRESHOLD, neighbours=graph), _sum(inputs, inputs))
    gone, quiet = [3, 17, 30], [8, 25]  # gone: no input, pairwise masks cancelled; quiet: input, no reveal
    unmasked = aggregate_in_process(inputs, THRESHOLD, drop_before_input=gone, drop_before_unmask=quiet,
                                    neighbours=graph)
    assert np.array_equal(unmasked, _sum(inputs, [i for i in inputs if i not in gone]))


def test_with_fewer_surviving_neighbours_than_the_threshold_the_round_fails_naming_the_participant():
    inputs = _inputs()
    graph = neighbourhoods(inputs, DEGREE, "round")
    gone = [peer for peer in graph[1] if peer != 1][:6]  # 1 keeps 4 neighbours and itself: 5 shares of 6
    with pytest.raises(SecureAggregationError, match="participant 1's seed, from its neighbours' shares: 5 shares, "
                                                     "fewer than the threshold 6"):
        aggregate_in_process(inputs, THRESHOLD, drop_before_input=gone, neighbours=graph)


def test_a_participant_shares_masks_and_reveals_with_its_neighbours_only(monkeypatch):
    seen: dict[str, dict[int, set[int]]] = {"shares": {}, "masks": {}, "inbox": {}, "pairs": {}}
    encrypted, masked, reveal, pair_seed = (Participant.encrypted_shares, Participant.masked_input,
                                            Participant.reveal, secure_aggregation._pair_seed)

    def spy_shares(self, peers, threshold):
        boxes = encrypted(self, peers, threshold)
        seen["shares"][self.index] = set(boxes)
        return boxes

    def spy_reveal(self, sealed, peers, sent):
        seen["inbox"][self.index] = set(sealed)
        return reveal(self, sealed, peers, sent)

    def spy_pair(own, peer_public, own_index, peer_index, round_id):
        seen["pairs"].setdefault(own_index, set()).add(peer_index)
        return pair_seed(own, peer_public, own_index, peer_index, round_id)

    monkeypatch.setattr(Participant, "encrypted_shares", spy_shares)
    monkeypatch.setattr(Participant, "reveal", spy_reveal)
    monkeypatch.setattr(secure_aggregation, "_pair_seed", spy_pair)
    inputs = _inputs()
    graph = neighbourhoods(inputs, DEGREE, "round")
    aggregate_in_process(inputs, THRESHOLD, neighbours=graph)
    assert masked is Participant.masked_input  # its pairwise masks are seen through _pair_seed
    for index, near in graph.items():
        assert len(seen["shares"][index]) == DEGREE + 1 and seen["shares"][index] == set(near)
        assert seen["inbox"][index] == set(near)  # its shares of its neighbours' secrets, no one else's
        assert seen["pairs"][index] == set(near) - {index}  # a pairwise mask per neighbour


def test_the_complete_graph_is_the_pairwise_protocol():
    inputs = _inputs(count=6)
    graph, threshold = SecureAggregation(enabled=True).round_graph(6, "round")
    assert graph == dict.fromkeys(range(1, 7), tuple(range(1, 7))) and threshold == 4
    exact = _sum(inputs, [1, 2, 3, 5, 6])
    assert np.array_equal(aggregate_in_process(inputs, threshold, drop_before_input=[4]), exact)
    assert np.array_equal(aggregate_in_process(inputs, threshold, drop_before_input=[4], neighbours=graph), exact)
    plus, plus_threshold = SecureAggregation(enabled=True, plus=True).round_graph(COUNT, "round")
    assert plus_threshold == secagg_plus_parameters(COUNT, 0.1, 0.1)[1]
    assert {len(near) - 1 for near in plus.values()} == {secagg_plus_parameters(COUNT, 0.1, 0.1)[0]}
