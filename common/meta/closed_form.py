"""Closed-form linear heads fitted on each task's support rows, batched over a leading task dimension ``T``.

Ridge regression is solved exactly, so a meta-learner can backpropagate through the solve (R2-D2,
Bertinetto et al., ICLR 2019; MetaOptNet, Lee et al., CVPR 2019); multinomial logistic regression takes a
few Newton steps, which are differentiable too. Both serve as the factory's "fit on its K rows" baselines.
Every solve runs in float64 (the Gram matrices of few, correlated rows are ill-conditioned) and the heads
come back in the inputs' dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "INTERCEPT_RIDGE", "RIDGE_PENALTIES", "LinearHead", "logistic_fit", "logistic_fit_toward", "ridge_fit",
    "ridge_fit_loo", "ridge_loo_errors",
]

# Log-spaced down to 1e-4, so a nearly noiseless linear plant is fitted close to least squares.
RIDGE_PENALTIES = tuple(10.0**k for k in range(-4, 4))
# A common shift of all intercepts leaves the softmax unchanged: this tiny ridge makes the Newton system
# invertible, keeps a class absent from the support at a finite logit, and moves any other fit negligibly.
INTERCEPT_RIDGE = 1e-6
# 1 - H_ii below this means leaving row i out leaves nothing to predict it from (an interpolating fit):
# its leave-one-out error is undefined, so that penalty scores infinity and is never chosen.
_MIN_LEAVE_OUT = 1e-9
_HALVINGS = 12  # step sizes 1, 1/2, ..., 1/2**11 tried by the Newton line search
_F64 = torch.float64


@dataclass(frozen=True, eq=False)
class LinearHead:
    """coef ``[T, D, C]`` and intercept ``[T, C]``: predictions ``z @ coef + intercept``."""

    coef: Tensor
    intercept: Tensor

    def predict(self, z: Tensor) -> Tensor:
        """``z [T, N, D]`` to ``[T, N, C]``."""
        return z @ self.coef + self.intercept.unsqueeze(-2)


def _check(z: Tensor, y: Tensor) -> None:
    if z.dim() != 3:
        raise ValueError(f"z must be [T, S, D]; got shape {tuple(z.shape)}")
    if y.dim() not in (2, 3) or y.shape[:2] != z.shape[:2]:
        raise ValueError(f"y must be [T, S] or [T, S, C] with z's T, S = {tuple(z.shape[:2])}; got {tuple(y.shape)}")
    for name, value in (("z", z), ("y", y)):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} has non-finite values")


def _penalty(penalty: Tensor | float, tasks: int, like: Tensor, positive: bool = False) -> Tensor:
    """The penalty as ``[T]`` in ``like``'s dtype (still differentiable where it is a tensor)."""
    lam = penalty.to(like) if isinstance(penalty, Tensor) else torch.tensor(float(penalty)).to(like)
    if lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] != tasks):
        raise ValueError(f"penalty must be a number or [T] with T = {tasks}; got shape {tuple(lam.shape)}")
    if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()) or (positive and bool((lam == 0).any())):
        raise ValueError(f"penalty must be finite and {'> 0' if positive else '>= 0'}; got {lam.detach().tolist()}")
    return lam.expand(tasks)


