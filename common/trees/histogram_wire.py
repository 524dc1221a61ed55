"""How a factory's level histograms travel: their float64 sums, zlib-compressed, one uint8 array per tree group.

Below the root most bins of a node hold no rows (a node of 30 rows fills at most 30 of a column's bins), so
the zeros that dominate a level compress away, and the sums arrive bit for bit: the trees stay those of
boosting on the pooled rows. The server knows each array's shape from the splits it sent, so the blob
carries none, and decompression stops one byte past that size: a reply cannot inflate into more memory
than an honest one needs.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["WIRE_DTYPE", "pack_histograms", "unpack_histogram"]

WIRE_DTYPE = np.dtype("<f8")
_LEVEL = 1  # zlib's fastest: the zeros go at any level, and a factory packs every level of every tree


def pack_histograms(histograms: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each group's ``[nodes, columns, bins, 2]`` sums as a uint8 array of their compressed float64 bytes."""
    return [np.frombuffer(zlib.compress(np.ascontiguousarray(histogram, WIRE_DTYPE).tobytes(), _LEVEL), np.uint8)
            for histogram in histograms]


def unpack_histogram(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The float64 ``shape`` array ``packed`` holds; a ``ValueError`` names what is wrong with it."""
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise ValueError(f"a packed histogram must be a 1-d uint8 array, got {packed.dtype} {packed.shape}")
    size = int(np.prod(shape)) * WIRE_DTYPE.itemsize
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(packed.tobytes(), size + 1)
    except zlib.error as error:
        raise ValueError(f"a packed histogram is not zlib data: {error}") from None
    expected = f"{size} bytes for shape {shape}"
    if len(raw) > size:
        raise ValueError(f"a packed histogram inflates past the {expected}")
    if not inflater.eof:
        raise ValueError(f"a packed histogram is truncated: its zlib stream ends early (expected {expected})")
    if len(raw) < size or inflater.unused_data:
        raise ValueError(f"a packed histogram must hold exactly {expected}, got {len(raw)}"
                         f"{' and trailing bytes' if inflater.unused_data else ''}")
    return np.frombuffer(raw, WIRE_DTYPE).reshape(shape).astype(np.float64)  # native order, writable
