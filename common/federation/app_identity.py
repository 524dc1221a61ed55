"""The federation's Flower App as both sides know it, and the check that a bundle is that app.

The server submits the installed packages as the run's app bundle (FAB: a zip of ``pyproject.toml``,
the packages' source and Flower's ``.info/CONTENT`` manifest; `fedmeta.server.bundle`). A factory runs
only a bundle that is, file for file, the app it installed itself (`bundle_refusal`): the same
distribution, version and components, and every source file byte for byte the installed one. The
run's settings, in the bundle's ``[tool.flwr.app.config]``, are the one part that may differ. No
Flower import: the bundle is read with ``zipfile`` and ``tomllib``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import tomllib
import zipfile
from pathlib import Path

__all__ = ["APP_PACKAGES", "COMPONENTS", "DISTRIBUTION", "bundle_refusal", "installed_version", "package_folder"]

DISTRIBUTION = "fedmeta-factory"
# What `fedmeta.server.app:app` and `fedmeta.client.app:app` import.
APP_PACKAGES = ("fedmeta.common", "fedmeta.client", "fedmeta.server")
COMPONENTS = {"serverapp": "fedmeta.server.app:app", "clientapp": "fedmeta.client.app:app"}
_CONFIG_FILE = "pyproject.toml"
_MANIFEST_FILE = ".info/CONTENT"  # Flower's list of the bundle's files, written by `flwr build`


def installed_version() -> str:
    """The version of the installed distribution."""
    return importlib.metadata.version(DISTRIBUTION)


def package_folder(name: str) -> Path:
    """Where the installed package ``name`` (one of `APP_PACKAGES`) lives."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not importable; is {DISTRIBUTION} installed?")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def _installed_sources() -> dict[str, str]:
    """Each installed source file of the app, by its path in a bundle, with its SHA-256."""
    sources = {}
    for name in APP_PACKAGES:
        folder = package_folder(name)
        prefix = Path(*name.split("."))
        for path in folder.rglob("*.py"):
            if "__pycache__" not in path.parts:
                sources[(prefix / path.relative_to(folder)).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sources


def _config_refusal(config: dict, pinned_version: str | None) -> str | None:
    project = config.get("project", {})
    app = config.get("tool", {}).get("flwr", {}).get("app", {})
    name, version = project.get("name"), project.get("version")
    if name != DISTRIBUTION or app.get("publisher") != DISTRIBUTION:
        return f"it is the app {app.get('publisher')}/{name}, not {DISTRIBUTION}"
    installed = installed_version()
    if version != installed:
        return f"it is {DISTRIBUTION} {version}, and {installed} is installed here"
    if pinned_version is not None and version != pinned_version:
        return f"it is {DISTRIBUTION} {version}, and this factory's policy pins app_version {pinned_version}"
    if app.get("components") != COMPONENTS:
        return f"its components are {app.get('components')}, not {COMPONENTS}"
    return None


def bundle_refusal(bundle: bytes, pinned_version: str | None = None) -> str | None:
    """Why ``bundle`` is not the installed app (or not the version ``pinned_version`` names); None if it is.

    Any source file that differs from the installed one, or that the installed app does not have, is
    refused by name, so code the factory did not install never runs on it.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(bundle))
        files = {info.filename: info for info in archive.infolist() if not info.is_dir()}
        if _CONFIG_FILE not in files:
            return f"it holds no {_CONFIG_FILE}"
        try:
            config = tomllib.loads(archive.read(_CONFIG_FILE).decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            return f"its {_CONFIG_FILE} is not valid TOML ({error})"
        if refusal := _config_refusal(config, pinned_version):
            return refusal
        installed = _installed_sources()
        for name in sorted(set(files) - {_CONFIG_FILE, _MANIFEST_FILE}):
            if name not in installed:
                return f"it carries {name}, which the installed app does not have"
            if hashlib.sha256(archive.read(name)).hexdigest() != installed[name]:
                return f"its {name} differs from the installed {DISTRIBUTION} {installed_version()}"
    except (zipfile.BadZipFile, OSError, ValueError) as error:  # ValueError: a corrupt member (bad CRC, ...)
        return f"it is not a readable app bundle ({error})"
    return None
