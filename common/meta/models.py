"""Models for federated meta-learning on manufacturing data.

Every model is built from `TaskLinear`/`TaskConv1d` layers, so one module serves
plain training and `torch.func.functional_call` with per-task parameters: each
parameter either has its ordinary shape (input ``[N, *input_shape]``) or a leading
task dimension ``T`` (input ``[T, N, *input_shape]``). Ordinary body parameters with
a task-batched head (ANIL) also work. All code indexes dimensions from the end so it
runs with or without the task dimension. There is no batch normalisation or dropout:
running statistics and randomness break functional meta-learning (the TCN's RMS
normalisation of its features is per sample and keeps no statistics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmeta.common.meta.layers import TaskConv1d, TaskLinear
from fedmeta.common.validation import check_positive_int

__all__ = [
    "COLUMN_PENALTY",
    "LOGIT_SCALE",
    "MLP",
    "MODEL_NAMES",
    "PENALTY",
    "SOLVE_PARAMETERS",
    "TCN",
    "CNN1d",
    "MetaModel",
    "ModelConfig",
    "build_model",
]

# Model name -> meaning of each entry of its input_shape.
_INPUT_LAYOUT: dict[str, tuple[str, ...]] = {
    "mlp": ("features",),
    "cnn1d": ("channels", "length"),
    "tcn": ("channels", "length"),
}
MODEL_NAMES: tuple[str, ...] = tuple(_INPUT_LAYOUT)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a model; validated on creation so bad configs fail early."""

    name: str
    input_shape: tuple[int, ...]
    output_dim: int
    hidden: int = 64
    depth: int = 2
    kernel_size: int = 5
    # cnn1d only: stride of the first convolution, whose kernel is then 4x as wide (as in
    # WDCNN for raw vibration) so a long raw window is shortened cheaply without aliasing.
    stem_stride: int = 1
    # The head also reads the (factory-scaled) inputs beside the learned features (a window model: its last
    # step's channels), the features times a learned scale: the closed-form head (`common.meta.closed_form`)
    # that the ``r2d2`` algorithm meta-learns and a factory fits on its rows, which with a zero scale is a
    # linear model of the inputs (least squares). The model then also holds the ridge penalties it is solved with.
    skip_inputs: bool = False
    # ``r2d2`` only: the head is solved toward the model's own head (the federation's prior), not from zero.
    # Set where the factories' targets share units (`common.data_sources.model_config_for`).
    head_prior: bool = False

    def __post_init__(self) -> None:
        if self.name not in _INPUT_LAYOUT:
            raise ValueError(f"unknown model name {self.name!r}; valid names: {list(MODEL_NAMES)}")
        # JSON and Flower configs deliver sequences as lists; keep the config hashable.
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        sizes = {
            "output_dim": self.output_dim,
            "hidden": self.hidden,
            "depth": self.depth,
            "kernel_size": self.kernel_size,
            "stem_stride": self.stem_stride,
            **{f"input_shape[{i}]": size for i, size in enumerate(self.input_shape)},
        }
        for field, value in sizes.items():
            check_positive_int(field, value)
        for flag in ("skip_inputs", "head_prior"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.head_prior and not self.skip_inputs:
            raise ValueError("head_prior applies to a closed-form head only (skip_inputs true)")
        layout = _INPUT_LAYOUT[self.name]
        if len(self.input_shape) != len(layout):
            raise ValueError(
                f"{self.name} expects input_shape of length {len(layout)} "
                f"({', '.join(layout)}), got {self.input_shape}"
            )
        if self.stem_stride != 1 and self.name != "cnn1d":
            raise ValueError(f"stem_stride applies to cnn1d only, got {self.stem_stride} for {self.name}")
        length = self.input_shape[1] if self.name == "cnn1d" else 0
        # A depth past the length's bits is too deep whatever the stride (and 2**depth would not be computed in time).
        if self.name == "cnn1d" and (self.depth >= length.bit_length() or length < self.stem_stride * 2**self.depth):
            needed = self.stem_stride * 2**self.depth if self.depth < 64 else f"{self.stem_stride} x 2^{self.depth}"
            raise ValueError(
                f"cnn1d divides the length by stem_stride ({self.stem_stride}) and halves it {self.depth} times "
                f"(depth), so it needs length >= {needed}, got {length}"
            )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object]) -> ModelConfig:
        """Build from a plain dict such as a JSON file or a Flower config."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(mapping) - set(allowed))
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; allowed keys: {allowed}")
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [key for key in required if key not in mapping]
        if missing:
            raise ValueError(f"missing ModelConfig keys {missing}; required keys: {required}")
        return cls(**mapping)


def _max_pool_by_2(x: Tensor) -> Tensor:
    """``max_pool1d(x, 2)`` over the last axis of ``[..., C, L]`` (an odd last step dropped, as it does).

    A max over pairs, not ``max_pool1d``: the same values and gradients, any number of leading axes,
    and on CPU about half of ``max_pool1d``'s time forward and backward, which dominated a CNN's
    adaptation steps beside the convolutions.
    """
    length = x.shape[-1] - x.shape[-1] % 2
    return x[..., :length].unflatten(-1, (length // 2, 2)).max(dim=-1).values


# Parameters of a closed-form head's solve that the forward pass never reads: the ridge penalty (its log), each
# head column's own factor of it (its log: ``r2d2`` only, see `common.meta.closed_form_head.solve_learned_head`)
# and, for the fault classes ``r2d2`` solves by ridge regression onto one-hot targets, the logits' scale (its log).
PENALTY = "head_log_penalty"
COLUMN_PENALTY = "head_log_column_penalty"
LOGIT_SCALE = "head_log_logit_scale"
SOLVE_PARAMETERS = (PENALTY, COLUMN_PENALTY, LOGIT_SCALE)


class MetaModel(nn.Module):
    """A feature extractor ``body`` and a linear ``head``, the split ANIL adapts; with the config's
    ``skip_inputs`` the head reads ``[feature_scale * body features, inputs]`` (see `ModelConfig`)."""

    def __init__(self, config: ModelConfig, body: nn.Module, num_features: int) -> None:
        super().__init__()
        self.config = config
        self.body = body
        inputs = config.input_shape[0] if config.skip_inputs else 0
        self.head = TaskLinear(num_features + inputs, config.output_dim)
        if config.skip_inputs:  # a closed-form head, solved toward this one: it starts with no prior
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            self.feature_scale = nn.Parameter(torch.ones(1))
            self.head_log_penalty = nn.Parameter(torch.zeros(1))
            self.head_log_column_penalty = nn.Parameter(torch.zeros(num_features + inputs + 1))
            if config.output_dim > 2:  # two classes are solved by logistic regression, needing no scale
                self.head_log_logit_scale = nn.Parameter(torch.zeros(1))

    def body_features(self, x: Tensor) -> Tensor:
        """The body's feature vector per example, ``[..., N, num_features]``."""
        return self.body(x)

    def features(self, x: Tensor) -> Tensor:
        """What the head reads per example, ``[..., N, head inputs]``.

        With a fixed body (ANIL's inner loop, a closed-form head) it can be computed once per task.
        """
        learned = self.body_features(x)
        if not self.config.skip_inputs:
            return learned
        scale = self.feature_scale
        if scale.dim() == 2:  # task-batched [T, 1]: one scale per task
            scale = scale.unsqueeze(1)
        inputs = x if len(self.config.input_shape) == 1 else x[..., -1]  # a window's last step
        return torch.cat([learned * scale, inputs.expand(*learned.shape[:-1], inputs.shape[-1])], dim=-1)

    def forward(self, x: Tensor, head: bool = True) -> Tensor:
        """Map ``[N, *input_shape]`` to ``[N, output_dim]``, or the same with a leading T; without ``head``,
        to what the head reads (`features`: a closed-form head is solved on them with the model's parameters
        passed through `torch.func.functional_call`)."""
        features = self.features(x)
        return self.head(features) if head else features

    def head_parameter_names(self) -> list[str]:
        """Names (as in ``state_dict``) of the head's parameters, the ones ANIL adapts."""
        return [f"head.{name}" for name, _ in self.head.named_parameters()]

    def forward_parameter_names(self) -> list[str]:
        """Every parameter the forward pass reads: all but the closed-form head's solve parameters (gradient
        steps adapt these)."""
        return [name for name, _ in self.named_parameters() if name not in SOLVE_PARAMETERS]


