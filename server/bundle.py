"""The Flower App that ``fedmeta server`` submits, staged from the installed packages.

`flwr run` builds its bundle (FAB) from a folder with a ``pyproject.toml``, and the
SuperLink refuses run-config keys that the bundle's ``[tool.flwr.app.config]`` does not
list. The server therefore stages its own folder: the packages the apps import, copied
from where this installation runs them (a source checkout or an installed wheel alike),
and a ``pyproject.toml`` whose app config *is* the run's config. Keys the code reads but
the project's ``pyproject.toml`` does not list (``schema``, ``timeout``) work too.
Factories run only a bundle whose code is, file for file, the app they installed
(`common.federation.app_identity`): server and factories run the same release.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from fedmeta.common.federation.app_identity import (
    APP_PACKAGES,
    COMPONENTS,
    DISTRIBUTION,
    installed_version,
    package_folder,
)

__all__ = ["stage_app", "toml_value"]


def toml_value(value: object) -> str:
    """A TOML literal for a run-config value (str, bool, int or float)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # TOML spells floats, inf and nan as Python's repr does
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    raise ValueError(f"run-config values must be strings, booleans or numbers, got {value!r}")


def _pyproject(run_config: Mapping[str, object]) -> str:
    config = "\n".join(f"{json.dumps(key)} = {toml_value(value)}" for key, value in sorted(run_config.items()))
    components = "\n".join(f"{key} = {json.dumps(value)}" for key, value in COMPONENTS.items())
    return (
        f'[project]\nname = "{DISTRIBUTION}"\nversion = "{installed_version()}"\n'
        'description = "FedMeta Factory run submitted by fedmeta server"\nlicense = "Apache-2.0"\n\n'
        f'[tool.flwr.app]\npublisher = "{DISTRIBUTION}"\n\n'
        f"[tool.flwr.app.components]\n{components}\n\n"
        f"[tool.flwr.app.config]\n{config}\n"
    )


def stage_app(folder: Path, run_config: Mapping[str, object]) -> Path:
    """Write the app (packages and ``pyproject.toml``) to ``folder``, replacing what it held."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in APP_PACKAGES:
        shutil.copytree(
            package_folder(name),
            folder.joinpath(*name.split(".")),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    (folder / "pyproject.toml").write_text(_pyproject(run_config), encoding="utf-8")
    return folder
