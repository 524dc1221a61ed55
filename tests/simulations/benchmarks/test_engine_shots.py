"""C-MAPSS with K counted in whole target engines (`simulations.benchmarks.engine_shots`), on the real files."""

from __future__ import annotations

import math

import pytest
import torch

from fedmeta.client import LoadedFactory, prepare_adaptation
from fedmeta.common import (
    EvaluationSettings,
    SplitSource,
    build_model,
    initial_weights,
    pack_meta_parameters,
    support_folds,
)
from fedmeta.common.data.datasets import rmse
from fedmeta.simulations.benchmarks.engine_shots import ENGINE_SHOTS, EngineShots, _one_task
from fedmeta.simulations.benchmarks.supervised import SupervisedRecipe
from tests.support.shared_data import needs_dataset

pytestmark = needs_dataset("cmapss")


@pytest.fixture(scope="module")
def engines() -> EngineShots:
    return EngineShots(SplitSource("cmapss", 0), seed=0, stride=40)  # few windows: fast gradient boosting


def test_target_engines_nest_and_score_the_whole_test_split(engines: EngineShots) -> None:
    names = [set(engines.targets[k].engines.name.split(" ")[1].split(",")) for k in ENGINE_SHOTS]
    assert [len(n) for n in names] == list(ENGINE_SHOTS) and names[0] <= names[1] <= names[2]
    assert all(t.test.num_samples == 100 for t in engines.targets.values())
    assert engines.scale == 125


def test_unadapted_model_scores_equal_its_direct_rmse_in_cycles(engines: EngineShots) -> None:
    model = build_model(engines.source.model_config)
    params = pack_meta_parameters(initial_weights(model, 0), {})
    settings = EvaluationSettings(algorithm="fedavg", lr=0.01)
    scores = engines.score(engines.adapted(params, settings, steps=0))
    for k in ENGINE_SHOTS:
        test = engines.targets[k].test
        with torch.no_grad():
            direct = torch.func.functional_call(model, initial_weights(model, 0), (test.x,))[:, 0]
        direct = rmse(direct.clamp(0, 1) * 125, test.y * 125)  # predictions clipped to the capped-RUL range
        assert scores[k]["rmse"] == pytest.approx(direct, rel=1e-5)
    adapted = engines.score(engines.adapted(params, settings, steps=5))
    assert all(adapted[k]["rmse"] != scores[k]["rmse"] for k in ENGINE_SHOTS)


def test_references_are_finite_and_the_full_data_model_is_one_value(engines: EngineShots) -> None:
    boosted = engines.score(engines.gradient_boosting(seed=0))
    assert all(math.isfinite(boosted[k]["rmse"]) and boosted[k]["nasa"] > 0 for k in ENGINE_SHOTS)
    full = engines.full_data(SupervisedRecipe(batch_size=2048, max_epochs=1))
    assert list(full) == list(ENGINE_SHOTS) and len({full[k]["rmse"] for k in ENGINE_SHOTS}) == 1
    assert math.isfinite(full[1]["rmse"]) and full[1]["nasa"] > 0


def test_the_fd002_to_fd004_tables_adapt_to_fd004_engines_and_score_its_test_split() -> None:
    engines = EngineShots(SplitSource("cmapss-fd004", 0), seed=0, transfer=("FD002", "FD004"), stride=40)
    assert all(t.engines.name.startswith("FD004/engines") and t.test.num_samples == 248
               for t in engines.targets.values())
    assert {f.name.split("/")[0] for f in engines.train} == {"FD002"}


def test_the_cross_validated_recipe_folds_whole_target_engines(engines: EngineShots) -> None:
    model = build_model(engines.source.model_config)
    params = pack_meta_parameters(initial_weights(model, 0), {})
    settings = EvaluationSettings(algorithm="fedavg", lr=0.01, recipe="cross-validated")
    factory = LoadedFactory(engines.targets[5].engines, "evaluate", engines.source)
    adaptation = prepare_adaptation(factory, params, settings, device=torch.device("cpu"))
    batch = _one_task(engines.targets[5].engines)
    folds = support_folds(batch.support_y, "regression", groups=batch.support_groups)
    for fold in range(int(folds.max()) + 1):  # no engine is on both sides of a fold
        held = set(batch.support_groups[folds == fold].tolist())
        assert held and not held & set(batch.support_groups[folds != fold].tolist())
    assert int(adaptation.choose(batch, 5).chosen.numel()) == 1
    scores = engines.score(engines.adapted(params, settings, steps=5))
    assert all(math.isfinite(scores[k]["rmse"]) for k in ENGINE_SHOTS)
