"""The ``r2d2`` algorithm: a closed-form head on the learned features beside the inputs, meta-learned through the
solve. Checked against a hand-written reference (normal equations, one task at a time), against finite
differences, by construction on a linear plant, and by learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedmeta.common import (
    FamilyConfig,
    MetaConfig,
    ModelConfig,
    NonFiniteLossError,
    RegressionTaskSampler,
    TaskBatch,
    algorithm_model_config,
    build_model,
    make_family,
    meta_step,
    meta_train,
    model_config_for,
    source_from_config,
)
from fedmeta.common.meta.adaptation import Adaptation
from fedmeta.common.meta.algorithms import SOLVE_LR_GAIN
from fedmeta.common.meta.closed_form_head import solve_head, solve_learned_head
from fedmeta.common.meta.models import COLUMN_PENALTY, LOGIT_SCALE, PENALTY
from tests.support.meta_reference import FixedSampler

CONFIG = ModelConfig("mlp", (3,), 1, hidden=4, depth=1, skip_inputs=True, head_prior=True)


def _batch(seed: int, tasks: int = 2, support: int = 6, query: int = 5) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, support + query, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x[..., 0]) + x[..., 1] * x[..., 2] + 0.1 * torch.randn(tasks, support + query, generator=g,
                                                                          dtype=torch.float64)
    return TaskBatch(x[:, :support], y[:, :support], x[:, support:], y[:, support:])


def _model_and_weights(seed: int = 0):
    """A double-precision r2d2 model whose prior head, penalties and feature scale are all away from their
    initial values, so every term of the solve is exercised."""
    torch.manual_seed(seed)
    model = build_model(CONFIG).double()
    weights = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        weights["feature_scale"].fill_(0.7)
        weights[PENALTY].fill_(-0.5)
        for name in ("head.weight", "head.bias", COLUMN_PENALTY):
            weights[name].copy_(0.5 * torch.randn(weights[name].shape, generator=g, dtype=torch.float64))
    return model, weights


def _reference_query_loss(weights: dict[str, torch.Tensor], batch: TaskBatch) -> torch.Tensor:
    """One task at a time: z = [s relu(x W^T + b), x, 1]; the head from the normal equations of ridge toward the
    prior head theta0 = [head weight, head bias] with column d's penalty exp(penalty + column penalty d):
    theta = theta0 + (Z^T Z + diag(penalties))^-1 Z^T (y - Z theta0); the mean query MSE over tasks."""
    losses = []
    prior = torch.cat([weights["head.weight"][0], weights["head.bias"]])
    penalty = torch.diag((weights[PENALTY] + weights[COLUMN_PENALTY]).exp())
    for t in range(batch.num_tasks):
        def design(x: torch.Tensor) -> torch.Tensor:
            hidden = torch.relu(x @ weights["body.0.weight"].T + weights["body.0.bias"])
            return torch.cat([weights["feature_scale"] * hidden, x, torch.ones(len(x), 1, dtype=x.dtype)], 1)

        z, y = design(batch.support_x[t]), batch.support_y[t]
        coef = prior + torch.linalg.solve(z.T @ z + penalty, z.T @ (y - z @ prior))
        losses.append(((design(batch.query_x[t]) @ coef - batch.query_y[t]) ** 2).mean())
    return torch.stack(losses).mean()


LEARNED = ("body.0.weight", "body.0.bias", "feature_scale", PENALTY, COLUMN_PENALTY, "head.weight", "head.bias")


def test_the_meta_gradient_matches_a_hand_written_closed_form_reference():
    model, weights = _model_and_weights()
    batch = _batch(0)
    losses = meta_step(model, weights, {}, batch, MetaConfig("r2d2", inner_steps=1))
    reference = {n: w.detach().clone().requires_grad_() for n, w in weights.items()}
    expected = _reference_query_loss(reference, batch)
    expected.backward()
    assert float(losses.query) == pytest.approx(float(expected), rel=1e-9)
    for name in LEARNED:
        torch.testing.assert_close(weights[name].grad, reference[name].grad, rtol=1e-7, atol=1e-10)


def test_the_meta_gradient_matches_finite_differences():
    model, weights = _model_and_weights(1)
    batch = _batch(1)

    def query_loss(*values: torch.Tensor) -> torch.Tensor:
        params = {**{n: w.detach() for n, w in weights.items()}, **dict(zip(LEARNED, values, strict=True))}
        adapted = solve_learned_head(model, params, batch, "regression")
        predictions = torch.func.functional_call(model, adapted, (batch.query_x,))
        return ((predictions[..., 0] - batch.query_y) ** 2).mean()

    assert torch.autograd.gradcheck(query_loss, tuple(weights[n].detach().clone().requires_grad_() for n in LEARNED))


def test_a_large_penalty_keeps_the_federations_head_and_a_vanishing_one_fits_the_rows():
    """The prior's two limits: a factory whose penalty is huge keeps the federation's head; one whose penalty
    vanishes gets least squares through its rows (more rows than columns), whatever the prior."""
    model, weights = _model_and_weights()
    weights = {n: w.detach() for n, w in weights.items()}
    batch = _batch(2, tasks=1, support=12)
    kept = solve_learned_head(model, {**weights, PENALTY: torch.full((1,), 40.0, dtype=torch.float64)}, batch,
                              "regression")
    torch.testing.assert_close(kept["head.weight"][0], weights["head.weight"], rtol=0, atol=1e-8)
    torch.testing.assert_close(kept["head.bias"][0], weights["head.bias"], rtol=0, atol=1e-8)
    fitted = solve_learned_head(model, {**weights, PENALTY: torch.full((1,), -40.0, dtype=torch.float64)}, batch,
                                "regression")
    z = torch.func.functional_call(model, weights, (batch.support_x,), {"head": False})[0]
    design = torch.cat([z, torch.ones(12, 1, dtype=z.dtype)], 1)
    line = torch.linalg.lstsq(design, batch.support_y[0]).solution
    torch.testing.assert_close(torch.cat([fitted["head.weight"][0, 0], fitted["head.bias"][0]]), line,
                               rtol=0, atol=1e-6)


def test_without_a_prior_the_head_is_solved_from_zero():
    """A model without ``head_prior`` (targets each factory standardises) ignores its own head: the solve equals
    that of the same model whose head is zero."""
    model, weights = _model_and_weights()
    weights = {n: w.detach() for n, w in weights.items()}
    plain = build_model(dataclasses.replace(CONFIG, head_prior=False)).double()
    batch = _batch(3)
    solved = solve_learned_head(plain, weights, batch, "regression")
    zero_head = {**weights, "head.weight": torch.zeros_like(weights["head.weight"]),
                 "head.bias": torch.zeros_like(weights["head.bias"])}
    expected = solve_learned_head(model, zero_head, batch, "regression")
    for name in ("head.weight", "head.bias"):
        torch.testing.assert_close(solved[name], expected[name])


@pytest.mark.parametrize(("family", "prior"), [("quality", False), ("fault", True)])
def test_r2d2_solves_toward_the_federations_head_only_where_the_factories_targets_share_units(family, prior):
    """Classes are shared; a quality target each plant standardises with its own rows has no shared level."""
    source = source_from_config({"family": family})
    assert model_config_for(source, "r2d2").head_prior is prior
    assert model_config_for(source, "maml") == source.model_config


def test_the_solve_parameters_step_faster_than_the_weights():
    """Adam's first step moves every parameter by its step size: the log penalties by SOLVE_LR_GAIN times the
    weights' (their useful values span orders of magnitude)."""
    model, weights = _model_and_weights()
    before = {n: w.detach().clone() for n, w in weights.items()}
    config = MetaConfig("r2d2", meta_batch_size=2, local_steps=1, outer_lr=1e-3)
    after = meta_train(model, weights, FixedSampler(_batch(0)), config, device="cpu").weights
    moved = {n: float((after[n] - before[n]).abs().max()) for n in before}
    assert moved[PENALTY] == pytest.approx(SOLVE_LR_GAIN * 1e-3, rel=1e-3)
    assert moved[COLUMN_PENALTY] == pytest.approx(SOLVE_LR_GAIN * 1e-3, rel=1e-3)
    assert moved["body.0.weight"] == pytest.approx(1e-3, rel=1e-3)


