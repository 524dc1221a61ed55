"""The simulations here join the session's Ray (`tests.conftest.shared_ray`) instead of each starting one."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _joins_the_sessions_ray(shared_ray: str) -> None:
    """Requested by every module here, so the head is up before any of their own fixtures run a simulation."""
