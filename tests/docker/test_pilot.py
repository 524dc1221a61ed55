"""The images built and the compose pilot run: slow (minutes), opt-in with FEDMETA_DOCKER_TESTS=1.

Builds both images on a Debian base (docker/build_on_debian.sh; root, a Docker daemon, debootstrap), then
runs docker/compose.yaml as committed for 2 rounds on synthetic plant tables: the server and three factories
in containers. What a deployment relies on is checked on the containers themselves: they ran as uid 49999,
every bind mount was read-only, and each factory's volume holds the run's final model package, the server's.

    FEDMETA_DOCKER_TESTS=1 pytest -s tests/docker/test_pilot.py
    FEDMETA_DOCKER_TESTS=1 TORCH_WHEEL=/opt/wheels/torch-2.13.0+cpu-....whl pytest -s tests/docker/test_pilot.py

(TORCH_WHEEL where download.pytorch.org is out of reach: see docker/build_on_debian.sh.)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
PROJECT = "fedmeta-pilot"
ROUNDS = 2
APP_UID = 49999
# Pilot factory -> example plant table (`fedmeta example-plants`); plant-c is held out (--role evaluate).
TABLES = {"plant-a": "plant-00", "plant-b": "plant-01", "plant-c": "line-7"}


def _skip_reason() -> str:
    if os.environ.get("FEDMETA_DOCKER_TESTS") != "1":
        return "builds the images and runs the compose pilot (minutes): set FEDMETA_DOCKER_TESTS=1"
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        return "no Docker daemon reachable (`docker info` failed)"
    return ""


_SKIP_REASON = _skip_reason()
pytestmark = pytest.mark.skipif(bool(_SKIP_REASON), reason=_SKIP_REASON or "opted in")


def _compose_command() -> list[str]:
    """Compose v2 (`docker compose`) where installed, else v1 (`docker-compose`)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "neither `docker compose` nor `docker-compose` is installed"
    return ["docker-compose"]


def _fedmeta(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "fedmeta"), *args], check=True, capture_output=True)


def _pilot_folder(folder: Path) -> Path:
    """Certificates and factory tables laid out as docker/compose.yaml expects them beside ``folder/docker``."""
    _fedmeta("example-plants", "--out", str(folder / "example"))
    _fedmeta("certs", "--out", str(folder / "certs"), "--host", "server", *(f"--factory={f}" for f in TABLES))
    for key in ("server.key", *TABLES):  # private keys are 0600: readable by the images' user only once theirs
        os.chown(folder / "certs" / key, APP_UID, APP_UID)
    data = folder / "factory-data"
    for factory, table in TABLES.items():
        (data / factory).mkdir(parents=True)
        shutil.copy(folder / "example" / "plants" / f"{table}.csv", data / factory / f"{factory}.csv")
    shutil.copy(folder / "example" / "schema.json", data / "schema.json")
    (folder / "docker").mkdir()
    return folder / "docker"


def _state_volume(container: str) -> tuple[dict[str, int], dict[str, bytes]]:
    """What /app/state holds in ``container`` (running or stopped): each entry's owner uid, each file's bytes."""
    done = subprocess.run(["docker", "cp", f"{container}:/app/state", "-"], capture_output=True, check=True)
    owners, contents = {}, {}
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        for member in archive:
            owners[member.name] = member.uid
            if member.isfile():
                contents[member.name] = archive.extractfile(member).read()
    return owners, contents


@pytest.fixture(scope="module")
def pilot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Build the images and run the pilot to its end: per service, its `docker inspect` and its state volume."""
    subprocess.run([str(ROOT / "docker" / "build_on_debian.sh")], check=True, timeout=3600)
    project_dir = _pilot_folder(tmp_path_factory.mktemp("pilot"))
    compose = [*_compose_command(), "-p", PROJECT, "-f", str(COMPOSE), "--project-directory", str(project_dir)]
    env = {**os.environ, "FEDMETA_ROUNDS": str(ROUNDS)}
    try:
        # Runs until the server's run ends (after it delivered the final package), then stops the factories.
        subprocess.run([*compose, "up", "--no-build", "--exit-code-from", "server"], env=env, check=True, timeout=1800)
        ids = subprocess.run([*compose, "ps", "-q"], env=env, capture_output=True, text=True, check=True).stdout
        inspected = subprocess.run(["docker", "inspect", *ids.split()], capture_output=True, text=True, check=True)
        services = {}
        for container in json.loads(inspected.stdout):
            owners, contents = _state_volume(container["Id"])
            services[container["Config"]["Labels"]["com.docker.compose.service"]] = {
                "inspect": container, "owners": owners, "contents": contents
            }
        return services
    finally:
        subprocess.run([*compose, "down", "--volumes"], env=env, check=True)


def _packages(contents: dict[str, bytes], folder: str) -> dict[str, tuple[dict, bytes]]:
    """Each model package under ``folder`` of a state volume: its path -> (manifest, weights)."""
    packages = {}
    for name, data in contents.items():
        path = PurePosixPath(name)
        if path.name == "model.json" and path.is_relative_to(folder):
            packages[str(path.parent)] = (json.loads(data), contents[str(path.parent / "weights.safetensors")])
    return packages


def test_the_pilot_ran_the_server_and_three_factories(pilot: dict[str, dict]):
    assert sorted(pilot) == sorted(["server", *TABLES])
    assert pilot["server"]["inspect"]["State"]["ExitCode"] == 0


def test_every_container_ran_as_the_images_non_root_user(pilot: dict[str, dict]):
    for service, found in pilot.items():
        assert found["inspect"]["Config"]["User"] == str(APP_UID), service
        # Everything its processes wrote is theirs: they ran as that user, not as root.
        assert found["owners"] and set(found["owners"].values()) == {APP_UID}, (service, found["owners"])


def test_every_bind_mount_was_read_only_and_only_the_state_volume_writable(pilot: dict[str, dict]):
    for service, found in pilot.items():
        mounts = found["inspect"]["Mounts"]
        binds = [mount for mount in mounts if mount["Type"] == "bind"]
        assert binds and not any(mount["RW"] for mount in binds), (service, binds)
        assert [(mount["Type"], mount["Destination"]) for mount in mounts if mount["RW"]] == [("volume", "/app/state")]


def test_each_factory_volume_holds_the_servers_final_package(pilot: dict[str, dict]):
    (path, (manifest, weights)), = _packages(pilot["server"]["contents"], "state/run").items()
    print(f"server: /app/{path}/weights.safetensors sha256 {hashlib.sha256(weights).hexdigest()}")
    assert manifest["round"] == ROUNDS
    assert hashlib.sha256(weights).hexdigest() == manifest["weights_sha256"]
    for factory in TABLES:
        (path, (stored, stored_weights)), = _packages(pilot[factory]["contents"], "state/models").items()
        digest = hashlib.sha256(stored_weights).hexdigest()
        print(f"{factory}: /app/{path}/weights.safetensors sha256 {digest}")
        assert path.endswith(f"/round-{ROUNDS:06d}"), path
        assert digest == stored["weights_sha256"] == manifest["weights_sha256"], factory