def _centred(z: Tensor, y: Tensor, centre: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """float64 ``z``, ``y`` less their support means, and the means: the intercept then needs no penalty
    (without ``centre``, means of zero: no intercept)."""
    z = z.to(_F64)
    y = (y.unsqueeze(-1) if y.dim() == 2 else y).to(_F64)
    if not centre:
        return z, y, torch.zeros_like(z[:, :1]), torch.zeros_like(y[:, :1])
    zbar, ybar = z.mean(1, keepdim=True), y.mean(1, keepdim=True)
    return z - zbar, y - ybar, zbar, ybar


def ridge_fit(z: Tensor, y: Tensor, penalty: Tensor | float, intercept: bool = True) -> LinearHead:
    """Ridge regression per task, ``min ||y - z coef - intercept||^2 + penalty ||coef||^2``, intercept unpenalised
    (without ``intercept``, none: a column of ones in ``z`` then gives a penalised one).

    ``z [T, S, D]``, ``y [T, S]`` (one output, C = 1) or ``[T, S, C]``, ``penalty`` a number or ``[T]``. With
    S > D it solves the D x D primal system, otherwise the S x S dual (Woodbury) one, so the cost follows the
    number of support rows (R2-D2's trick). Penalty 0 is least squares, the minimum-norm solution where that
    is not unique (through the pseudo-inverse). Differentiable with respect to ``z``, ``y`` and ``penalty``.
    """
    _check(z, y)
    zc, yc, zbar, ybar = _centred(z, y, intercept)
    tasks, rows, dims = zc.shape
    lam = _penalty(penalty, tasks, zc).view(-1, 1, 1)
    zero = lam == 0
    safe = torch.where(zero, torch.ones_like(lam), lam)  # a zero would make the system singular (and NaN gradients)
    if rows > dims:
        eye = torch.eye(dims, dtype=_F64, device=zc.device)
        coef = torch.linalg.solve(zc.mT @ zc + safe * eye, zc.mT @ yc)
    else:
        eye = torch.eye(rows, dtype=_F64, device=zc.device)
        coef = zc.mT @ torch.linalg.solve(zc @ zc.mT + safe * eye, yc)
    if bool(zero.any()):
        coef = torch.where(zero, torch.linalg.pinv(zc) @ yc, coef)
    intercept = (ybar - zbar @ coef).squeeze(1)
    return LinearHead(coef.to(z.dtype), intercept.to(z.dtype))


def _grid(penalties: Sequence[float], like: Tensor) -> Tensor:
    grid = torch.tensor([float(p) for p in penalties], dtype=_F64, device=like.device)
    if grid.numel() == 0 or not bool(torch.isfinite(grid).all()) or bool((grid < 0).any()):
        raise ValueError(f"penalties must be a non-empty sequence of finite numbers >= 0; got {list(penalties)}")
    return grid


def ridge_loo_errors(z: Tensor, y: Tensor, penalties: Sequence[float]) -> Tensor:
    """``[T, P]`` leave-one-out mean squared error of `ridge_fit` at each penalty, in closed form (no refits).

    PRESS: row i's left-out residual is ``e_i / (1 - H_ii)`` with the hat matrix ``H = 11^T / S + Zc (Zc^T Zc +
    penalty I)^-1 Zc^T`` of the centred problem plus the intercept; one SVD of ``Zc`` serves every penalty.
    A model-selection score: computed on detached inputs.
    """
    _check(z, y)
    if z.shape[1] < 2:
        raise ValueError(f"leave-one-out needs at least 2 support rows; got {z.shape[1]}")
    zc, yc, _, _ = _centred(z.detach(), y.detach())
    grid = _grid(penalties, zc)
    u, sv, _ = torch.linalg.svd(zc, full_matrices=False)  # u [T, S, r], sv [T, r]
    # Directions under pinv's cut-off (the one centring removes when S <= D) count as exactly zero.
    kept = sv > sv[:, :1] * max(zc.shape[1:]) * torch.finfo(_F64).eps
    s2 = sv.square()[:, None]
    gain = torch.where(kept[:, None], s2 / (s2 + grid[None, :, None]), 0.0)  # [T, P, r]
    fitted = torch.einsum("tsr,tpr,trc->tpsc", u, gain, u.mT @ yc)
    room = 1 - (1 / zc.shape[1] + torch.einsum("tsr,tpr->tps", u.square(), gain))  # 1 - H_ii, [T, P, S]
    loo = (yc[:, None] - fitted) / room.clamp_min(_MIN_LEAVE_OUT)[..., None]
    errors = loo.square().mean((-2, -1))
    return torch.where((room < _MIN_LEAVE_OUT).any(-1), torch.inf, errors).to(z.dtype)


def ridge_fit_loo(
    z: Tensor, y: Tensor, penalties: Sequence[float] = RIDGE_PENALTIES
) -> tuple[LinearHead, Tensor]:
    """Each task's `ridge_fit` at the penalty with the smallest leave-one-out error (ties: the first listed).

    Returns the head and the chosen penalty of each task (``[T]``, float64: the grid's exact values).
    """
    grid = _grid(penalties, z)
    chosen = grid[ridge_loo_errors(z, y, penalties).argmin(-1)]
    return ridge_fit(z, y, chosen), chosen


def _step_size(objective: Callable[[Tensor], Tensor], theta: Tensor, grad: Tensor, step: Tensor) -> Tensor:
    """Per task, the largest of 1, 1/2, 1/4, ... meeting Armijo's condition (0 if none): never an ascent."""
    with torch.no_grad():
        sizes = 0.5 ** torch.arange(_HALVINGS, dtype=_F64, device=theta.device)
        tried = objective(theta + sizes.view(-1, 1, 1, 1) * step)  # [halvings, T]
        now = objective(theta)
        slack = 1e-12 * (1 + now.abs())  # rounding: near the optimum the decrease is below float64's resolution
        good = tried <= now + 1e-4 * sizes[:, None] * (grad * step).sum((-2, -1)) + slack
        return torch.where(good.any(0), sizes[good.to(torch.int8).argmax(0)], 0.0)


def logistic_fit(z: Tensor, y: Tensor, num_classes: int, penalty: Tensor | float, steps: int = 10) -> LinearHead:
    """Multinomial logistic regression per task by ``steps`` Newton steps from zero, differentiable through them.

    Minimises ``sum_i cross_entropy_i + penalty / 2 ||coef||^2 + INTERCEPT_RIDGE / 2 ||intercept||^2`` (that is
    scikit-learn's ``LogisticRegression(C=1 / penalty)``, up to the tiny intercept ridge), all C columns
    parameterised: the penalty makes them identifiable. ``y [T, S]`` int64 class ids; ``penalty`` > 0 (without
    it separable data has no finite fit), a number or ``[T]``. `logistic_fit_toward` a zero prior.
    """
    _check(z, y)
    design = torch.cat([z, z.new_ones(*z.shape[:2], 1)], -1)  # [T, S, J]: the intercept's column
    tasks, _, width = design.shape
    lam = _penalty(penalty, tasks, design.new_empty(0, dtype=_F64), positive=True)  # exact in float64
    penalties = torch.cat([lam[:, None].expand(tasks, width - 1), lam.new_full((tasks, 1), INTERCEPT_RIDGE)], -1)
    theta = logistic_fit_toward(design, y, num_classes, penalties, design.new_zeros(width, num_classes), steps)
    return LinearHead(theta[:, :-1], theta[:, -1])


def logistic_fit_toward(design: Tensor, y: Tensor, num_classes: int, penalties: Tensor, prior: Tensor,
                        steps: int = 10) -> Tensor:
    """Multinomial logistic regression per task toward ``prior``, by ``steps`` Newton steps from it.

    Minimises ``sum_i cross_entropy_i + 1/2 sum_jc penalties_j (theta_jc - prior_jc)^2`` over ``theta [T, J, C]``
    (``logits = design @ theta``; ``design [T, S, J]`` holds its own intercept column), ``penalties`` ``[J]`` or
    ``[T, J]`` > 0, ``prior`` ``[J, C]`` or ``[T, J, C]``; differentiable in all of them. Each step solves the
    full ``J C`` Hessian system and backtracks until the objective falls, so separable data never makes it
    diverge. Returns theta in ``design``'s dtype.
    """
    _check(design, y)
    if y.dim() != 2 or y.dtype != torch.int64:
        raise ValueError(f"y must be [T, S] int64 class ids; got {tuple(y.shape)} {y.dtype}")
    if num_classes < 2 or bool(((y < 0) | (y >= num_classes)).any()):
        raise ValueError(f"y must hold class ids in [0, {num_classes}) with num_classes >= 2")
    x = design.to(_F64)
    tasks, _, width = x.shape
    ridge = penalties.to(_F64).expand(tasks, width)[..., None].expand(tasks, width, num_classes)
    prior = prior.to(_F64).expand(tasks, width, num_classes)
    target = F.one_hot(y, num_classes).to(_F64)

    def objective(theta: Tensor) -> Tensor:  # [..., T, J, C] -> [..., T]
        logits = x @ theta
        loss = (torch.logsumexp(logits, -1) - (logits * target).sum(-1)).sum(-1)
        return loss + 0.5 * (ridge * (theta - prior).square()).sum((-2, -1))

    size = width * num_classes
    theta = prior
    for _ in range(steps):
        p = torch.softmax(x @ theta, -1)
        grad = x.mT @ (p - target) + ridge * (theta - prior)
        curvature = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]  # [T, S, C, C]
        hessian = torch.einsum("tsj,tsk,tscd->tjckd", x, x, curvature).reshape(tasks, size, size)
        hessian = hessian + torch.diag_embed(ridge.reshape(tasks, size))
        step = -torch.linalg.solve(hessian, grad.reshape(tasks, size, 1)).view(tasks, width, num_classes)
        theta = theta + _step_size(objective, theta, grad, step).view(-1, 1, 1) * step
        # Exact steps keep each row's sum over classes at the prior's (the optimum does); re-centring stops
        # rounding from drifting along the logits' common shift, which only the ridge pins (tiny for an intercept
        # of `logistic_fit`: a 1e6-fold gain).
        theta = theta - theta.mean(-1, keepdim=True) + prior.mean(-1, keepdim=True)
    return theta.to(design.dtype)
