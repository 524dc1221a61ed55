"""A tree package's ensemble behind the interface of a package's network (`common.package.model_package.package_model`):
scaled inputs in, a regression value or class logits out, so predicting, updating and exporting read a tree
package as they read a network's."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.trees.ensemble import load_ensemble, margins
from fedmeta.common.trees.features import window_features
from fedmeta.common.trees.shape import tree_shape

__all__ = ["TreeModel"]


class TreeModel(nn.Module):
    """The ensemble ``raw`` (XGBoost JSON) reading what a network of ``config`` reads: table rows, or windows
    (`common.trees.features.window_features`); its outputs are float32 like a network's."""

    def __init__(self, raw: bytes, config: ModelConfig, kind: str) -> None:
        super().__init__()
        self.config = config  # what the model reads and writes, as on a network
        self.shape = tree_shape(config, kind)
        self.booster = load_ensemble(raw)

    def forward(self, x: Tensor) -> Tensor:
        return torch.from_numpy(margins(self.booster, window_features(x), self.shape)).float()