class MLP(MetaModel):
    """Fully connected network for tabular process data."""

    def __init__(self, config: ModelConfig) -> None:
        widths = [config.input_shape[0]] + [config.hidden] * config.depth
        layers: list[nn.Module] = []
        for width_in, width_out in pairwise(widths):
            layers += [TaskLinear(width_in, width_out), nn.ReLU()]
        super().__init__(config, nn.Sequential(*layers), widths[-1])


class _ConvBlock(nn.Module):
    """Convolution (same-padded unless strided), ReLU and max-pool by 2."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        if stride == 1:
            self.conv = TaskConv1d(channels_in, channels_out, kernel_size, padding="same")
        else:  # PyTorch has no "same" padding for strided convolutions
            self.conv = TaskConv1d(channels_in, channels_out, kernel_size, stride=stride, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return _max_pool_by_2(torch.relu(self.conv(x)))


class CNN1d(MetaModel):
    """1-D convolutional network for vibration signals; averages over time at the end."""

    def __init__(self, config: ModelConfig) -> None:
        channels = [config.input_shape[0]] + [config.hidden] * config.depth
        stride = config.stem_stride
        blocks = [
            _ConvBlock(channels_in, channels_out, config.kernel_size)
            if index or stride == 1
            else _ConvBlock(channels_in, channels_out, max(config.kernel_size, 4 * stride), stride)
            for index, (channels_in, channels_out) in enumerate(pairwise(channels))
        ]
        super().__init__(config, nn.Sequential(*blocks), channels[-1])

    def body_features(self, x: Tensor) -> Tensor:
        return self.body(x).mean(dim=-1)


def _rms_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Divide every time step of ``[..., C, L]`` by its root mean square over the C channels
    (per sample, no statistics kept; the mean is not removed, so a drift common to all
    channels, which is how an engine degrades, still reaches the head)."""
    return x * torch.rsqrt(x.square().mean(dim=-2, keepdim=True) + eps)


