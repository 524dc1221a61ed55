"""The exports of `fedmeta.client.floor` (loaded on first use; see `__init__.py`)."""

from .adapt import (
    LOCAL_ONLY_STEPS,
    AdaptationReport,
    AdaptedPackage,
    adapt_package,
    factory_candidates,
    failure_probabilities,
    labelled_examples,
    package_adaptation,
    require_factory_scaling,
    rows_alone_adaptation,
    rows_as_task,
    rows_digest,
    stratified_units,
    table_schema,
)
from .cli import REPORT_FILE, adapt, export, optimize, predict, update
from .csv_rows import BLOCK_BYTES, RowAlignmentError, appended, csv_cell, csv_pieces, header_line, row_ends
from .export import FORMATS, TOLERANCE, ExportResult, deployable_model, export_onnx
from .optimize import GOALS, Bounds, Recommendation, recommend_settings
from .predict import (
    PredictionError,
    PredictionSummary,
    forward_passes,
    forward_threads,
    output_columns,
    predict_table,
    window_passes,
)
from .table_blocks import Block, TableError, column_names, model_columns, read_blocks, read_features, table_scaling
from .update import DRIFT_THRESHOLD, DriftReport, ModelStore, UpdateResult
from .windows import BlockWindows, WindowStream, read_windows
