"""The model package a run ends with (weights, manifest, hashes) and the decision rule it
carries for failure predictions.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.common.package.decision import (
        BaseRateDecision,
        FailureDecisions,
        expected_f1_threshold,
        prior_shift,
    )
    from fedmeta.common.package.model_package import (
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

__getattr__, __all__ = lazy_exports(__file__, globals())
