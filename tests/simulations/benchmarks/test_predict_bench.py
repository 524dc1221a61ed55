"""``fedmeta bench predict``: both sides run on the same generated table, and the ratio is what the runs measured."""

from __future__ import annotations

import json
import statistics

from tests.support.cli import run_fedmeta


def test_the_predict_benchmark_reports_the_ratio_of_its_measured_medians(tmp_path):
    arguments = ("--rows", "2000", "--repeats", "1", "--json", str(tmp_path / "r.json"))
    code, output = run_fedmeta("bench", "predict", *arguments)
    assert code == 0, output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["rows"] == 2000 and len(result["floor_seconds"]) == len(result["predict_seconds"]) == 1
    ratio = statistics.median(result["predict_seconds"]) / statistics.median(result["floor_seconds"])
    assert abs(result["ratio"] - ratio) < 1e-9
    assert result["floor_peak_bytes"] > 0 and result["predict_peak_bytes"] > 0
    assert f"predict / floor: {ratio:.2f}x" in output
    assert len(result["forward_seconds"]) == 1 and "its forward passes alone" in output
