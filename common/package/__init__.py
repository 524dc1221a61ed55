"""The model package a run ends with (weights, manifest, hashes) and the decision rule it
carries for failure predictions.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "decision": ["BaseRateDecision", "FailureDecisions", "expected_f1_threshold", "prior_shift"],
        "model_package": [
            "MANIFEST_FILE", "PACKAGE_FORMAT", "SCALING_RULES", "WEIGHTS_FILE", "AdaptationPlan", "Manifest",
            "ModelPackage", "PackageError", "PackageSchema", "installed_versions", "load_package", "save_package",
        ],
    },
)
