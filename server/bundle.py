"""The Flower App that ``fedmeta server`` submits, staged from the installed packages.

`flwr run` builds its bundle (FAB) from a folder with a ``pyproject.toml``, and the
SuperLink refuses run-config keys that the bundle's ``[tool.flwr.app.config]`` does not
list. The server therefore stages its own folder: the packages the apps import, copied
from where this installation runs them (a source checkout or an installed wheel alike),
and a ``pyproject.toml`` whose app config *is* the run's config. Keys the code reads but
the project's ``pyproject.toml`` does not list (``schema``, ``timeout``) work too.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

__all__ = ["APP_PACKAGES", "DISTRIBUTION", "stage_app", "toml_value"]

# What `fedmeta.server.app:app` and `fedmeta.client.app:app` import.
APP_PACKAGES = ("fedmeta.common", "fedmeta.client", "fedmeta.server")
DISTRIBUTION = "fedmeta-factory"


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
    version = importlib.metadata.version(DISTRIBUTION)
    config = "\n".join(f"{json.dumps(key)} = {toml_value(value)}" for key, value in sorted(run_config.items()))
    return (
        f'[project]\nname = "{DISTRIBUTION}"\nversion = "{version}"\n'
        'description = "FedMeta Factory run submitted by fedmeta server"\nlicense = "Apache-2.0"\n\n'
        f'[tool.flwr.app]\npublisher = "{DISTRIBUTION}"\n\n'
        '[tool.flwr.app.components]\nserverapp = "fedmeta.server.app:app"\nclientapp = "fedmeta.client.app:app"\n\n'
        f"[tool.flwr.app.config]\n{config}\n"
    )


def _package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not importable; is {DISTRIBUTION} installed?")
    return Path(next(iter(spec.submodule_search_locations)))


def stage_app(folder: Path, run_config: Mapping[str, object]) -> Path:
    """Write the app (packages and ``pyproject.toml``) to ``folder``, replacing what it held."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in APP_PACKAGES:
        shutil.copytree(
            _package_folder(name),
            folder.joinpath(*name.split(".")),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    (folder / "pyproject.toml").write_text(_pyproject(run_config), encoding="utf-8")
    return folder
