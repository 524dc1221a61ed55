"""The factory floor: `fedmeta adapt`, `predict`, `update`, `optimize`, `export`, and the table
readers they share.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.client.floor.adapt import (
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
    from fedmeta.client.floor.cli import (
        REPORT_FILE,
        adapt,
        export,
        optimize,
        predict,
        update,
    )
    from fedmeta.client.floor.csv_rows import (
        BLOCK_BYTES,
        RowAlignmentError,
        appended,
        csv_cell,
        csv_pieces,
        header_line,
        row_ends,
    )
    from fedmeta.client.floor.export import (
        FORMATS,
        TOLERANCE,
        ExportResult,
        deployable_model,
        export_onnx,
    )
    from fedmeta.client.floor.optimize import (
        GOALS,
        Bounds,
        Recommendation,
        recommend_settings,
    )
    from fedmeta.client.floor.predict import (
        PredictionError,
        PredictionSummary,
        forward_passes,
        forward_threads,
        output_columns,
        predict_table,
        window_passes,
    )
    from fedmeta.client.floor.table_blocks import (
        Block,
        TableError,
        column_names,
        model_columns,
        read_blocks,
        read_features,
        table_scaling,
    )
    from fedmeta.client.floor.update import (
        DRIFT_THRESHOLD,
        DriftReport,
        ModelStore,
        UpdateResult,
    )
    from fedmeta.client.floor.windows import (
        BlockWindows,
        WindowStream,
        read_windows,
    )

__getattr__, __all__ = lazy_exports(__file__, globals())
