"""What the fuzz tests share: their settings (2,000 examples each, the same ones every run) and the strategies
that build hostile inputs: JSON values of every kind, valid documents with one part changed, and text in the
encodings a factory's files arrive in, or damaged bytes."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fedmeta.common import build_model
from fedmeta.common.federation.compression import COMPRESSIONS, Compression, encode_delta
from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.package.model_package import PackageSchema

__all__ = ["EXAMPLES", "FUZZ", "HOSTILE", "JSON_VALUES", "PACKAGE_CONFIG", "PACKAGE_SCHEMA", "PACKAGE_WEIGHTS",
           "REFERENCE", "WIRE_ARRAYS", "WIRE_DTYPES", "changed_document",
           "compressed_deltas", "damage_arrays", "encode", "encoded", "json_bytes", "json_values", "names_the_problem",
           "scratch_folder", "wire_arrays"]

EXAMPLES = 2000
# derandomize: the examples follow from the test's name (no database: nothing of an earlier run changes the next),
# so a command runs the same examples every time. Hypothesis also draws constants from the source of the modules
# loaded, so `pytest tests/fuzz` and `pytest tests/fuzz/test_x.py` run different (each fixed) examples. Reading files
# and building tensors is slower than hypothesis expects of an example; each test bounds its inputs' size instead.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

# Values that break parsers and arithmetic: huge and tiny numbers, signed zeros, NaN and the infinities, integers
# past every machine type, empty and odd text, empty and nested containers. Drawn from a list, which is far cheaper
# per example than building values; `json_values` builds the rest.
HOSTILE: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 2, 2**31, 2**63, -(2**63) - 1, 10**400, 0.5, -0.0, 1e308, -1e308, 5e-324, 3.5e38,
    math.nan, math.inf, -math.inf, "", " ", "x", "0", "1.5", "NaN", "none", "\x00", "\u00e9\u4e2d", "a" * 300,
    [], {}, [None], [1, 2], ["x"], [[]], [1.5, "x"], {"": None}, {"x": [1]},
)
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)


def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """Any value `json.loads` can return (NaN and the infinities included), nested a few levels."""
    return st.sampled_from(HOSTILE) | st.recursive(
        _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=max_leaves)


# Built once: hypothesis checks a strategy when it is first drawn from, which costs more than the draw.
JSON_VALUES = json_values()


def _places(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``document`` (keys of objects, positions of lists), parents before children."""
    children = document.items() if isinstance(document, Mapping) else enumerate(document) \
        if isinstance(document, list) else ()
    places = []
    for key, value in children:
        places.append((*prefix, key))
        places.extend(_places(value, (*prefix, key)))
    return places


