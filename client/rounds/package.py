"""Storing the model package the server delivers after the last round, under the factory's own model folder.

Packages are kept per run and round (``<model-dir>/<run>/round-<NNNNNN>``), so a factory keeps
every model it has received and nobody mails files. The received weights must hash to the
manifest's SHA-256, so a package damaged on the way is refused. A delivery repeated (a resumed
server) finds the same package in place and keeps it; a different package under the same run
and round is refused, never written over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from fedmeta.client.rounds.node_keys import MODEL_DIR_KEY
from fedmeta.common import unpack_meta_parameters
from fedmeta.common.package.model_package import (
    Manifest,
    PackageError,
    load_package,
    save_package,
    save_tree_package,
)

__all__ = ["MODEL_DIR_KEY", "package_path", "store_delivered_package"]


def package_path(model_dir: Path, manifest: Manifest) -> Path:
    """Where a factory keeps the package of ``manifest``'s run and round."""
    return model_dir / manifest.run / f"round-{manifest.round:06d}"


def store_delivered_package(params: Mapping[str, Tensor], manifest_text: str, model_dir: Path,
                            ensemble: bytes = b"") -> Path:
    """Write the delivered package under ``model_dir`` (its weights ``params``, or a tree package's ``ensemble``);
    its path. Raises `PackageError` for a damaged package or one that differs from the package already stored
    for that run and round."""
    try:
        manifest = Manifest.from_json(json.loads(manifest_text))
    except (json.JSONDecodeError, ValueError) as error:
        raise PackageError(model_dir, f"the delivered manifest is unusable ({error})") from None
    path = package_path(model_dir, manifest)
    if not path.exists():
        weights, inner_lrs = unpack_meta_parameters(params)
        try:
            if manifest.trees is None:
                save_package(path, weights, inner_lrs, manifest)
            else:
                save_tree_package(path, ensemble, manifest)
            return path
        except PackageError:
            if not path.exists():  # not a race with another factory of this machine: a real problem
                raise
    stored = load_package(path)
    if stored.manifest.weights_sha256 != manifest.weights_sha256:
        raise PackageError(path, f"holds another package for run {manifest.run!r} round {manifest.round} "
                                 f"(SHA-256 {stored.manifest.weights_sha256}, delivered {manifest.weights_sha256})")
    return path
