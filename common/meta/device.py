"""Pick the compute device a factory actually has: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from fedmeta.common.validation import check_choice

__all__ = ["DEVICE_CHOICES", "resolve_device"]

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def resolve_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Return the device to run on.

    ``"auto"`` (or ``None``) prefers CUDA, then MPS, then CPU. An explicit choice is
    honoured, and asking for an accelerator this machine lacks is an error rather than
    a silent fallback, so a factory never trains on the CPU believing it used its GPU.
    """
    if isinstance(preference, torch.device):
        return preference
    choice = "auto" if preference is None else preference.lower()
    base = choice.split(":", 1)[0]
    if base not in DEVICE_CHOICES:
        check_choice("device", preference, DEVICE_CHOICES)
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {preference!r} requested but CUDA is not available on this machine"
        )
    if base == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {preference!r} requested but MPS is not available on this machine"
        )
    return torch.device(choice)
