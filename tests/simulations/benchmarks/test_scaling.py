"""``fedmeta bench scaling``: memory of a process tree, targets, output, and one tiny real run via the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fedmeta.simulations.benchmarks import scaling
from fedmeta.simulations.cli import app

MiB = 2**20


def test_tree_memory_counts_child_processes():
    child = "import time; block = bytearray(200 * 2**20); block[::4096] = b'x' * len(block[::4096]); time.sleep(30)"
    process = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.monotonic() + 30
        with scaling.TreeMemorySampler(interval=0.05) as sampler:
            while (alone := scaling.tree_rss_bytes(process.pid)[0]) < 200 * MiB:  # until the child has touched it
                assert time.monotonic() < deadline, "the child never held its block"
                time.sleep(0.05)
            sampler.sample()
    finally:
        process.kill()
        process.wait()
    assert sampler.processes_at_peak >= 2
    assert sampler.peak_bytes >= alone + 50 * MiB  # the child's block on top of this process's own


def _size(factories: int, plain_cpu: float, flower_cpu: float, peak_gb: float) -> scaling.SizeResult:
    """Wall times half the CPU times for the engine (two actors in parallel), equal for the plain loop."""
    return scaling.SizeResult(factories, 2, math.ceil(factories / 2), 2, [plain_cpu] * 3, [flower_cpu / 2] * 3,
                              [plain_cpu] * 3, [flower_cpu] * 3, int(0.5 * scaling.GB), int(peak_gb * scaling.GB), 10)


def test_targets_apply_per_core_to_the_sizes_the_issue_names():
    assert _size(10, 0.01, 0.05, 2.0).targets == []
    size = _size(100, 0.2, 0.27, 2.0)
    (ratio,) = size.targets
    assert ratio.value == pytest.approx(1.35) and not ratio.passed  # in CPU seconds
    assert size.ratio == pytest.approx(0.675)  # in wall time the two actors look faster than the plain loop
    ratio, memory = _size(1000, 2.0, 2.9, 2.4).targets
    assert ratio.passed and memory.passed and memory.unit == "GB"
    assert not _size(1000, 2.0, 2.9, 2.6).targets[1].passed


def test_tree_cpu_time_counts_a_busy_child():
    child = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    process = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.monotonic() + 60
        while scaling.tree_cpu_seconds(process.pid) < 1.0:  # the child's own busy second
            assert time.monotonic() < deadline, "the child never used its CPU second"
            time.sleep(0.05)
        assert scaling.tree_cpu_seconds() >= scaling.tree_cpu_seconds(process.pid) + time.process_time() * 0.5
    finally:
        process.kill()
        process.wait()


def test_this_processs_cpu_time_moves_with_work_far_below_a_clock_tick():
    """A round of a tiny federation uses a few ms of CPU: read in 10 ms ticks it could be 0 (and its ratio a
    division by zero)."""
    for _ in range(20):
        before, started = scaling.tree_cpu_seconds(), time.process_time()
        while time.process_time() - started < 0.001:  # 1 ms of work
            pass
        assert 0.0005 < scaling.tree_cpu_seconds() - before < 0.1


def test_render_shows_every_size_and_verdict():
    result = scaling.ScalingResult(5, 1.0, 2, 1, 0.5, dict(scaling.WORK),
                                   [_size(100, 0.2, 0.22, 2.0), _size(1000, 2.0, 3.2, 2.1)])
    console = Console(record=True, width=200)
    scaling.render(result, console)
    text = console.export_text()
    for expected in ("scaling benchmark", "1,000", "2 x 500", "1.10x", "1.60x", "0.55x", "PASS", "FAIL", "2.10"):
        assert expected in text
    json.dumps(result.to_dict())


def test_cli_runs_tiny_federations_and_writes_json(tmp_path):
    path = tmp_path / "scaling.json"
    result = CliRunner().invoke(app, ["bench", "scaling", "--factories", "4", "--rounds", "1", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "round time" in result.output and "peak memory" in result.output
    data = json.loads(path.read_text())
    assert [size["factories"] for size in data["sizes"]] == [4]
    for size in data["sizes"]:
        assert size["nodes"] == 2 and size["factories_per_node"] == size["factories"] // 2
        assert len(size["plain_round_s"]) == 1 and len(size["flower_round_s"]) == 1
        assert len(size["plain_cpu_s"]) == 1 and len(size["flower_cpu_s"]) == 1
        assert math.isfinite(size["ratio"]) and size["ratio"] > 0
        assert size["plain_cpu_s"][0] > 0 and size["flower_cpu_s"][0] > 0
        assert size["cpu_ratio"] == pytest.approx(size["flower_cpu_s"][0] / size["plain_cpu_s"][0])
        assert size["flower_peak_bytes"] > size["plain_peak_bytes"] > 0  # Ray's processes count
        assert size["flower_processes"] > 2
        assert size["targets"] == []  # no targets at these sizes


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--factories", "10,x"], "comma-separated positive integers"), (["--rounds", "0"], "rounds")],
)
def test_cli_rejects_bad_options(arguments, message):
    result = CliRunner().invoke(app, ["bench", "scaling", *arguments])
    assert result.exit_code != 0
    assert message in result.output


def test_package_does_not_import_the_benchmark():
    code = "import sys, fedmeta.simulations.cli; assert 'fedmeta.simulations.benchmarks.scaling' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
