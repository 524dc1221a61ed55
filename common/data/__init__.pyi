"""The exports of `fedmeta.common.data` (loaded on first use; see `__init__.py`)."""

from .scaling import FeatureScaling
from .synthetic import (
    FAMILY_KINDS,
    FAULT_CLASSES,
    MIN_CLASS_SAMPLES,
    FactoryFamily,
    FamilyConfig,
    make_family,
    min_class_samples,
)
