"""A factory runs a bundle only when it is, file for file, the app it installed (`common.federation.app_identity`)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from fedmeta.common.federation.app_identity import bundle_refusal, installed_version
from fedmeta.server import stage_app


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """The app as `fedmeta server` submits it, with a run's settings."""
    return stage_app(tmp_path_factory.mktemp("app") / "app", {"num-server-rounds": 3, "algorithm": "reptile"})


def _bundle(app: Path) -> bytes:
    return build_fab_from_disk(app)


def _edited(staged: Path, tmp_path: Path, edit) -> bytes:
    copy = tmp_path / "app"
    copy.mkdir()
    with zipfile.ZipFile(io.BytesIO(_bundle(staged))) as archive:
        archive.extractall(copy)
    (copy / ".info" / "CONTENT").unlink()
    edit(copy)
    return _bundle(copy)


def test_the_bundle_the_server_submits_is_the_installed_app(staged):
    assert bundle_refusal(_bundle(staged)) is None
    assert bundle_refusal(_bundle(staged), pinned_version=installed_version()) is None


def test_a_changed_source_file_is_refused_by_name(staged, tmp_path):
    def edit(app: Path) -> None:
        module = app / "fedmeta" / "common" / "federation" / "deltas.py"
        module.write_text(module.read_text() + "\nimport os  # one more line\n")

    assert bundle_refusal(_edited(staged, tmp_path, edit)) == (
        f"its fedmeta/common/federation/deltas.py differs from the installed fedmeta-factory {installed_version()}")


def test_a_file_the_installed_app_lacks_is_refused_by_name(staged, tmp_path):
    def edit(app: Path) -> None:
        (app / "fedmeta" / "client" / "extra.py").write_text("print('hello')\n")

    assert bundle_refusal(_edited(staged, tmp_path, edit)) == (
        "it carries fedmeta/client/extra.py, which the installed app does not have")


@pytest.mark.parametrize(("old", "new", "reason"), [
    ('name = "fedmeta-factory"', 'name = "other-app"', "it is the app fedmeta-factory/other-app, not fedmeta-factory"),
    ('version = "', 'version = "9', "it is fedmeta-factory 9"),
    ('clientapp = "fedmeta.client.app:app"', 'clientapp = "fedmeta.client.cli:cli"', "its components are"),
])
def test_another_app_version_or_component_is_refused(staged, tmp_path, old, new, reason):
    def edit(app: Path) -> None:
        config = app / "pyproject.toml"
        assert old in config.read_text()
        config.write_text(config.read_text().replace(old, new, 1))

    assert bundle_refusal(_edited(staged, tmp_path, edit)).startswith(reason)


def test_a_factory_policy_pins_the_release(staged):
    assert bundle_refusal(_bundle(staged), pinned_version="0.0.9") == (
        f"it is fedmeta-factory {installed_version()}, and this factory's policy pins app_version 0.0.9")


def test_what_is_not_a_bundle_is_refused():
    assert bundle_refusal(b"not a zip").startswith("it is not a readable app bundle")
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("fedmeta/client/app.py", "")
    assert bundle_refusal(empty.getvalue()) == "it holds no pyproject.toml"
