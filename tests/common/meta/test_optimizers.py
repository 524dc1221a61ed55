"""`common.meta.optimizers` steps exactly as torch.optim does on the CPU: the same parameters and the same state,
bit for bit, over groups at different rates, parameters without a gradient in some steps, and a state restored
mid-run. And a process that trains never imports ``torch._dynamo`` (what torch.optim's first step costs)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fedmeta.common.meta.optimizers import STATE_KEYS, GroupedOptimizer

STEPS = 6


def _torch_optimizer(kind: str, groups: list[dict]) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(groups, betas=(0.8, 0.99))
    return torch.optim.SGD(groups, momentum=0.7 if kind == "momentum" else 0.0)


def _ours(kind: str, groups: list[tuple[list[torch.Tensor], float]]) -> GroupedOptimizer:
    return GroupedOptimizer(kind, groups, momentum=0.7, betas=(0.8, 0.99))


def _parameters(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, requires_grad=True) for shape in ((4, 3), (3,), (2, 2))]


def _gradients(step: int, count: int) -> list[torch.Tensor | None]:
    """Gradients of step ``step``: the last parameter has none on even steps (torch.optim skips it and its state)."""
    generator = torch.Generator().manual_seed(100 + step)
    shapes = ((4, 3), (3,), (2, 2))[:count]
    grads = [torch.randn(shape, generator=generator) * 10.0 ** (index - 1) for index, shape in enumerate(shapes)]
    return [None if index == count - 1 and step % 2 == 0 else grad for index, grad in enumerate(grads)]


def _run(step, params: list[torch.Tensor], steps: range) -> None:
    for index in steps:
        for param, grad in zip(params, _gradients(index, len(params)), strict=True):
            param.grad = None if grad is None else grad.clone()
        step()


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_each_kind_steps_as_torch_optim_over_two_groups_at_their_rates(kind):
    theirs, ours = _parameters(0), _parameters(0)
    reference = _torch_optimizer(kind, [{"params": theirs[:2], "lr": 0.05}, {"params": theirs[2:], "lr": 0.5}])
    optimizer = _ours(kind, [(ours[:2], 0.05), (ours[2:], 0.5)])
    _run(reference.step, theirs, range(1, STEPS + 1))
    _run(optimizer.step, ours, range(1, STEPS + 1))
    for mine, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, expected, rtol=0, atol=0)
    expected_state = reference.state_dict()["state"]
    assert set(optimizer.state) == set(expected_state) and all(
        set(entry) == STATE_KEYS[kind] for entry in optimizer.state.values())
    for position, entry in optimizer.state.items():
        for key, value in entry.items():
            torch.testing.assert_close(value, expected_state[position][key], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_a_state_restored_mid_run_goes_on_as_an_uninterrupted_torch_optimizer(kind):
    theirs, ours = _parameters(1), _parameters(1)
    reference = _torch_optimizer(kind, [{"params": theirs, "lr": 0.1}])
    _run(reference.step, theirs, range(1, STEPS + 1))
    first = _ours(kind, [(ours, 0.1)])
    _run(first.step, ours, range(1, STEPS // 2 + 1))
    resumed = _ours(kind, [(ours, 0.1)])
    resumed.load_state({position: {key: value.clone() for key, value in entry.items()}
                        for position, entry in first.state.items()})
    _run(resumed.step, ours, range(STEPS // 2 + 1, STEPS + 1))
    for mine, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, expected, rtol=0, atol=0)


def test_zero_grad_clears_every_gradient_and_an_unknown_kind_is_refused():
    params = _parameters(2)
    optimizer = _ours("adam", [(params, 0.1)])
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.zero_grad()
    assert all(param.grad is None for param in params)
    with pytest.raises(ValueError, match="'rmsprop'"):
        GroupedOptimizer("rmsprop", [(params, 0.1)])


_TRAINING_PROCESS = """
import sys, tempfile
from fedmeta.simulations.benchmarks.scaling import PlainLoop, bench_config
with tempfile.TemporaryDirectory() as run_dir:
    loop = PlainLoop(bench_config(4, 2, run_dir, 2))  # factories' meta-steps and the server's outer step
    loop.run_round()
    loop.run_round()
print("torch._dynamo" in sys.modules)
"""


def test_a_federated_round_never_imports_torch_dynamo():
    done = subprocess.run([sys.executable, "-c", _TRAINING_PROCESS], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
