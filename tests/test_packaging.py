"""The distribution installs one import name, `fedmeta`, and its wheel holds every package.

The design card's folders (`common/`, `client/`, `server/`, `simulations/`) sit at the top
of the repository but install as `fedmeta.<folder>`; pyproject.toml lists each package, so
a new subpackage that is not listed would import in an editable install and be missing
from the wheel. Building the wheel here catches that.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from flwr.supercore.object_ref import validate

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("common", "client", "server", "simulations")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The project's wheel, built from a copy of the sources (the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in COMPONENTS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (built,) = out.glob("*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def _source_packages() -> set[str]:
    """Every folder of the components that holds an ``__init__.py``, as its installed path."""
    return {
        "fedmeta/" + init.parent.relative_to(ROOT).as_posix()
        for folder in COMPONENTS
        for init in (ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_every_package_folder_is_in_the_wheel(wheel):
    packaged = {Path(name).parent.as_posix() for name in wheel.namelist() if name.endswith("/__init__.py")}
    assert _source_packages() - packaged == set(), "list these packages in pyproject.toml [tool.setuptools]"


def test_every_module_is_in_the_wheel_under_fedmeta(wheel):
    modules = {
        "fedmeta/" + path.relative_to(ROOT).as_posix()
        for folder in COMPONENTS
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules <= set(wheel.namelist())


def test_the_committed_tuned_configurations_are_in_the_wheel(wheel):
    tuned = {"fedmeta/" + path.relative_to(ROOT).as_posix() for path in (ROOT / "simulations").rglob("tuned/*.json")}
    assert tuned and tuned <= set(wheel.namelist())


def test_the_wheel_installs_only_the_fedmeta_import_name(wheel):
    top_levels = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert top_levels == {"fedmeta"}
    (top_level_txt,) = [name for name in wheel.namelist() if name.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level_txt).decode().split() == ["fedmeta"]


def test_the_installed_distribution_lists_only_fedmeta():
    assert importlib.metadata.distribution("fedmeta-factory").read_text("top_level.txt").split() == ["fedmeta"]


def test_bare_folder_names_do_not_import_outside_the_repository(tmp_path):
    # A user's environment: no PYTHONPATH (Flower's simulation engine sets one to this process's sys.path).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    bare = subprocess.run(
        [sys.executable, "-c", "import server"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert bare.returncode != 0 and "No module named 'server'" in bare.stderr
    named = subprocess.run(
        [sys.executable, "-c", "import fedmeta.server.app, fedmeta.client.app"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert named.returncode == 0, named.stderr


def test_flower_finds_the_apps_by_their_fedmeta_names(tmp_path):
    components = PYPROJECT["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "fedmeta.server.app:app", "clientapp": "fedmeta.client.app:app"}
    for reference in components.values():
        assert validate(reference, project_dir=tmp_path) == (True, None)
