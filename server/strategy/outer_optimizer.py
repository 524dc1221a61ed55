"""The server's outer optimizer: applies the averaged client delta as a pseudo-gradient.

Clients send ``local - global``; the mean delta points downhill, so ``-mean_delta`` is a
gradient for an optimizer over the global parameters (FedOpt; `common.meta.optimizers`, torch.optim's
updates without its import cost). Plain SGD with
``lr=1.0`` is exactly FedAvg. Momentum and Adam keep state across rounds, so that state
is flattened into named tensors (plus JSON metadata) for checkpoints and restored exactly
on resume.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from fedmeta.common.federation.deltas import validate_delta
from fedmeta.common.meta.optimizers import OPTIMIZER_KINDS, STATE_KEYS, GroupedOptimizer
from fedmeta.common.validation import check_choice

__all__ = ["OUTER_OPTIMIZERS", "OuterOptimizer", "OuterOptimizerConfig"]

OUTER_OPTIMIZERS = OPTIMIZER_KINDS
_METADATA_KEY = "outer_optimizer"


@dataclass(frozen=True)
class OuterOptimizerConfig:
    """Which outer optimizer the server runs, and its hyper-parameters (validated)."""

    kind: str = "sgd"
    lr: float = 1.0
    momentum: float = 0.9  # used by "momentum"
    betas: tuple[float, float] = (0.9, 0.999)  # used by "adam"

    def __post_init__(self) -> None:
        check_choice("outer optimizer", self.kind, OUTER_OPTIMIZERS)
        if not (_is_real(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if not (_is_real(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        betas = tuple(self.betas) if isinstance(self.betas, tuple | list) else ()
        if len(betas) != 2 or not all(_is_real(beta) and 0 <= beta < 1 for beta in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)  # a list from JSON becomes a tuple

    def hyperparameters(self) -> dict[str, Any]:
        """The settings this kind actually uses; resuming with different ones is an error."""
        if self.kind == "momentum":
            return {"kind": self.kind, "lr": self.lr, "momentum": self.momentum}
        if self.kind == "adam":
            return {"kind": self.kind, "lr": self.lr, "betas": list(self.betas)}
        return {"kind": self.kind, "lr": self.lr}


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class OuterOptimizer:
    """An optimizer over private copies of the global parameters, stepped by deltas."""

    def __init__(self, params: Mapping[str, Tensor], config: OuterOptimizerConfig) -> None:
        if not params:
            raise ValueError("the outer optimizer needs at least one parameter")
        for name, tensor in params.items():
            if not tensor.is_floating_point():
                raise ValueError(
                    f"parameter {name!r} has dtype {tensor.dtype}; need floating point"
                )
        self.config = config
        self._params = {name: tensor.detach().clone() for name, tensor in params.items()}
        self._optimizer = _build(config, list(self._params.values()))

    @property
    def params(self) -> dict[str, Tensor]:
        """Detached copies of the current global parameters."""
        return {name: tensor.detach().clone() for name, tensor in self._params.items()}

    def step(self, mean_delta: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Apply ``-mean_delta`` as the gradient; return copies of the new parameters.

        The delta is checked first (names, shapes, dtypes, finiteness), so a bad one
        leaves both the parameters and the optimizer state untouched.
        """
        validate_delta(mean_delta, self._params, max_norm=math.inf)
        for name, tensor in self._params.items():
            tensor.grad = -mean_delta[name].detach().to(tensor.device)
        self._optimizer.step()
        self._optimizer.zero_grad()
        return self.params

    def metadata(self) -> dict[str, str]:
        """Kind, hyper-parameters and parameter names as JSON, stored beside the state."""
        record = {**self.config.hyperparameters(), "names": list(self._params)}
        return {_METADATA_KEY: json.dumps(record)}

    def state_dict(self) -> dict[str, Tensor]:
        """The optimizer state as ``"state/<param name>/<key>"`` tensors (step counts too)."""
        names = list(self._params)
        return {
            f"state/{names[index]}/{key}": value.detach().clone()
            for index, state in self._optimizer.state.items()
            for key, value in state.items()
        }

    def load_state_dict(self, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
        """Restore state saved by `state_dict` and `metadata`; ValueError on any mismatch."""
        self._check_metadata(metadata)
        index = {name: position for position, name in enumerate(self._params)}
        state: dict[int, dict[str, Tensor]] = {}
        for flat_name, value in tensors.items():
            prefix, _, rest = flat_name.partition("/")
            name, _, key = rest.rpartition("/")
            if prefix != "state" or name not in index:
                raise ValueError(f"unexpected outer optimizer state tensor {flat_name!r}")
            state.setdefault(index[name], {})[key] = value.detach().clone()
        expected_keys = STATE_KEYS[self.config.kind]
        if state and len(state) != len(index):
            missing = [name for name, position in index.items() if position not in state]
            raise ValueError(f"outer optimizer state is missing parameters: {missing}")
        for name, position in index.items():
            self._check_state(name, state.get(position, {}), expected_keys)
        self._optimizer.load_state(state)

    def _check_metadata(self, metadata: Mapping[str, str]) -> None:
        try:
            saved = json.loads(metadata[_METADATA_KEY])
        except KeyError:
            raise ValueError(f"metadata has no {_METADATA_KEY!r} entry") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"metadata {_METADATA_KEY!r} is not valid JSON: {error}") from None
        if not isinstance(saved, dict):
            raise ValueError(f"metadata {_METADATA_KEY!r} is not a JSON object: {saved!r}")
        saved_names = set(saved.pop("names", ()))
        expected = self.config.hyperparameters()
        if saved != expected:
            raise ValueError(f"saved outer optimizer is {saved}, this one is {expected}")
        if saved_names != set(self._params):
            raise ValueError(
                "saved outer optimizer has different parameters: "
                f"missing {sorted(set(self._params) - saved_names)}, "
                f"unexpected {sorted(saved_names - set(self._params))}"
            )

    def _check_state(self, name: str, state: Mapping[str, Tensor], keys: frozenset[str]) -> None:
        if state and set(state) != keys:
            raise ValueError(
                f"outer optimizer state of {name!r} has keys {sorted(state)}, "
                f"expected {sorted(keys)}"
            )
        for key, value in state.items():
            shape = () if key == "step" else tuple(self._params[name].shape)
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"outer optimizer state {key!r} of {name!r} has shape "
                    f"{tuple(value.shape)}, expected {shape}"
                )


def _build(config: OuterOptimizerConfig, tensors: list[Tensor]) -> GroupedOptimizer:
    return GroupedOptimizer(config.kind, [(tensors, config.lr)], momentum=config.momentum, betas=config.betas)
