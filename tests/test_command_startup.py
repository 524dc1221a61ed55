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


_META_STEP = """
import sys, tempfile
from fedmeta.simulations.benchmarks.scaling import PlainLoop, bench_config
import fedmeta.client.floor.cli  # the factory floor's modules too: optimize and update import SciPy and river late
with tempfile.TemporaryDirectory() as run_dir:
    PlainLoop(bench_config(4, 2, run_dir, 2)).run_round()  # a round of a network federation
import torch._dynamo  # walks sys.modules, as torch.optim's first step or torch.compile would in a user's process
print(sorted(name for name in ("xgboost", "scipy.optimize", "scipy.stats", "river") if name in sys.modules))
"""


def test_a_meta_learning_round_imports_neither_xgboost_nor_the_floors_scipy_and_river():
    """XGBoost costs a process 1.6 s and 86 MB. Importing ``torch._dynamo`` (torch.optim's first step does, and
    torch.compile) walks ``sys.modules`` (``inspect.getmodule``) and so imports any lazy module placed there: a round
    of a network federation, in each simulation actor and factory process, must not pay for the trees' or the floor's
    libraries."""
    done = subprocess.run([sys.executable, "-c", _META_STEP], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
