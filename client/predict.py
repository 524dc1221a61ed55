"""`fedmeta predict`: a package's prediction for every row of a table, streamed in chunks.

Production tables are large and carry more than the model reads (IDs, timestamps, other labels),
so the table is read in blocks with pyarrow (CSV or Parquet), every column is carried through to
the output beside the prediction, and memory stays bounded by the block size whatever the
table's length. The target column may be absent. A missing feature column is an error naming
it; a column the model does not read is carried through with a warning. A cell that is not a
number, or is empty, NaN or infinite, stops the run with its column and row; the output is
written to a temporary file and renamed into place only when every row was predicted, so an
existing file is never overwritten and a failed run leaves nothing behind.

Inputs are scaled with the package's own statistics (an adapted package: the factory's rows it
was adapted with). A package without them (as the federation delivers it) is scaled with this
table's own rows, read once more beforehand to compute them.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch

from fedmeta.client.adapt import failure_probabilities
from fedmeta.common import build_model
from fedmeta.common.connector import DataSchema
from fedmeta.common.connector.readers import is_parquet
from fedmeta.common.model_package import ModelPackage
from fedmeta.common.scaling import FeatureScaling

__all__ = ["BLOCK_BYTES", "PredictionError", "PredictionSummary", "output_columns", "predict_table", "read_features"]

BLOCK_BYTES = 8 << 20  # CSV bytes per block: bounds memory whatever the table's length
_PARQUET_ROWS = 131_072


class PredictionError(ValueError):
    """A table that cannot be predicted (a missing or unreadable column, a bad cell), or an output in the way."""


@dataclass
class PredictionSummary:
    rows: int = 0
    warnings: list[str] = field(default_factory=list)
    scaled_with_table: bool = False


def output_columns(package: ModelPackage) -> list[str]:
    """The columns a prediction adds: the predicted target and, for classification, each class's probability."""
    schema = package.manifest.schema
    if schema.task == "classification":
        return [f"probability_{label}" for label in schema.classes or ()] + [f"predicted_{schema.target}"]
    return [f"predicted_{schema.target}"]


def _header(path: Path, schema: DataSchema) -> list[str]:
    try:
        if is_parquet(path):
            return list(pq.ParquetFile(path).schema_arrow.names)
        reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 16),
                                 parse_options=pa_csv.ParseOptions(delimiter=schema.delimiter))
        return list(reader.schema.names)
    except FileNotFoundError:
        raise PredictionError(f"{path}: no such file") from None
    except (pa.ArrowInvalid, OSError) as error:
        raise PredictionError(f"{path}: cannot be read as a table ({error})") from None


def _csv_pieces(path: Path) -> Iterator[bytes]:
    """The file's header line followed by each next ~`BLOCK_BYTES` of whole rows: a piece ends at a line
    break outside quotes (an even count of quote characters before it), so a quoted cell that spans
    lines is never cut. pyarrow's own streaming reader reads ahead without bound (300 MB of a 431 MB
    table held at once, measured), so memory would grow with the table."""
    with path.open("rb") as handle:
        header = handle.readline()
        rest = b""
        while True:
            data = rest + handle.read(BLOCK_BYTES)
            if not data:
                return
            if len(data) <= len(rest):  # end of file: what is left is the last piece
                yield header + data
                return
            cut = _last_row_end(data)
            if cut == 0:  # no whole row yet: read on
                rest = data
                continue
            yield header + data[:cut]
            rest = data[cut:]


def _last_row_end(data: bytes) -> int:
    """Just past the last line break of ``data`` that lies outside quotes; 0 if there is none."""
    if b'"' not in data:
        return data.rfind(b"\n") + 1
    raw = np.frombuffer(data, dtype=np.uint8)
    inside = np.bitwise_xor.accumulate((raw == ord('"')).view(np.uint8))  # 1 inside quotes
    breaks = np.flatnonzero((raw == ord("\n")) & (inside == 0))
    return int(breaks[-1]) + 1 if breaks.size else 0


