"""The benchmark's aims check on hand-made results: the best meta-learner against FedAvg + FT and the best
tree model, AI4I's F1 at the failure rate with its AUROC aim, and each family's factory model against the
tree family's aims (C-MAPSS engines: a number and the pooled tree of the same run)."""

from __future__ import annotations

from fedmeta.simulations.benchmarks import fewshot_report


def _entry(**metrics: float) -> dict[str, dict[str, float]]:
    return {name: {"mean": value, "std": 0.0} for name, value in metrics.items()}


def _results() -> dict[str, object]:
    field = {
        "maml": {"5": _entry(f1=0.70, auroc=0.97), "10": _entry(f1=0.60, auroc=0.95)},
        "reptile": {"5": _entry(f1=0.65, auroc=0.99), "10": _entry(f1=0.72, auroc=0.98)},
        "fedavg+ft": {"5": _entry(f1=0.50, auroc=0.90), "10": _entry(f1=0.55, auroc=0.90)},
        "gradient-boosting": {"5": _entry(f1=0.68, auroc=0.96), "10": _entry(f1=0.74, auroc=0.97)},
        "lightgbm": {"5": _entry(f1=0.62, auroc=0.96), "10": _entry(f1=0.70, auroc=0.97)},
    }
    return {"field_metrics": ["f1", "auroc", "brier", "threshold"], "field": field, "shots": [5, 10]}


def test_f1_aims_compare_the_best_meta_learner_with_the_best_tree_and_check_its_auroc():
    verdicts = fewshot_report.field_aims(_results())
    five, ten = verdicts["per_k"]["5"], verdicts["per_k"]["10"]
    assert (five["best_meta"], five["best_tree"], five["beats_both"]) == ("maml", "gradient-boosting", True)
    assert five["best_meta_auroc"] == 0.97 and five["auroc_aim_met"]
    # K=10: reptile (0.72) is the best meta-learner but gradient boosting (0.74) is ahead.
    assert (ten["best_meta"], ten["best_tree_value"], ten["beats_both"]) == ("reptile", 0.74, False)
    assert ten["auroc_aim_met"]
    lines = fewshot_report._aims_lines(verdicts, "F1, ")
    assert "K=10: best federated meta-learner reptile (0.720) does NOT beat" in lines[1]
    assert "best tree model gradient-boosting (0.740)" in lines[1] and "AUROC 0.980 (aim 0.96: met)" in lines[1]


def test_no_f1_aims_without_an_f1_and_missing_methods_are_no_verdict():
    assert fewshot_report.field_aims({"field_metrics": ["rmse", "nasa"], "field": {}, "shots": [5]}) is None
    verdicts = fewshot_report.aims_of({"maml": {"5": _entry(loss=0.1)}}, "loss", False, [5])
    assert verdicts["per_k"]["5"]["best_tree"] is None and not verdicts["per_k"]["5"]["beats_both"]
    assert verdicts["share_of_best_full_data_reference"] is None


def test_each_familys_factory_model_is_held_to_the_tree_family_aims():
    engines = {
        "maml": {"5": _entry(rmse=21.0), "10": _entry(rmse=19.0)},
        "r2d2": {"5": _entry(rmse=18.0), "10": _entry(rmse=18.5)},
        "xgb-bagging": {"5": _entry(rmse=16.0), "10": _entry(rmse=14.5)},
        "gradient-boosting": {"5": _entry(rmse=16.4), "10": _entry(rmse=14.6)},
    }
    verdicts = fewshot_report.tree_family_aims({"dataset": "cmapss", "engine_shots": engines})
    five, ten, absolute = verdicts
    assert (five["limit"], five["values"], five["met"]) == (16.4, {"r2d2": 18.0, "xgb-bagging": 16.0},
                                                           {"r2d2": False, "xgb-bagging": True})
    assert ten["met"] == {"r2d2": False, "xgb-bagging": True} and absolute["limit"] == 15.0
    lines = fewshot_report._tree_family_lines({"dataset": "cmapss", "engine_shots": engines})
    assert lines[2] == ("factory's model, rmse after K whole target engines, K=10 <= 15.000: r2d2 18.500: NOT met; "
                        "xgb-bagging 14.500: met")
    assert fewshot_report.tree_family_aims({"dataset": "synthetic"}) == []
