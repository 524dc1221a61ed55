"""The factory floor: `fedmeta adapt`, `predict`, `update`, `optimize`, `export`, and the table
readers they share.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "adapt": [
            "AdaptationReport", "AdaptedPackage", "adapt_package", "factory_candidates", "failure_probabilities",
            "labelled_examples", "require_factory_scaling", "rows_as_task", "rows_digest", "stratified_units",
            "table_schema",
        ],
        "candidates": [
            "CANDIDATES", "LOCAL_ONLY_STEPS", "Fitted", "candidate_names", "fit_candidate", "linear_name",
            "package_adaptation", "rows_alone_adaptation",
        ],
        "cli": ["REPORT_FILE", "adapt", "export", "optimize", "predict", "update"],
        "csv_rows": [
            "BLOCK_BYTES", "RowAlignmentError", "appended", "csv_cell", "csv_pieces", "header_line", "row_ends",
        ],
        "export": ["FORMATS", "TOLERANCE", "ExportResult", "deployable_model", "export_onnx"],
        "optimize": ["GOALS", "Bounds", "Recommendation", "recommend_settings"],
        "predict": [
            "PredictionError", "PredictionSummary", "forward_passes", "forward_threads", "output_columns",
            "predict_table", "window_passes",
        ],
        "table_blocks": [
            "Block", "TableError", "column_names", "model_columns", "read_blocks", "read_features", "table_scaling",
        ],
        "update": ["DRIFT_THRESHOLD", "DriftReport", "ModelStore", "UpdateResult"],
        "windows": ["BlockWindows", "WindowStream", "read_windows"],
    },
)