def test_a_non_finite_support_label_stops_naming_the_step_and_leaves_parameters_untouched():
    model, weights = _model_and_weights()
    batch = _batch(0)
    batch.support_y[1, 2] = float("inf")
    before = {n: w.detach().clone() for n, w in weights.items()}
    with pytest.raises(NonFiniteLossError, match=r"support loss became non-finite at meta-step 1, inner step 1"):
        meta_train(model, weights, FixedSampler(batch), MetaConfig("r2d2", meta_batch_size=2), device="cpu")
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor.detach(), before[name])


def test_a_classifier_head_is_ridge_onto_one_hot_targets_toward_its_prior_with_its_learned_logit_scale():
    """R2-D2's classifier: the logits are exp(log scale) times the ridge fit of the one-hot labels toward the
    prior head divided by that scale."""
    config = ModelConfig("mlp", (3,), 3, hidden=4, depth=1, skip_inputs=True, head_prior=True)
    torch.manual_seed(0)
    model = build_model(config).double()
    g = torch.Generator().manual_seed(5)
    weights = {n: 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in model.named_parameters()}
    weights[LOGIT_SCALE] = torch.full((1,), 0.7, dtype=torch.float64)
    x = torch.randn(1, 12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.arange(12).remainder(3)[None]
    batch = TaskBatch(x[:, :9], y[:, :9], x[:, 9:], y[:, 9:])
    adapted = solve_learned_head(model, weights, batch, "classification")
    logits = torch.func.functional_call(model, adapted, (batch.support_x,))[0]
    z = torch.func.functional_call(model, weights, (batch.support_x,), {"head": False})[0]
    design = torch.cat([z, torch.ones(9, 1, dtype=z.dtype)], 1)
    scale = torch.exp(torch.tensor(0.7, dtype=torch.float64))
    prior = torch.cat([weights["head.weight"], weights["head.bias"][:, None]], 1).T / scale
    penalty = torch.diag((weights[PENALTY] + weights[COLUMN_PENALTY]).exp())
    target = torch.nn.functional.one_hot(y[0, :9]).double()
    coef = prior + torch.linalg.solve(design.T @ design + penalty, design.T @ (target - design @ prior))
    torch.testing.assert_close(logits, scale * (design @ coef))


def test_a_two_class_head_is_logistic_regression_toward_its_prior():
    """A failure/no-failure head: at the solve, the gradient of the cross-entropy plus each column's penalty
    times its distance from the prior head vanishes (the optimality condition, checked by hand), and the
    meta-gradient through the Newton steps matches finite differences."""
    config = ModelConfig("mlp", (3,), 2, hidden=4, depth=1, skip_inputs=True, head_prior=True)
    torch.manual_seed(0)
    model = build_model(config).double()
    g = torch.Generator().manual_seed(6)
    weights = {n: 0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in model.named_parameters()}
    x = torch.randn(2, 14, 3, dtype=torch.float64, generator=g)
    y = (x[..., 0] + 0.5 * torch.randn(2, 14, generator=g, dtype=torch.float64) > 0).long()
    batch = TaskBatch(x[:, :10], y[:, :10], x[:, 10:], y[:, 10:])
    adapted = solve_learned_head(model, weights, batch, "classification")
    z = torch.func.functional_call(model, weights, (batch.support_x,), {"head": False})
    design = torch.cat([z, torch.ones(2, 10, 1, dtype=z.dtype)], -1)
    theta = torch.cat([adapted["head.weight"], adapted["head.bias"][..., None]], -1).mT
    prior = torch.cat([weights["head.weight"], weights["head.bias"][:, None]], 1).T
    penalties = (weights[PENALTY] + weights[COLUMN_PENALTY]).exp()
    residual = torch.softmax(design @ theta, -1) - torch.nn.functional.one_hot(batch.support_y, 2).double()
    gradient = design.mT @ residual + penalties[:, None] * (theta - prior)
    torch.testing.assert_close(gradient, torch.zeros_like(gradient), rtol=0, atol=1e-8)
    names = ("body.0.weight", PENALTY, COLUMN_PENALTY, "head.weight", "head.bias")

    def query_loss(*values: torch.Tensor) -> torch.Tensor:
        params = {**weights, **dict(zip(names, values, strict=True))}
        logits = torch.func.functional_call(model, solve_learned_head(model, params, batch, "classification"),
                                            (batch.query_x,))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())

    assert torch.autograd.gradcheck(query_loss, tuple(weights[n].clone().requires_grad_() for n in names))