class _TemporalBlock(nn.Module):
    """Causal dilated convolution and ReLU plus a residual connection.

    Padding only on the left keeps output step t a function of inputs up to t.
    """

    def __init__(
        self, channels_in: int, channels_out: int, kernel_size: int, dilation: int
    ) -> None:
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = TaskConv1d(channels_in, channels_out, kernel_size, dilation=dilation)
        # A 1x1 convolution matches channel counts for the residual when they differ.
        self.residual: TaskConv1d | None = None
        if channels_in != channels_out:
            self.residual = TaskConv1d(channels_in, channels_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.conv(F.pad(x, (self.left_pad, 0))))
        return out + (x if self.residual is None else self.residual(x))


class TCN(MetaModel):
    """Temporal convolutional network for sensor sequences (remaining useful life).

    Used instead of a GRU because recurrent kernels cannot batch over per-task weights.
    The body returns the whole sequence ``[..., hidden, length]``; the head reads the
    last time step, which has seen the whole (causal) receptive field.

    The head reads the last step's features RMS-normalised over channels and scaled to
    unit norm (divided by sqrt(hidden)). Without that, residual sums grow with depth and
    with a window's sensor excursions, and so does the squared gradient norm of the
    output, whose inverse bounds the step size at which gradient descent on one window
    stays stable. Measured on C-MAPSS windows at initialisation (32 channels x 4 blocks):
    a median of 45-75 with a tail up to 320 before, 3.7-4.0 and at most 5.2 after; a model
    trained centrally on FD001 and fine-tuned with plain gradient descent on single FD003
    windows (10 steps) blew up on 31 of 60 windows at lr 0.05 before and on none at lr
    0.1 after. The full-data FD003 reference improved too (test RMSE 13.0-13.2 against
    13.5-13.6 cycles, 2 seeds).
    """

    def __init__(self, config: ModelConfig) -> None:
        channels = [config.input_shape[0]] + [config.hidden] * config.depth
        blocks = [
            _TemporalBlock(channels_in, channels_out, config.kernel_size, dilation=2**i)
            for i, (channels_in, channels_out) in enumerate(pairwise(channels))
        ]
        super().__init__(config, nn.Sequential(*blocks), channels[-1])
        self.feature_norm = 1.0 / math.sqrt(channels[-1])

    def body_features(self, x: Tensor) -> Tensor:
        return _rms_norm(self.body(x))[..., -1] * self.feature_norm


_MODELS: dict[str, type[MetaModel]] = {"mlp": MLP, "cnn1d": CNN1d, "tcn": TCN}


def build_model(config: ModelConfig | Mapping[str, object]) -> MetaModel:
    """Build the model a config names; accepts a plain mapping for JSON/Flower configs."""
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_mapping(config)
    return _MODELS[config.name](config)
