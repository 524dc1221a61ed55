"""Where the shared data sets live: ``$FEDMETA_DATASETS``, else ``../shared/datasets`` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATASETS_ENV", "dataset_dir"]

DATASETS_ENV = "FEDMETA_DATASETS"
_DEFAULT = Path(__file__).resolve().parents[4] / "shared" / "datasets"


def dataset_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of data set ``name``; a clear error when it is not there (nothing is downloaded)."""
    base = Path(root) if root is not None else Path(os.environ.get(DATASETS_ENV, _DEFAULT))
    folder = base / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data set {name!r} not found at {folder}; set {DATASETS_ENV} or pass the data sets folder "
            "(the files are never downloaded)"
        )
    return folder
