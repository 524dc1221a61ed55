"""The fuzz tests' tensors are tiny: torch runs them on one thread, since waking a second costs more than each
example's arithmetic (a millisecond a call on a busy 2-core machine, against microseconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