def _blocks(path: Path, schema: DataSchema, names: list[str]) -> Iterator[pa.RecordBatch]:
    """The table in blocks. Every CSV column is read as text and written back as it was (formatting
    numbers again would cost more than reading them); features are converted to numbers aside."""
    if is_parquet(path):
        yield from pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_ROWS)
        return
    convert = pa_csv.ConvertOptions(column_types={name: pa.string() for name in names}, strings_can_be_null=False,
                                    quoted_strings_can_be_null=False)
    plain = pa_csv.ParseOptions(delimiter=schema.delimiter)
    quoted = pa_csv.ParseOptions(delimiter=schema.delimiter, newlines_in_values=True)  # slower: only if needed

    def parse(piece: bytes) -> pa.Table:
        options = quoted if b'"' in piece else plain
        return pa_csv.read_csv(pa.BufferReader(piece), parse_options=options, convert_options=convert).combine_chunks()

    # The next piece is parsed while the caller predicts this one: two pieces in memory at most.
    with ThreadPoolExecutor(1) as parser:
        pending = None
        for piece in _csv_pieces(path):
            following = parser.submit(parse, piece)
            if pending is not None:
                yield from pending.result().to_batches()
            pending = following
        if pending is not None:
            yield from pending.result().to_batches()


def _conversion_problem(path: Path, names: list[str], error: pa.ArrowInvalid) -> PredictionError:
    """pyarrow's 'In CSV column #3: Row #7: ... invalid value' with the column's name."""
    text = str(error)
    match = re.search(r"column #(\d+)", text)
    if match and int(match.group(1)) < len(names):
        text = text.replace(match.group(0), f"column {names[int(match.group(1))]!r}", 1)
    return PredictionError(f"{path}: {text}")


def _rows(hits: np.ndarray, first_row: int, values: np.ndarray | None = None) -> str:
    """``data row(s) 4, 9 ('n/a', 'x') and 3 more``: the first offending rows (1 = the first below the header)."""
    shown = hits[:5]
    text = "data row(s) " + ", ".join(str(first_row + int(i) + 1) for i in shown)
    if values is not None:
        text += " (" + ", ".join(repr(values[i]) for i in shown) + ")"
    return text + (f" and {hits.size - shown.size} more" if hits.size > shown.size else "")


def _features(block: pa.RecordBatch, schema: DataSchema, first_row: int, path: Path) -> np.ndarray:
    """``[rows, features]`` float64; an empty, NaN or infinite cell is an error naming its column and row."""
    columns = []
    for name in schema.features:
        column = block.column(name)
        if schema.decimal == "," and pa.types.is_string(column.type):
            column = pc.replace_substring(column, ",", ".")
        try:
            values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = pd.to_numeric(pd.Series(column.to_numpy(zero_copy_only=False)).str.strip(), errors="coerce")
            text = column.to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(values.isna().to_numpy() & (pd.Series(text).str.strip() != "").to_numpy())
            if bad.size:
                raise PredictionError(f"{path}: column {name!r} holds values that are not numbers: "
                                      + _rows(bad, first_row, text)) from None
            values = values.to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise PredictionError(f"{path}: column {name!r} is empty, NaN or infinite in " + _rows(bad, first_row))
        columns.append(values)
    return np.stack(columns, axis=1)


def _table_scaling(path: Path, schema: DataSchema, names: list[str]) -> FeatureScaling:
    """Mean and sample standard deviation of this table's own rows (as `FeatureScaling.fit` computes them),
    in one streamed pass: each block's statistics merged into the running ones (Chan et al.), exact
    however far the values lie from zero."""
    count, mean, squares = 0, np.zeros(len(schema.features)), np.zeros(len(schema.features))
    for block in _read(path, schema, names):
        x = _features(block, schema, count, path)
        block_mean = x.mean(axis=0)
        delta, total = block_mean - mean, count + len(x)
        squares += np.square(x - block_mean).sum(axis=0) + np.square(delta) * count * len(x) / total
        mean, count = mean + delta * len(x) / total, total
    if count == 0:
        raise PredictionError(f"{path}: the table has no data rows")
    std = np.sqrt(squares / (count - 1)) if count > 1 else np.zeros_like(mean)
    return FeatureScaling(torch.from_numpy(mean), torch.from_numpy(np.where(std > 1e-6, std, 1.0)), count)


def _read(path: Path, schema: DataSchema, names: list[str]) -> Iterator[pa.RecordBatch]:
    try:
        yield from _blocks(path, schema, names)
    except pa.ArrowInvalid as error:
        raise _conversion_problem(path, names, error) from None


