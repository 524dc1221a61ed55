"""`fedmeta benchmark --ray-address`: the seeds run as tasks on a running Ray cluster (the session's head, which
every test here joins) and give exactly the figures the same seeds give in this process."""

from __future__ import annotations

import json
import os
import shlex

from typer.testing import CliRunner

from fedmeta.simulations.cli import app
from tests.support.docs import example
from tests.support.ray_nodes import alive_nodes

SMALL = ["--dataset", "synthetic", "--quick", "--seeds", "2", "--rounds", "2", "--methods", "maml,linear",
         "--tuned", "none"]


def _benchmark(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["benchmark", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_seeds_run_on_the_cluster_and_give_the_figures_of_a_run_here(tmp_path):
    (documented,) = example("docs/researcher.md", "bash",
                            marker="run by tests/simulations/benchmarks/test_benchmark_on_a_cluster.py")
    command = shlex.split(documented.replace("HEAD_IP:6379", os.environ["RAY_ADDRESS"]))
    assert command[:3] == ["fedmeta", "benchmark", "--ray-address"], documented
    code, output = _benchmark(*command[2:4], *SMALL, "--out", str(tmp_path / "cluster"))
    assert code == 0, output[-3000:]
    code, output = _benchmark(*SMALL, "--out", str(tmp_path / "here"))
    assert code == 0, output[-3000:]
    cluster, here = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("cluster", "here"))
    alive = set(alive_nodes(os.environ["RAY_ADDRESS"]))
    assert set(cluster["seed_nodes"]) == {"0", "1"} and set(cluster["seed_nodes"].values()) <= alive
    assert here["seed_nodes"] == {}
    assert cluster["results"] == here["results"] and cluster["field"] == here["field"]
    assert "maml" in cluster["results"] and len(cluster["seconds_per_seed"]) == 2


def test_an_address_without_a_ray_cluster_stops_the_benchmark_by_name(tmp_path):
    code, output = _benchmark("--ray-address", "127.0.0.1:1", *SMALL, "--out", str(tmp_path / "nowhere"))
    assert code == 1 and "no Ray cluster answers at 127.0.0.1:1" in output and "Traceback" not in output, output
