"""A model package's manifest, whatever it holds (any JSON, any encoding, damaged bytes; keys left out, added or
of the wrong kind, numbers huge, NaN or infinite), is loaded with the package or refused with a `PackageError`
naming the package folder: a factory never sees a bare ``TypeError`` or ``KeyError`` from a damaged package."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from hypothesis import event, given
from hypothesis import strategies as st

from fedmeta.common.data.scaling import FeatureScaling, TargetScaling
from fedmeta.common.package.model_package import (
    MANIFEST_FILE,
    AdaptationPlan,
    Manifest,
    ModelPackage,
    PackageError,
    load_package,
    save_package,
)
from tests.fuzz.strategies import (
    FUZZ,
    PACKAGE_CONFIG,
    PACKAGE_SCHEMA,
    PACKAGE_WEIGHTS,
    changed_document,
    json_bytes,
    names_the_problem,
    scratch_folder,
)

MANIFEST = Manifest(PACKAGE_SCHEMA, PACKAGE_CONFIG,
                    AdaptationPlan("fomaml", 5, 0.01, "cross-validated"), "factory-rows", "run-a", 3,
                    metrics={"mse-k5": 0.4}, scaling=FeatureScaling(torch.zeros(2), torch.ones(2), 10),
                    target_scaling=TargetScaling(1.0, 2.0, 10), lineage={"package": "sha", "rows": 10},
                    chosen="adapted")
KEYS = st.sampled_from([f.name for f in fields(Manifest)]) | st.text(max_size=8)

_FOLDER = scratch_folder("fuzz-manifest-")
PACKAGE = Path(_FOLDER.name) / "package"
VALID = save_package(PACKAGE, PACKAGE_WEIGHTS, {},
                     MANIFEST).manifest.to_json()


@FUZZ
@given(json_bytes(changed_document(VALID, KEYS)))
def test_a_manifest_is_loaded_or_refused_naming_the_package(content: bytes) -> None:
    (PACKAGE / MANIFEST_FILE).write_bytes(content)
    try:
        package = load_package(PACKAGE)
    except PackageError as error:
        event("refused")
        names_the_problem(error, f"model package {str(PACKAGE)!r}: ")
    else:
        event("accepted")
        assert isinstance(package, ModelPackage) and package.manifest.weights_sha256 == VALID["weights_sha256"]
