"""`fedmeta` loads a command's module only when it runs: `certs`, `client --help` and the images'
entry points start without importing torch or Flower (several seconds per process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.cli import run_fedmeta

_PROBE = """
import sys
from typer.testing import CliRunner
import {module} as cli
result = CliRunner().invoke(cli.{app}, {args!r})
assert result.exit_code == 0, result.output
print(sorted(name for name in ("torch", "flwr", "pandas") if name in sys.modules))
"""


@pytest.mark.parametrize(("module", "app", "args"), [
    ("fedmeta.simulations.cli", "app", ["certs", "--help"]),
    ("fedmeta.simulations.cli", "app", ["client", "--help"]),
    ("fedmeta.server.cli", "cli", ["--help"]),
    ("fedmeta.client.cli", "cli", ["--help"]),
])
def test_a_command_that_needs_no_model_starts_without_torch_or_flower(module, app, args):
    code = _PROBE.format(module=module, app=app, args=args)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_is_listed_and_loads(tmp_path):
    code, output = run_fedmeta("--help")
    assert code == 0, output
    for name in ("simulate", "example-plants", "benchmark", "tune", "bench", "validate-data", "client", "adapt",
                 "predict", "update", "optimize", "export", "certs", "server"):
        assert name in output
    assert run_fedmeta("bench", "--help")[0] == 0 and run_fedmeta("nonsense")[0] == 2


@pytest.mark.parametrize("command", [["--help"], ["adapt", "--help"], ["update", "--help"], ["optimize", "--help"]])
def test_a_command_prints_no_warning_of_its_own_imports(command):
    """Every command imports the factory floor's modules; none may greet the user with a library's warning."""
    done = subprocess.run([sys.executable, "-m", "fedmeta.simulations.cli", *command], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
