"""The closed-form heads against numpy's and scipy's references, brute-force leave-one-out refits and finite
differences, in float64 on tiny problems."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from fedmeta.common.meta.closed_form import (
    INTERCEPT_RIDGE,
    RIDGE_PENALTIES,
    logistic_fit,
    ridge_fit,
    ridge_fit_loo,
    ridge_loo_errors,
)

PRIMAL_AND_DUAL = pytest.mark.parametrize("rows, dims", [(12, 4), (4, 9)], ids=["primal-S>D", "dual-S<D"])


def _data(tasks: int, rows: int, dims: int, outputs: int | None = None, seed: int = 0):
    """Random ``z [T, S, D]`` and ``y [T, S]`` (or ``[T, S, outputs]``) in float64."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(tasks, rows, dims, generator=generator, dtype=torch.float64)
    shape = (tasks, rows) if outputs is None else (tasks, rows, outputs)
    return z, torch.randn(*shape, generator=generator, dtype=torch.float64)


def _augmented_ridge(z: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """One task's ridge by numpy: the normal equations of ``[1, z]`` with the intercept unpenalised."""
    x = np.hstack([np.ones((len(z), 1)), z])
    theta = np.linalg.solve(x.T @ x + penalty * np.diag([0.0] + [1.0] * z.shape[1]), x.T @ y)
    return theta[1:], theta[0]


@PRIMAL_AND_DUAL
@pytest.mark.parametrize("outputs", [None, 2], ids=["y-2d", "y-3d"])
def test_ridge_matches_numpys_normal_equations_with_an_unpenalised_intercept(rows, dims, outputs):
    z, y = _data(3, rows, dims, outputs)
    penalties = torch.tensor([0.01, 1.0, 30.0], dtype=torch.float64)
    head = ridge_fit(z, y, penalties)
    assert head.coef.shape == (3, dims, outputs or 1) and head.intercept.shape == (3, outputs or 1)
    for task in range(3):
        target = y[task].numpy().reshape(rows, -1)
        coef, intercept = _augmented_ridge(z[task].numpy(), target, float(penalties[task]))
        np.testing.assert_allclose(head.coef[task].numpy(), coef, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(head.intercept[task].numpy(), intercept, rtol=1e-9, atol=1e-10)


def test_zero_penalty_with_fewer_rows_than_features_is_the_minimum_norm_least_squares_fit():
    z, y = _data(2, 4, 7)
    head = ridge_fit(z, y, 0.0)
    for task in range(2):
        zbar, ybar = z[task].mean(0).numpy(), y[task].mean().item()
        coef = np.linalg.lstsq(z[task].numpy() - zbar, y[task].numpy() - ybar, rcond=None)[0]
        np.testing.assert_allclose(head.coef[task, :, 0].numpy(), coef, atol=1e-6)
        np.testing.assert_allclose(head.intercept[task, 0].item(), ybar - zbar @ coef, atol=1e-6)
    torch.testing.assert_close(head.predict(z)[..., 0], y)  # it interpolates the support rows
    mixed = ridge_fit(z, y, torch.tensor([0.0, 2.0], dtype=torch.float64))  # a zero penalty beside a positive one
    torch.testing.assert_close(mixed.coef[0], head.coef[0])
    torch.testing.assert_close(mixed.coef[1], ridge_fit(z[1:], y[1:], 2.0).coef[0])


def test_noiseless_linear_data_with_a_tiny_penalty_recovers_the_true_coefficients_and_intercept():
    z, _ = _data(2, 10, 4)
    true_coef = torch.tensor([[1.5, -2.0, 0.3, 4.0], [0.0, 1.0, -1.0, 0.5]], dtype=torch.float64)
    true_intercept = torch.tensor([0.7, -3.0], dtype=torch.float64)
    head = ridge_fit(z, torch.einsum("tsd,td->ts", z, true_coef) + true_intercept[:, None], 1e-8)
    torch.testing.assert_close(head.coef[..., 0], true_coef, rtol=0, atol=1e-6)
    torch.testing.assert_close(head.intercept[:, 0], true_intercept, rtol=0, atol=1e-6)


@PRIMAL_AND_DUAL
def test_the_query_predictions_gradient_wrt_z_y_and_penalty_matches_finite_differences(rows, dims):
    z, y = _data(2, rows, dims, seed=1)
    query, _ = _data(2, 3, dims, seed=2)
    penalty = torch.tensor([0.5, 2.0], dtype=torch.float64)
    inputs = tuple(t.clone().requires_grad_() for t in (z, y, penalty))
    assert torch.autograd.gradcheck(lambda z, y, penalty: ridge_fit(z, y, penalty).predict(query), inputs)


def test_closed_form_leave_one_out_errors_equal_brute_force_refits():
    z, y = _data(2, 9, 3, outputs=2, seed=3)
    penalties = (0.0, 1e-3, 0.1, 10.0)
    expected = torch.zeros(2, len(penalties), dtype=torch.float64)
    for task in range(2):
        for index, penalty in enumerate(penalties):
            for row in range(9):
                kept = torch.arange(9) != row
                head = ridge_fit(z[task : task + 1, kept], y[task : task + 1, kept], penalty)
                left_out = head.predict(z[task : task + 1, row : row + 1]) - y[task, row]
                expected[task, index] += left_out.square().mean() / 9
    torch.testing.assert_close(ridge_loo_errors(z, y, penalties), expected, rtol=1e-6, atol=0)


def test_a_penalty_at_which_the_fit_interpolates_scores_infinity_and_is_not_chosen():
    z, y = _data(1, 4, 6)
    errors = ridge_loo_errors(z, y, (0.0, 1.0))
    assert errors[0, 0] == torch.inf and torch.isfinite(errors[0, 1])
    assert ridge_fit_loo(z, y, (0.0, 1.0))[1].tolist() == [1.0]


def test_leave_one_out_picks_a_large_penalty_for_noise_and_a_small_one_for_a_noiseless_linear_target():
    z, noise = _data(2, 40, 10, seed=4)  # at S = 40, D = 10 every one of 200 seeds picks >= 10 for the noise
    linear = z[1] @ torch.linspace(-2, 2, 10, dtype=torch.float64) + 0.5
    head, chosen = ridge_fit_loo(z, torch.stack([noise[0], linear]))
    assert chosen[0] >= 10.0 and chosen[1] == min(RIDGE_PENALTIES), chosen
    torch.testing.assert_close(head.coef[0], ridge_fit(z[:1], noise[:1], chosen[0]).coef[0])


def _logistic_reference(z: np.ndarray, y: np.ndarray, classes: int, penalty: float) -> np.ndarray:
    """One task's penalised multinomial objective minimised by L-BFGS-B: ``theta [D + 1, C]``, intercept last."""
    x = np.hstack([z, np.ones((len(z), 1))])
    target = np.eye(classes)[y]
    ridge = np.array([penalty] * z.shape[1] + [INTERCEPT_RIDGE])[:, None]

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        theta = flat.reshape(x.shape[1], classes)
        logits = x @ theta
        top = logits.max(1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(1))
        value = (log_norm - (logits * target).sum(1)).sum() + 0.5 * (ridge * theta**2).sum()
        p = np.exp(logits - log_norm[:, None])
        return value, (x.T @ (p - target) + ridge * theta).ravel()

    found = minimize(objective, np.zeros(x.shape[1] * classes), jac=True, method="L-BFGS-B",
                     options={"gtol": 1e-12, "ftol": 1e-16, "maxiter": 10_000})
    return found.x.reshape(x.shape[1], classes)


def test_logistic_fit_matches_scipys_minimiser_of_the_same_penalised_objective():
    z, _ = _data(2, 15, 3, seed=5)
    y = torch.randint(0, 3, (2, 15), generator=torch.Generator().manual_seed(6))
    penalties = [0.3, 2.0]
    head = logistic_fit(z, y, 3, torch.tensor(penalties, dtype=torch.float64), steps=25)
    for task in range(2):
        theta = _logistic_reference(z[task].numpy(), y[task].numpy(), 3, penalties[task])
        np.testing.assert_allclose(head.coef[task].numpy(), theta[:-1], atol=1e-5)
        np.testing.assert_allclose(head.intercept[task].numpy(), theta[-1], atol=1e-5)


def _separable(tasks: int = 2, rows: int = 12, classes: int = 3):
    """Classes ``k`` around centres ``4 e_k``: far apart, so separable."""
    generator = torch.Generator().manual_seed(7)
    y = torch.arange(rows).remainder(classes).expand(tasks, rows)
    z = 4.0 * torch.eye(classes, dtype=torch.float64)[y] + 0.3 * torch.randn(tasks, rows, classes, generator=generator,
                                                                              dtype=torch.float64)
    return z, y.contiguous()


@pytest.mark.parametrize("penalty", [1.0, 1e-6], ids=["penalty-1", "small-penalty-1e-6"])
def test_logistic_fit_predicts_a_separable_problems_labels_and_stays_finite_with_a_small_penalty(penalty):
    z, y = _separable()
    head = logistic_fit(z, y, 3, penalty, steps=25)
    assert torch.isfinite(head.coef).all() and torch.isfinite(head.intercept).all()
    assert torch.equal(head.predict(z).argmax(-1), y)


def test_a_class_absent_from_the_support_keeps_finite_logits():
    z, y = _separable()
    head = logistic_fit(z, y.clamp_max(1), 3, 0.1, steps=25)  # class 2 never seen
    assert torch.isfinite(head.predict(z)).all() and (head.predict(z).argmax(-1) < 2).all()


def test_the_gradient_flows_through_the_newton_steps():
    z, y = _data(2, 10, 3, seed=8)
    labels = (y > 0).long()
    query, _ = _data(2, 4, 3, seed=9)
    z.requires_grad_()
    loss = torch.nn.functional.cross_entropy(logistic_fit(z, labels, 2, 0.5).predict(query).flatten(0, 1),
                                             labels[:, :4].flatten())
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    small = z.detach()[:, :6].clone().requires_grad_()  # and it matches finite differences through 3 steps
    assert torch.autograd.gradcheck(lambda z: logistic_fit(z, labels[:, :6], 2, 0.5, steps=3).predict(query), small)


def _ridge(z, y, penalty):
    return ridge_fit(z, y, penalty)


def _logistic(z, y, penalty):
    return logistic_fit(z, (y > 0).long() if y.is_floating_point() else y, 2, penalty)


@pytest.mark.parametrize("fit", [_ridge, _logistic], ids=["ridge", "logistic"])
def test_bad_inputs_raise_a_value_error_naming_the_problem(fit):
    z, y = _data(2, 5, 3)
    with pytest.raises(ValueError, match=r"y must be .* got \(2, 4\)"):
        fit(z, y[:, :4], 1.0)
    with pytest.raises(ValueError, match="penalty must be finite and"):
        fit(z, y, -1.0)
    with pytest.raises(ValueError, match=r"penalty must be a number or \[T\]"):
        fit(z, y, torch.ones(3))
    with pytest.raises(ValueError, match="z has non-finite values"):
        fit(torch.where(torch.arange(3) == 2, torch.nan, z), y, 1.0)


def test_bad_inputs_specific_to_each_fit_raise_a_value_error():
    z, y = _data(2, 5, 3)
    with pytest.raises(ValueError, match="> 0"):
        logistic_fit(z, (y > 0).long(), 2, 0.0)
    with pytest.raises(ValueError, match="class ids in"):
        logistic_fit(z, torch.full((2, 5), 2), 2, 1.0)
    with pytest.raises(ValueError, match="int64 class ids"):
        logistic_fit(z, y, 2, 1.0)
    with pytest.raises(ValueError, match="penalties must be"):
        ridge_loo_errors(z, y, (1.0, -1.0))
    with pytest.raises(ValueError, match="at least 2 support rows"):
        ridge_loo_errors(z[:, :1], y[:, :1], (1.0,))
