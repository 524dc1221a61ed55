"""A level reply travels as zlib-compressed float64 sums: it reads back bit for bit, a deep level's mostly
empty bins cost a small share of their bytes, and a blob that is not exactly one histogram of
the shape the server expects is refused by name before it can inflate past that size."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from fedmeta.common.trees.histogram_wire import pack_histograms, unpack_histogram

SHAPE = (16, 140, 152, 2)  # a depth-4 level of C-MAPSS's trees: 16 nodes, 140 columns, 152 bins


def _deep_level(rows: int = 400, seed: int = 0) -> np.ndarray:
    """Sums of ``rows`` rows spread over ``SHAPE``'s nodes: each row in one node and one bin of every column."""
    rng = np.random.default_rng(seed)
    histogram = np.zeros(SHAPE)
    nodes, columns = rng.integers(0, SHAPE[0], rows), np.arange(SHAPE[1])
    for node, grad in zip(nodes, rng.normal(size=rows), strict=True):
        bins = rng.integers(0, SHAPE[2], SHAPE[1])
        histogram[node, columns, bins] += (grad, 1.0)
    return histogram


def test_a_packed_level_reads_back_bit_for_bit_in_a_small_share_of_its_bytes() -> None:
    histogram = _deep_level()
    [packed] = pack_histograms([histogram])
    assert packed.dtype == np.uint8
    assert np.array_equal(unpack_histogram(packed, SHAPE), histogram)
    assert packed.nbytes < 0.1 * histogram.nbytes


@pytest.mark.parametrize(("blob", "named"), [
    (np.zeros(SHAPE).tobytes(), "not zlib data"),
    (zlib.compress(np.zeros(SHAPE).tobytes())[:-9], "truncated"),
    (zlib.compress(np.zeros(SHAPE).tobytes()) + b"\x00", "trailing bytes"),
    (zlib.compress(np.zeros(SHAPE[1:]).tobytes()), "exactly"),
    (zlib.compress(bytes(2**26)), "inflates past"),  # 64 MiB of zeros in 64 KiB: never inflated whole
])
def test_a_blob_that_is_not_one_histogram_of_the_expected_shape_is_refused_by_name(blob: bytes, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        unpack_histogram(np.frombuffer(blob, np.uint8), SHAPE)


def test_a_histogram_sent_unpacked_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="1-d uint8"):
        unpack_histogram(np.zeros(SHAPE), SHAPE)
