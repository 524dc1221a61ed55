"""Skip markers for tests that read the shared data sets (absent on machines without ../shared)."""

from __future__ import annotations

import pytest

from fedmeta.common.data.datasets import dataset_dir


def needs_dataset(name: str) -> pytest.MarkDecorator:
    """Skip unless ``$FEDMETA_DATASETS/<name>`` exists (`common.data.datasets.paths.dataset_dir`)."""
    try:
        dataset_dir(name)
    except FileNotFoundError:
        return pytest.mark.skipif(True, reason=f"shared data set {name!r} not found")
    return pytest.mark.skipif(False, reason="")
