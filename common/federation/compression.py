"""Smaller deltas on the wire: what a factory encodes and the server decodes; the global model packed.

* ``none``: float32 as computed;
* ``fp16``: every value in half precision (2 bytes);
* ``int8``: each parameter's values as int8 codes with one float32 scale, ``value ~= code * scale``,
  the scale being the parameter's largest magnitude over 127 (1 byte a value); the scales' bytes
  follow the codes in the same int8 array;
* ``topk``: only the ``topk_fraction`` largest-magnitude values of each parameter, as (index, value)
  pairs (int32, float32). What was not sent is kept by the factory and added to its next delta
  (error feedback), so every part of an update reaches the server eventually.

An encoded delta is packed into one or two flat arrays (`VALUES`, `INDICES`), the parameters one after
another in name order, because every array a message carries costs a header of its own (about 150
bytes in Flower's serialisation) and, between processes, requests of its own: Flower moves a message
as objects, two per array, each fetched and confirmed one by one, which made the transfers most of a
deployed round. `decode_delta` rebuilds a float32 delta of the global parameters' names and shapes and
raises `DeltaRejected` for anything that does not fit them, before `common.federation.deltas.validate_delta`
checks the result. The global model travels packed the same way (`pack_parameters`), with its names
and shapes beside it (`ParameterLayout`), since a factory does not know them in advance (Meta-SGD adds
its step sizes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
from torch import Tensor

from fedmeta.common.federation.deltas import DeltaRejected
from fedmeta.common.run_settings import COMPRESSIONS
from fedmeta.common.validation import check_choice

__all__ = ["COMPRESSIONS", "INDICES", "VALUES", "Compression", "ParameterLayout", "decode_delta", "encode_delta",
           "pack_parameters", "unpack_parameters"]

VALUES, INDICES = "packed/values", "packed/indices"
_INT8_LEVELS = 127
_SCALE_BYTES = 4  # a float32 scale, as int8 bytes after the codes
_PACKED = {"none": {VALUES: torch.float32}, "fp16": {VALUES: torch.float16}, "int8": {VALUES: torch.int8},
           "topk": {VALUES: torch.float32, INDICES: torch.int32}}


@dataclass(frozen=True)
class Compression:
    """A method and its top-k share, checked once."""

    method: str = "none"
    topk_fraction: float = 0.01

    def __post_init__(self) -> None:
        check_choice("compression", self.method, COMPRESSIONS)
        if not (math.isfinite(self.topk_fraction) and 0 < self.topk_fraction <= 1):
            raise ValueError(f"topk-fraction must be in (0, 1], got {self.topk_fraction}")

    def kept(self, numel: int) -> int:
        """How many values of a parameter of ``numel`` top-k sends (at least one)."""
        return max(1, math.ceil(self.topk_fraction * numel))


def _flat(tensors: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    """Each parameter's values as a flat float32 vector, in name order (the order both sides pack in)."""
    return [(name, tensors[name].detach().float().flatten()) for name in sorted(tensors)]


@dataclass(frozen=True)
class ParameterLayout:
    """The names and shapes of packed parameters, in packing order, as plain lists (a Flower ConfigRecord's)."""

    names: list[str]
    ranks: list[int]  # each parameter's number of dimensions
    dims: list[int]  # every parameter's dimensions, one after another

    @classmethod
    def of(cls, tensors: Mapping[str, Tensor]) -> ParameterLayout:
        """The layout ``tensors`` pack in: name order (the order both sides pack in)."""
        names = sorted(tensors)
        shapes = [tuple(tensors[name].shape) for name in names]
        return cls(names, [len(shape) for shape in shapes], [d for shape in shapes for d in shape])

    def to_config(self) -> dict[str, list[str] | list[int]]:
        return {"names": self.names, "ranks": self.ranks, "dims": self.dims}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ParameterLayout:
        try:
            names, ranks, dims = (list(config[key]) for key in ("names", "ranks", "dims"))
            return cls([str(n) for n in names], [int(r) for r in ranks], [int(d) for d in dims])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"the parameter layout needs lists 'names', 'ranks' and 'dims': {error}") from None

    def shapes(self) -> list[tuple[int, ...]]:
        """Each parameter's shape; `ValueError` where the lists do not fit together."""
        if len(self.ranks) != len(self.names) or sum(self.ranks) != len(self.dims) or min(self.dims, default=0) < 0:
            raise ValueError(f"the parameter layout's {len(self.names)} names, {len(self.ranks)} ranks and "
                             f"{len(self.dims)} dimensions do not fit together")
        ends = list(accumulate(self.ranks))
        return [tuple(self.dims[end - rank:end]) for rank, end in zip(self.ranks, ends, strict=True)]


