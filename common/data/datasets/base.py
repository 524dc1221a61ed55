"""What a real data-set loader returns: factories to train on and factories to adapt to."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.meta.tasks import FactoryData

__all__ = ["CentralSplit", "FactorySplit"]


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class FactorySplit:
    """A real data set split into factories the way the field does.

    ``train`` factories take part in federated training; ``held_out`` factories never
    train and adapt from K labelled samples. ``test`` holds an official test split of
    the held-out factories where the data set has one. ``notes`` says, in words, the
    choices a user must know (how K shots are counted, rare or absent classes).
    ``target_scale`` is what regression targets were divided by: multiply predictions by
    it to report errors in the data set's own unit (C-MAPSS: cycles).
    """

    name: str
    train: tuple[FactoryData, ...]
    held_out: tuple[FactoryData, ...]
    task_kind: str
    model_config: ModelConfig
    num_classes: int | None
    notes: str
    test: tuple[FactoryData, ...] = ()
    target_scale: float = 1.0

    def validation(self) -> FactorySplit:
        """The training side alone, for hyper-parameter search: the last training factory is held
        out in place of the real held-out factories, and there is no test split."""
        if len(self.train) < 2:
            raise ValueError(f"{self.name}: a validation split needs at least 2 training factories, "
                             f"got {len(self.train)}")
        return dataclasses.replace(
            self, name=f"{self.name}/validation", train=self.train[:-1], held_out=self.train[-1:], test=(),
            notes=f"Validation split of {self.name}: training factories {[f.name for f in self.train[:-1]]}, "
            f"validation factory {self.train[-1].name}; the held-out factories are not loaded. {self.notes}",
        )


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors
class CentralSplit:
    """One data set pooled for a full-data reference model trained centrally.

    ``validation`` holds whole units (engines, machines) the training rows never
    touch, for early stopping; ``test`` is the data set's official test split.
    """

    name: str
    train: FactoryData
    validation: FactoryData
    test: FactoryData
    model_config: ModelConfig
    notes: str
    target_scale: float = 1.0
