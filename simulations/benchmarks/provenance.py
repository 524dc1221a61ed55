"""What a benchmark's results file records about how it was made (commit, package versions, machine), and
how its JSON is kept standard."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

__all__ = ["PACKAGES", "provenance", "strict_json"]

PACKAGES = ("fedmeta-factory", "torch", "flwr", "numpy", "pandas", "scikit-learn", "lightgbm", "optuna")


def _git(*args: str) -> str | None:
    """A git command's output in the package's own checkout; None outside one or without git."""
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, object]:
    """The commit (and whether the checkout had uncommitted changes), versions and the machine."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": None if status is None else bool(status),
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in PACKAGES},
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
    }


def strict_json(value: object) -> object:
    """Standard JSON has no NaN or infinity: a diverged metric is written as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value