def pack_parameters(tensors: Mapping[str, Tensor]) -> tuple[Tensor, ParameterLayout]:
    """``tensors`` as one flat float32 vector in name order, and their layout."""
    flat = torch.cat([values for _, values in _flat(tensors)]) if tensors else torch.zeros(0)
    return flat, ParameterLayout.of(tensors)


def unpack_parameters(flat: Tensor, layout: ParameterLayout) -> dict[str, Tensor]:
    """The tensors `pack_parameters` packed; `ValueError` naming the mismatch for anything else."""
    shapes = layout.shapes()
    sizes = [math.prod(shape) for shape in shapes]
    if flat.ndim != 1 or len(flat) != sum(sizes):
        raise ValueError(f"the packed parameters hold {tuple(flat.shape)} values, their layout {sum(sizes)}")
    pieces = flat.float().split(sizes)
    return {name: piece.reshape(shape).clone() for name, piece, shape in zip(layout.names, pieces, shapes,
                                                                               strict=True)}


def encode_delta(delta: Mapping[str, Tensor], compression: Compression,
                 residual: Mapping[str, Tensor] | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``delta`` (plus the ``residual`` top-k left unsent last round) encoded, and what is left unsent now
    (empty but for top-k)."""
    method = compression.method
    flat = _flat(delta)
    if method == "none":
        return {VALUES: torch.cat([values for _, values in flat])}, {}
    if method == "fp16":
        return {VALUES: torch.cat([values for _, values in flat]).half()}, {}
    if method == "int8":
        scales = torch.stack([values.abs().max() / _INT8_LEVELS for _, values in flat])
        codes = [torch.round(values / scale) if scale > 0 else torch.zeros_like(values)
                 for (_, values), scale in zip(flat, scales, strict=True)]
        return {VALUES: torch.cat([torch.cat(codes).to(torch.int8), scales.float().view(torch.int8)])}, {}
    indices, values, left, offset = [], [], {}, 0
    for name, vector in flat:
        if residual is not None and name in residual:
            vector = vector + residual[name].flatten()
        chosen = vector.abs().topk(compression.kept(vector.numel())).indices.sort().values
        indices.append(chosen + offset)
        values.append(vector[chosen])
        unsent = vector.clone()
        unsent[chosen] = 0
        left[name] = unsent.reshape(delta[name].shape)
        offset += vector.numel()
    return {INDICES: torch.cat(indices).to(torch.int32), VALUES: torch.cat(values)}, left


def _reject(problem: str) -> DeltaRejected:
    return DeltaRejected(f"delta rejected: {problem}")


def _scattered(encoded: Mapping[str, Tensor], compression: Compression, sizes: list[int]) -> Tensor:
    """Top-k's (index, value) pairs spread over the concatenated parameters, zeros elsewhere."""
    total, index, values = sum(sizes), encoded[INDICES].long(), encoded[VALUES]
    expected = sum(compression.kept(size) for size in sizes)
    if len(index) != expected or len(values) != expected:
        raise _reject(f"top-k at {compression.topk_fraction} sends {expected} indices and values, got "
                      f"{len(index)} and {len(values)}")
    if int(index.min()) < 0 or int(index.max()) >= total or len(index.unique()) != len(index):
        raise _reject(f"top-k indices must be distinct and in [0, {total})")
    full = torch.zeros(total)
    full[index] = values
    return full


def decode_delta(encoded: Mapping[str, Tensor], compression: Compression,
                 reference: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The float32 delta of ``reference``'s names and shapes that ``encoded`` carries."""
    wanted = _PACKED[compression.method]
    if set(encoded) != set(wanted):
        raise _reject(f"the {compression.method} delta holds the arrays {sorted(wanted)}, got {sorted(encoded)}")
    for key, dtype in wanted.items():
        if encoded[key].dtype != dtype or encoded[key].ndim != 1:
            raise _reject(f"{key!r} must be a 1-D {dtype} array, got {encoded[key].dtype} {tuple(encoded[key].shape)}")
    layout = ParameterLayout.of(reference)
    names = layout.names
    sizes = [reference[name].numel() for name in names]
    total = sum(sizes)
    if compression.method == "topk":
        full = _scattered(encoded, compression, sizes)
    elif compression.method == "int8":
        packed = encoded[VALUES]
        if len(packed) != total + _SCALE_BYTES * len(names):
            raise _reject(f"the int8 delta holds {total} codes and {len(names)} scales "
                          f"({total + _SCALE_BYTES * len(names)} bytes), got {len(packed)}")
        scales = packed[total:].clone().view(torch.float32)
        if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
            raise _reject(f"int8 needs {len(names)} finite scales >= 0, one per parameter")
        full = packed[:total].float() * torch.repeat_interleave(scales, torch.tensor(sizes))
    else:
        full = encoded[VALUES].float()
        if len(full) != total:
            raise _reject(f"the {compression.method} delta holds {total} values, got {len(full)}")
    return unpack_parameters(full, layout)
