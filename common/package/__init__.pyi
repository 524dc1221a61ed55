"""The exports of `fedmeta.common.package` (loaded on first use; see `__init__.py`)."""

from .decision import BaseRateDecision, FailureDecisions, expected_f1_threshold, prior_shift
from .model_package import (
    MANIFEST_FILE,
    PACKAGE_FORMAT,
    SCALING_RULES,
    WEIGHTS_FILE,
    AdaptationPlan,
    Manifest,
    ModelPackage,
    PackageError,
    PackageSchema,
    installed_versions,
    load_package,
    save_package,
)
