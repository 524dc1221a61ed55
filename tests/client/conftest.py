"""A meta-trained package and a held-out plant's table, shared by the factory-floor command tests."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from fedmeta.common import MetaConfig, RegressionTaskSampler, build_model, meta_train
from fedmeta.common.data.synthetic import FamilyConfig, make_family
from fedmeta.common.package.model_package import AdaptationPlan, Manifest, PackageSchema, save_package

FAMILY = FamilyConfig("quality", num_factories=12, num_held_out=4, seed=0)
FEATURES = tuple(f"x{i}" for i in range(6))


@pytest.fixture(scope="session")
def plant_package(tmp_path_factory):
    """A first-order MAML package meta-trained on the family's training plants, and a held-out plant's
    table in its own units (every feature x3 + 7) with an extra batch-number column."""
    root = tmp_path_factory.mktemp("adapt")
    family = make_family(FAMILY)
    torch.manual_seed(0)
    model = build_model(family.model_config)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = MetaConfig("fomaml", inner_steps=5, inner_lr=0.05, outer_lr=3e-3, meta_batch_size=8, local_steps=300)
    sampler = RegressionTaskSampler(list(family.train), 10, 10, seed=0, standardize_targets=True)
    trained = meta_train(model, weights, sampler, config, device="cpu")
    manifest = Manifest(PackageSchema(FEATURES, "quality", "regression"), family.model_config,
                        AdaptationPlan("fomaml", 10, 0.05), "factory-rows", "run-1", 5)
    save_package(root / "package", trained.weights, {}, manifest)
    plant = family.held_out[2]
    table = pd.DataFrame((plant.x * 3 + 7).numpy(), columns=list(FEATURES))
    table["quality"] = plant.y.numpy()
    table["batch"] = range(len(table))
    table.to_csv(root / "plant.csv", index=False)
    return root, table