def _changed(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``document`` with the value at ``path`` replaced by ``value``, or removed where ``value`` is
    `_REMOVED`; ``document`` itself where an earlier change took the place away."""
    key, rest = path[0], path[1:]
    if isinstance(document, Mapping) and key in document:
        copy: Any = dict(document)
    elif isinstance(document, list) and isinstance(key, int) and key < len(document):
        copy = list(document)
    else:
        return document
    if rest:
        copy[key] = _changed(copy[key], rest, value)
    elif value is _REMOVED:
        del copy[key]
    else:
        copy[key] = value
    return copy


_REMOVED = object()


def changed_document(valid: Mapping[str, Any] | list[Any],
                     keys: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Any]:
    """``valid`` with up to three changes: a value anywhere replaced by a hostile or any JSON value, a key or list
    item removed, an unknown (or known, ``keys``) key added to an object; now and then any JSON value in its place.
    Near-valid documents reach the deeper checks that a random document never passes."""
    places = _places(valid)
    added = st.text(max_size=8) if keys is None else keys
    hostile = st.sampled_from(HOSTILE)
    change = st.one_of(
        st.tuples(st.sampled_from(places), hostile),
        st.tuples(st.sampled_from(places), hostile),
        st.tuples(st.sampled_from(places), JSON_VALUES),
        st.tuples(st.sampled_from(places), st.just(_REMOVED)),
        st.tuples(st.tuples(added), hostile),
    )

    def apply(changes: list[tuple[tuple[Any, ...], Any]]) -> Any:
        document = valid
        for path, value in changes:
            if isinstance(document, Mapping) and len(path) == 1 and path[0] not in document and value is not _REMOVED:
                document = {**document, path[0]: value}  # a key added
            else:
                document = _changed(document, path, value)
        return json.loads(json.dumps(document))  # tuples to lists, as a file read back holds them

    return st.one_of(st.lists(change, max_size=3).map(apply), JSON_VALUES)


_ENCODINGS = ("utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252")


def encode(draw: st.DrawFn, text: str) -> bytes:
    """``text`` as a file may hold it: UTF-8 with or without a byte-order mark, UTF-16, Latin-1 or Windows-1252
    (where they can spell it), then perhaps damaged: cut short, or bytes of no encoding put in. Called with a
    composite strategy's ``draw``."""
    data = text.encode(draw(st.sampled_from(_ENCODINGS)), errors="replace")
    damage = draw(st.sampled_from(("none", "none", "none", "cut", "insert")))
    if damage == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if damage == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return data


@st.composite
def encoded(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> bytes:
    """One of ``texts``, `encode`d."""
    return encode(draw, draw(texts))


def json_bytes(documents: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """A JSON file's bytes holding one of ``documents`` (NaN written as JSON's extension ``NaN``), encoded and
    perhaps damaged by `encoded`; sometimes any bytes at all."""
    return encoded(documents.map(lambda document: json.dumps(document, indent=1))) | st.binary(max_size=40)


_MEMORY = Path("/dev/shm")


def scratch_folder(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A folder for the files the examples are written to, removed when the tests end: in memory where the system
    has one (a file written to disk costs milliseconds, more than the example it holds)."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=_MEMORY if _MEMORY.is_dir() else None)


def names_the_problem(error: BaseException, *words: str) -> None:
    """Assert the refusal says something: a message of some length holding each of ``words``."""
    message = str(error)
    assert len(message) > 15, f"{type(error).__name__} with too short a message: {message!r}"
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# --------------------------------------------------------------------------- arrays on the wire

# Every dtype a message's array may arrive in, whatever the sender was asked for.
WIRE_DTYPES = tuple(np.dtype(name) for name in ("float32", "float16", "float64", "int8", "int32", "int64", "uint8",
                                                "bool"))


@st.composite
def wire_arrays(draw: st.DrawFn, max_values: int = 24) -> np.ndarray:
    """An array of any wire dtype, any bit pattern (NaN, the infinities, subnormals), 1-D or 2-D or a scalar."""
    dtype = draw(st.sampled_from(WIRE_DTYPES))
    raw = draw(st.binary(max_size=max_values * dtype.itemsize))
    values = np.frombuffer(raw[: len(raw) - len(raw) % dtype.itemsize], dtype=np.uint8 if dtype.kind == "b" else dtype)
    values = values != 0 if dtype.kind == "b" else values.copy()
    shape = draw(st.sampled_from(("flat", "flat", "flat", "rows", "scalar")))
    if shape == "rows" and len(values) % 2 == 0:
        return values.reshape(2, -1)
    return values[:1].reshape(()) if shape == "scalar" and len(values) else values


WIRE_ARRAYS = wire_arrays()


def damage_arrays(draw: st.DrawFn, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` (a valid message's) with up to three changes: an array's bytes overwritten, cut short or
    lengthened, its dtype converted, or an array left out, added or replaced by any `wire_arrays`. Called with a
    composite strategy's ``draw``."""
    damaged = {name: array.copy() for name, array in arrays.items()}
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.sampled_from(("bytes", "bytes", "cut", "extend", "dtype", "drop", "add", "replace")))
        if change == "add" or not damaged:
            damaged[draw(st.sampled_from((*arrays, "extra")))] = draw(WIRE_ARRAYS)
            continue
        name = draw(st.sampled_from(tuple(sorted(damaged))))
        array = damaged[name]
        if change == "bytes" and array.size:
            raw = bytearray(array.tobytes())
            at = draw(st.integers(0, len(raw) - 1))
            patch = draw(st.binary(min_size=1, max_size=4))[: len(raw) - at]
            raw[at:at + len(patch)] = patch
            damaged[name] = np.frombuffer(bytes(raw), dtype=array.dtype).reshape(array.shape).copy()
        elif change == "cut":
            damaged[name] = array.reshape(-1)[: draw(st.integers(0, array.size))]
        elif change == "extend":
            damaged[name] = np.concatenate([array.reshape(-1), array.reshape(-1)[: draw(st.integers(1, 3))]])
        elif change == "dtype":
            with np.errstate(all="ignore"):
                damaged[name] = array.astype(draw(st.sampled_from(WIRE_DTYPES)))
        elif change == "drop":
            del damaged[name]
        else:
            damaged[name] = draw(WIRE_ARRAYS)
    return damaged


# The global parameters a delta must fit: a matrix, a vector and a scalar.
REFERENCE = {"body.weight": torch.zeros(2, 3), "body.bias": torch.zeros(3), "scale": torch.zeros(())}
CODECS = st.builds(Compression, st.sampled_from(COMPRESSIONS), st.sampled_from([0.01, 0.3, 1.0]))
_VALUE_COUNT = sum(t.numel() for t in REFERENCE.values())
# A delta's values: mostly small (eighths of -16..16), now and then any bits (NaN, the infinities, huge and
# subnormal values). From bytes: one draw, not one per value.
_DELTA_VALUES = st.one_of(
    st.binary(min_size=_VALUE_COUNT, max_size=_VALUE_COUNT).map(
        lambda raw: np.frombuffer(raw, dtype=np.int8).astype(np.float32) / 8),
    st.binary(min_size=4 * _VALUE_COUNT, max_size=4 * _VALUE_COUNT).map(
        lambda raw: np.frombuffer(raw, dtype=np.float32).copy()),
)


@st.composite
def compressed_deltas(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], Compression]:
    """The arrays of a delta of `REFERENCE` a factory encoded with the round's compression, damaged or not, and
    that compression."""
    codec = draw(CODECS)
    pieces = torch.from_numpy(draw(_DELTA_VALUES)).split([t.numel() for t in REFERENCE.values()])
    delta = {name: piece.reshape(t.shape) for (name, t), piece in zip(REFERENCE.items(), pieces, strict=True)}
    encoded, _ = encode_delta(delta, codec)
    return damage_arrays(draw, {name: array.numpy() for name, array in encoded.items()}), codec


# The small package the manifest and package-write fuzz tests save: two features, one regression target.
PACKAGE_CONFIG = ModelConfig("mlp", (2,), 1, hidden=4, depth=1)
PACKAGE_SCHEMA = PackageSchema(("temperature", "pressure"), "quality", "regression")
PACKAGE_WEIGHTS = {name: p.detach() for name, p in build_model(PACKAGE_CONFIG).named_parameters()}