def test_at_feature_scale_zero_the_head_is_least_squares_on_the_rows():
    """A plant linear in its inputs: with the learned features weighted zero, the solved head is the ridge line
    through the support rows, which at a tiny penalty is least squares (numpy's)."""
    model, weights = _model_and_weights()
    weights = {n: w.detach() for n, w in weights.items()}
    weights["feature_scale"] = torch.zeros(1, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 20, 3, generator=g, dtype=torch.float64)
    y = x[..., 0] * 2 - x[..., 2] + 5 + 0.01 * torch.randn(1, 20, generator=g, dtype=torch.float64)
    batch = TaskBatch(x[:, :12], y[:, :12], x[:, 12:], y[:, 12:])
    adapted = solve_head(model, weights, batch, "regression", torch.tensor(1e-10, dtype=torch.float64))
    predicted = torch.func.functional_call(model, adapted, (batch.query_x,))[0, :, 0]
    design = torch.cat([x[0, :12], torch.ones(12, 1, dtype=x.dtype)], 1)
    line = torch.linalg.lstsq(design, y[0, :12]).solution
    expected = torch.cat([x[0, 12:], torch.ones(8, 1, dtype=x.dtype)], 1) @ line
    torch.testing.assert_close(predicted, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_r2d2_meta_training_beats_first_order_maml_on_a_nonlinear_family(seed):
    """Held-out plants of a nonlinear quality family, 10 labelled rows each: the meta-learned closed-form head
    errs less than first-order MAML trained as long (measured MSE ratios 0.67, 0.52 and 0.47 at seeds 0-2)."""
    family = make_family(FamilyConfig("quality", num_factories=10, num_held_out=2, seed=3 + seed, min_nonlinearity=1.0,
                                      min_samples=120, max_samples=300))
    errors = {}
    for algorithm in ("r2d2", "fomaml"):
        torch.manual_seed(seed)
        model = build_model(algorithm_model_config(family.model_config, algorithm))
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        sampler = RegressionTaskSampler(list(family.train), 10, 10, seed=seed, standardize_targets=True)
        config = MetaConfig(algorithm, inner_steps=5, inner_lr=0.05, outer_lr=3e-3, meta_batch_size=8,
                            local_steps=300)
        trained = meta_train(model, weights, sampler, config, device="cpu")
        held_out = RegressionTaskSampler(list(family.held_out), 10, 50, seed=100, standardize_targets=True).sample(50)
        adaptation = Adaptation(model, "regression", trained.weights, 0.05, model.forward_parameter_names(),
                                closed_form=algorithm == "r2d2")
        errors[algorithm] = adaptation.score(held_out, 10)["query_loss"]
    assert errors["r2d2"] < 0.85 * errors["fomaml"], errors
