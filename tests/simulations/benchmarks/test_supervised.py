"""The full-data reference recipe: early stopping keeps the best validation epoch's weights."""

from __future__ import annotations

import pytest
import torch

from fedmeta.common import FactoryData, ModelConfig, build_model
from fedmeta.common.meta.inner_loop import predict
from fedmeta.simulations.benchmarks.supervised import SupervisedRecipe, train_supervised


def _linear_data(seed: int, rows: int, noise: float = 0.05) -> FactoryData:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 3, generator=generator)
    y = 5.0 + x @ torch.tensor([1.0, -2.0, 0.5]) + noise * torch.randn(rows, generator=generator)
    return FactoryData(f"linear-{seed}", x, y)


def _model_and_initial():
    torch.manual_seed(0)
    model = build_model(ModelConfig("mlp", (3,), 1, hidden=16, depth=1))
    return model, {name: p.detach().clone() for name, p in model.named_parameters()}


def test_regression_learns_and_returns_the_best_validation_epoch():
    model, initial = _model_and_initial()
    result = train_supervised(model, initial, _linear_data(0, 256), _linear_data(1, 64), kind="regression",
                              recipe=SupervisedRecipe(lr=3e-2, batch_size=64, max_epochs=30, patience=30))
    assert result.epochs == 30
    assert result.validation_losses[result.best_epoch - 1] == min(result.validation_losses)
    test = _linear_data(2, 256)
    with torch.no_grad():
        error = (predict(model, result.weights, test.x)[:, 0] - test.y).square().mean()
    assert float(error) < 0.05 * float(test.y.var())
    assert all(torch.equal(initial[name], model.state_dict()[name]) for name in initial)  # the model is untouched


def test_training_stops_after_patience_epochs_without_a_better_validation_loss():
    model, initial = _model_and_initial()
    # Validation targets unrelated to the inputs: the loss stops improving early.
    train, noise = _linear_data(0, 256), _linear_data(1, 64)
    validation = FactoryData("noise", noise.x, torch.randn(64, generator=torch.Generator().manual_seed(3)))
    result = train_supervised(model, initial, train, validation, kind="regression",
                              recipe=SupervisedRecipe(lr=1e-2, batch_size=64, max_epochs=200, patience=5))
    assert result.epochs == result.best_epoch + 5 < 200


def test_regression_output_bias_starts_at_the_mean_target():
    model, initial = _model_and_initial()
    train = _linear_data(0, 256)
    result = train_supervised(model, initial, train, train, kind="regression",
                              recipe=SupervisedRecipe(lr=1e-9, max_epochs=1))
    assert float(result.weights["head.bias"]) == pytest.approx(float(train.y.mean()), abs=1e-4)


def test_classification_trains_with_cross_entropy():
    torch.manual_seed(0)
    model = build_model(ModelConfig("mlp", (3,), 2, hidden=16, depth=1))
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = _linear_data(0, 256)
    labelled = FactoryData("classes", data.x, (data.y > 5.0).long())
    result = train_supervised(model, initial, labelled, labelled, kind="classification",
                              recipe=SupervisedRecipe(lr=3e-2, batch_size=64, max_epochs=15))
    with torch.no_grad():
        accuracy = (predict(model, result.weights, data.x).argmax(-1) == labelled.y).float().mean()
    assert float(accuracy) > 0.95


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("batch_size", 0), ("patience", -1)])
def test_bad_recipe_values_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        SupervisedRecipe(**{field: value})
