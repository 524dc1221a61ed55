"""The factories' public keys are registered with a real SuperLink from one process, and again at a restart
(its database holds them) without an error; a key the SuperLink refuses is named."""

from __future__ import annotations

import re

import pytest

from fedmeta.common import free_port
from fedmeta.server import DeploymentError, create_factory_keys, plan_server
from fedmeta.server.deployment import _prepare

FACTORIES = ["plant-a", "plant-b", "plant-c"]


@pytest.fixture()
def plan(pki, tmp_path):
    for name in FACTORIES[1:]:
        create_factory_keys(pki, name)
    return plan_server(state=tmp_path / "state", certs=pki, factory_keys=pki, host="127.0.0.1", port=free_port(),
                       run_config={})


def test_every_key_is_registered_once_and_a_restart_finds_them_registered(plan):
    first, again = [], []
    _prepare(plan, first.append)
    assert [re.sub(r"\(node \d+\)", "(node N)", line) for line in first] == [
        f"registered factory {name} (node N)" for name in FACTORIES]
    assert len({re.search(r"node (\d+)", line).group(1) for line in first}) == len(FACTORIES)
    _prepare(plan, again.append)
    assert again == [f"factory {name} was registered before" for name in FACTORIES]


def test_a_key_the_superlink_refuses_is_named_and_stops_the_start(plan, pki):
    (pki / "plant-b.pub").write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== not-a-curve-key\n")
    with pytest.raises(DeploymentError, match=r"cannot register factory key .*plant-b\.pub"):
        _prepare(plan, lambda line: None)