def _predicted(package: ModelPackage, model: torch.nn.Module, x: np.ndarray) -> list[pa.Array]:
    schema = package.manifest.schema
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    if schema.task == "regression":
        return [pa.array(out[:, 0].numpy())]  # float32: the model's own precision, and cheaper to write
    decision = package.manifest.decision
    if decision is None:  # no failure rate given: the most likely class
        probabilities = torch.softmax(out, dim=1).numpy()
        labels = np.asarray(schema.classes, dtype=object)[probabilities.argmax(axis=1)]
    else:  # at the factory's failure rate, flagged at the package's threshold
        failure = list(schema.classes or ()).index(decision["failure_class"])
        p_failure = failure_probabilities(out, decision, schema.classes or ()).numpy()
        probabilities = np.empty((len(p_failure), 2))
        probabilities[:, failure], probabilities[:, 1 - failure] = p_failure, 1.0 - p_failure
        flagged = p_failure >= decision["threshold"]
        labels = np.asarray(schema.classes, dtype=object)[np.where(flagged, failure, 1 - failure)]
    return [pa.array(probabilities[:, i]) for i in range(probabilities.shape[1])] + [pa.array(labels, pa.string())]


class _Writer:
    """CSV or Parquet by the output's suffix, into a temporary file beside it."""

    def __init__(self, out: Path, arrow_schema: pa.Schema, delimiter: str) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        os.close(handle)
        self.temporary = Path(name)
        if is_parquet(out):
            self.writer = pq.ParquetWriter(self.temporary, arrow_schema)
        else:
            options = pa_csv.WriteOptions(delimiter=delimiter, quoting_style="needed")
            self.writer = pa_csv.CSVWriter(self.temporary, arrow_schema, write_options=options)

        self.open = True

    def write(self, block: pa.RecordBatch) -> None:
        self.writer.write_batch(block)

    def close(self) -> None:
        if self.open:
            self.writer.close()
            self.open = False


def read_features(path: Path, schema: DataSchema) -> np.ndarray:
    """Every row's features ``[rows, features]`` (raw, float64), checked as `predict_table` checks them."""
    names = _header(path, schema)
    missing = [name for name in schema.features if name not in names]
    if missing:
        raise PredictionError(f"{path}: missing feature column(s) {missing}")
    blocks, rows = [], 0
    for block in _read(path, schema, names):
        blocks.append(_features(block, schema, rows, path))
        rows += block.num_rows
    if not blocks:
        raise PredictionError(f"{path}: the table has no data rows")
    return np.concatenate(blocks)


def predict_table(package: ModelPackage, path: Path, out: Path, schema: DataSchema) -> PredictionSummary:
    """Predict every row of ``path`` (read as ``schema`` says) into the new file ``out``."""
    if out.exists():
        raise PredictionError(f"{out} already exists; predictions never overwrite a file (choose another --out)")
    names = _header(path, schema)
    missing = [name for name in schema.features if name not in names]
    if missing:
        raise PredictionError(f"{path}: missing feature column(s) {missing}; the package reads {list(schema.features)}")
    added = output_columns(package)
    clash = [name for name in added if name in names]
    if clash:
        raise PredictionError(f"{path}: already has column(s) {clash}, which the predictions would add")
    summary = PredictionSummary()
    read = {*schema.features, schema.target, schema.id_column, schema.time_column, schema.group_column}
    extra = [name for name in names if name not in read]
    if extra:
        summary.warnings.append(f"columns the model does not read are carried through: {extra}")
    scaling = package.manifest.scaling
    if scaling is None:
        scaling = _table_scaling(path, schema, names)
        summary.scaled_with_table = True
    mean, std = scaling.mean.numpy(), scaling.std.numpy()
    model = build_model(package.manifest.model)
    model.load_state_dict(package.weights)
    model.eval()
    writer: _Writer | None = None
    try:
        for block in _read(path, schema, names):
            x = ((_features(block, schema, summary.rows, path) - mean) / std).astype(np.float32)
            columns = [*block.columns, *_predicted(package, model, x)]
            result = pa.RecordBatch.from_arrays(columns, names=[*block.schema.names, *added])
            if writer is None:
                writer = _Writer(out, result.schema, schema.delimiter)
            writer.write(result)
            summary.rows += block.num_rows
        if writer is None:
            raise PredictionError(f"{path}: the table has no data rows")
        writer.close()
        if out.exists():
            raise PredictionError(f"{out} appeared while predicting; it is left as it is")
        os.replace(writer.temporary, out)
    finally:
        if writer is not None and writer.temporary.exists():
            writer.close()
            writer.temporary.unlink()
    return summary
