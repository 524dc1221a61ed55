"""A factory's compressed delta, however it arrives (arrays left out, added, cut short, of another dtype, any bits
in them: NaN and infinite scales, indices out of range or repeated), is decoded into a float32 delta of the
global parameters' names and shapes or rejected with a `DeltaRejected` saying what does not fit."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import event, given

from fedmeta.common.federation.compression import Compression, decode_delta
from fedmeta.common.federation.deltas import DeltaRejected
from tests.fuzz.strategies import FUZZ, REFERENCE, compressed_deltas, names_the_problem


@FUZZ
@given(compressed_deltas())
def test_a_compressed_delta_is_decoded_to_the_global_shapes_or_rejected_by_name(
        message: tuple[dict[str, np.ndarray], Compression]) -> None:
    arrays, codec = message
    try:
        delta = decode_delta({name: torch.from_numpy(array) for name, array in arrays.items()}, codec, REFERENCE)
    except DeltaRejected as error:
        event("refused")
        names_the_problem(error, "delta rejected: ")
    else:
        event("accepted")
        assert {name: (t.shape, t.dtype) for name, t in delta.items()} == {
            name: (t.shape, torch.float32) for name, t in REFERENCE.items()}
