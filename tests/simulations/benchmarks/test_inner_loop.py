"""``fedmeta bench inner-loop``: result structure, the gradient-agreement guard and the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from fedmeta.simulations.benchmarks import inner_loop
from fedmeta.simulations.benchmarks.memory import run_in_fresh_processes
from fedmeta.simulations.cli import app

CPU = torch.device("cpu")
HAS_TORCHOPT = importlib.util.find_spec("torchopt") is not None


@pytest.fixture(scope="module")
def mlp_result() -> inner_loop.BenchmarkResult:
    """One tiny run shared by the structure tests (memory is covered by the CLI test)."""
    return inner_loop.run_inner_loop_benchmark(device=CPU, models=["mlp"], repeats=3, memory=False)


def test_every_variant_is_timed_with_positive_times(mlp_result):
    (model,) = mlp_result.models
    expected = [n for n in inner_loop.VARIANT_NAMES if HAS_TORCHOPT or "torchopt" not in n]
    assert model.model == "mlp" and model.repeats == 3
    assert list(model.variants) == expected
    for variant in model.variants.values():
        assert len(variant.times_ms) == 3
        assert all(t > 0 for t in variant.times_ms)
        assert variant.median_ms > 0 and variant.iqr_ms >= 0
        assert variant.peak_mib is None


def test_ratios_are_finite_and_cover_every_algorithm(mlp_result):
    (model,) = mlp_result.models
    assert model.ratios
    assert all(math.isfinite(r) and r > 0 for r in model.ratios.values())
    for algorithm, order in [("maml", "2nd"), ("metasgd", "2nd"), ("anil", "2nd")]:
        assert f"{algorithm}/hand-written-{order}" in model.ratios
    for algorithm in ("fomaml", "reptile"):
        assert f"{algorithm}/hand-written-1st" in model.ratios
    assert {"maml/vmap-2nd", "fomaml/vmap-1st"} <= model.ratios.keys()
    assert all(0 <= e <= inner_loop.GRADIENT_TOLERANCE for e in model.gradient_errors.values())
    for target in model.targets:
        assert math.isfinite(target.ratio) and isinstance(target.passed, bool)
    json.dumps(mlp_result.to_dict())  # --json must be able to write it


def test_torchopt_rows_and_targets(mlp_result):
    pytest.importorskip("torchopt")
    (model,) = mlp_result.models
    assert {"torchopt-2nd", "torchopt-1st"} <= model.variants.keys()
    assert {"maml/torchopt-2nd", "fomaml/torchopt-1st"} <= model.ratios.keys()
    assert {"maml/torchopt-2nd", "fomaml/torchopt-1st"} <= model.gradient_errors.keys()
    assert [(t.numerator, t.denominator) for t in model.targets] == [
        ("maml", "hand-written-2nd"),
        ("fomaml", "hand-written-1st"),
        ("maml", "torchopt-2nd"),
        ("fomaml", "torchopt-1st"),
    ]


def test_without_torchopt_its_rows_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(inner_loop, "_torchopt_version", lambda: None)
    result = inner_loop.run_inner_loop_benchmark(device=CPU, models=["mlp"], repeats=1, memory=False)
    (model,) = result.models
    assert not any("torchopt" in name for name in [*model.variants, *model.ratios, *model.gradient_errors])
    assert [t.denominator for t in model.targets] == ["hand-written-2nd", "hand-written-1st"]
    console = Console(record=True, width=200)
    inner_loop.render(result, console)
    assert "torchopt not installed, its rows skipped (pip install -e '.[bench]')" in console.export_text()


def _maml_gradient() -> dict[str, torch.Tensor]:
    setup = inner_loop.build_setup("mlp", CPU)
    return inner_loop.build_variant("maml", setup).gradient()


def test_gradient_check_accepts_a_matching_reference():
    setup = inner_loop.build_setup("mlp", CPU)
    ours = inner_loop.build_variant("maml", setup).gradient()
    reference = inner_loop.build_variant("hand-written-2nd", setup).gradient()
    assert inner_loop.check_gradients(ours, reference, label="ok") <= 1e-5


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda g: g * 1.01,  # 1% off: far above float32 rounding
        lambda g: g + 1e-3 * g.abs().max() * torch.randn_like(g),
        lambda g: torch.full_like(g, float("nan")),
    ],
)
def test_gradient_check_fires_on_a_wrong_reference(corrupt):
    expected = _maml_gradient()
    name = "head.weight"
    wrong = {**expected, name: corrupt(expected[name])}
    with pytest.raises(inner_loop.GradientMismatchError, match=f"wrong ref.*'{name}'"):
        inner_loop.check_gradients(expected, wrong, label="wrong ref")


def test_gradient_check_fires_on_missing_parameters():
    expected = _maml_gradient()
    partial = dict(list(expected.items())[:-1])
    with pytest.raises(inner_loop.GradientMismatchError, match="parameter names differ"):
        inner_loop.check_gradients(expected, partial, label="partial")


def test_benchmark_aborts_before_timing_when_a_reference_disagrees(monkeypatch):
    """A reference with another inner learning rate computes another meta-gradient."""
    spec = inner_loop._SPECS["hand-written-2nd"]

    def wrong_build(setup: inner_loop.Setup) -> inner_loop.Variant:
        config = dataclasses.replace(setup.config, inner_lr=2 * setup.config.inner_lr)
        return spec.build(dataclasses.replace(setup, config=config))

    monkeypatch.setitem(inner_loop._SPECS, "hand-written-2nd", dataclasses.replace(spec, build=wrong_build))
    with pytest.raises(inner_loop.GradientMismatchError, match="mlp: maml vs hand-written-2nd"):
        inner_loop.run_inner_loop_benchmark(device=CPU, models=["mlp"], repeats=1, memory=False)


def test_peak_memory_is_measured_in_fresh_processes():
    peaks = run_in_fresh_processes(
        inner_loop.variant_peak_memory, [("mlp", "maml", "cpu"), ("mlp", "reptile", "cpu")], workers=2
    )
    assert all(isinstance(p, int) and p >= 0 for p in peaks)
    # second order keeps every inner step's graph, first order (Reptile) none across steps: it must show
    assert peaks[0] > peaks[1] and peaks[0] > 0


def test_cli_prints_the_tables_and_writes_json(tmp_path, monkeypatch):
    # One spawned process per variant costs ~3 s of imports each; measure in process here
    # (the spawn path has its own test above) to keep this file fast.
    monkeypatch.setattr(
        inner_loop, "run_in_fresh_processes", lambda fn, arguments, workers: [fn(*a) for a in arguments]
    )
    path = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "inner-loop", "--repeats", "2", "--models", "mlp", "--json", str(path)])
    assert result.exit_code == 0, result.output
    for text in ("inner-loop benchmark", "median", "peak", "hand-written-2nd", "mlp targets"):
        assert text in result.output
    data = json.loads(path.read_text())
    (model,) = data["models"]
    assert all(v["peak_mib"] is not None and v["peak_mib"] >= 0 for v in model["variants"].values())
    # Each verdict is its ratio against its limit, the ratio the quotient of the two medians, and the printed
    # table says the same: a bench that printed PASS whatever it measured would fail here.
    medians = {name: variant["median_ms"] for name, variant in model["variants"].items()}
    assert model["targets"]
    verdicts = []
    for target in model["targets"]:
        ratio = medians[target["numerator"]] / medians[target["denominator"]]
        assert target["ratio"] == pytest.approx(ratio, rel=1e-9)
        assert target["passed"] == (ratio < target["limit"] if target["strict"] else ratio <= target["limit"])
        verdicts.append("PASS" if target["passed"] else "FAIL")
    table = result.output[result.output.index("mlp targets"):]
    assert [word for word in table.split() if word in ("PASS", "FAIL")] == verdicts


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--models", "mlp,lstm"], "unknown models"), (["--repeats", "0"], "repeats")],
)
def test_cli_rejects_bad_options(arguments, message):
    result = CliRunner().invoke(app, ["bench", "inner-loop", *arguments])
    assert result.exit_code != 0
    assert message in result.output


def test_package_does_not_import_the_benchmark():
    code = (
        "import sys, fedmeta.common.meta.algorithms, fedmeta.simulations.cli; "
        "assert 'fedmeta.simulations.benchmarks.inner_loop' not in sys.modules; "
        "assert 'torchopt' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cnns_second_order_step_is_held_to_its_time_and_memory_aims():
    """The CNN's aims (issue 29): each second-order variant at most 0.75x the hand-written loop's time and 2x its peak
    memory; a peak not measured (``--no-memory``) leaves its memory targets out rather than passing them."""
    def variant(name: str, median_ms: float, peak_mib: float | None) -> inner_loop.VariantResult:
        return inner_loop.VariantResult(name, "ours", 2, median_ms, 1.0, peak_mib, [median_ms])

    variants = {"maml": variant("maml", 80.0, 240.0), "maml-1-task-a-pass": variant("maml-1-task-a-pass", 104.0, 66.0),
                "hand-written-2nd": variant("hand-written-2nd", 100.0, 60.0)}
    ratios = {"maml/hand-written-2nd": 0.8, "maml-1-task-a-pass/hand-written-2nd": 1.04}
    targets = inner_loop._targets("cnn1d", variants, ratios)
    assert [(t.numerator, t.measure, round(t.ratio, 2), t.passed) for t in targets] == [
        ("maml", "time", 0.8, False), ("maml", "peak memory", 4.0, False),
        ("maml-1-task-a-pass", "time", 1.04, False), ("maml-1-task-a-pass", "peak memory", 1.1, True),
    ]
    unmeasured = {name: dataclasses.replace(v, peak_mib=None) for name, v in variants.items()}
    assert [t.measure for t in inner_loop._targets("cnn1d", unmeasured, ratios)] == ["time", "time"]
