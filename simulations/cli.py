"""The ``fedmeta`` command: each component owns its commands, this only registers them.

As ``flwr/cli/app.py`` does: the server package's ``server`` and ``certs``, the client
package's ``client``, ``validate-data`` and the factory floor's ``adapt``, ``predict``, ``update``,
``optimize`` and ``export``, the simulations package's ``simulate``, ``example-plants``,
``benchmark``, ``tune`` and the ``bench`` group.

A command's module is imported only when that command runs (or ``fedmeta --help`` lists them
all): most of them import torch and Flower, several seconds per process, which ``fedmeta certs``
and every deployment process would otherwise wait for.
"""

from __future__ import annotations

import importlib

import click
import typer
from typer.core import TyperGroup

__all__ = ["app"]

# Each command: the module that defines it, and the function (or Typer group) there.
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("fedmeta.simulations.simulate_cli", "simulate"),
    "example-plants": ("fedmeta.simulations.example_plants", "example_plants"),
    "benchmark": ("fedmeta.simulations.bench_cli", "benchmark"),
    "tune": ("fedmeta.simulations.bench_cli", "tune"),
    "bench": ("fedmeta.simulations.bench_cli", "bench_app"),
    "validate-data": ("fedmeta.client.cli", "validate_data"),
    "client": ("fedmeta.client.cli", "client"),
    "adapt": ("fedmeta.client.floor.cli", "adapt"),
    "predict": ("fedmeta.client.floor.cli", "predict"),
    "update": ("fedmeta.client.floor.cli", "update"),
    "optimize": ("fedmeta.client.floor.cli", "optimize"),
    "export": ("fedmeta.client.floor.cli", "export"),
    "certs": ("fedmeta.server.cli", "certs"),
    "server": ("fedmeta.server.cli", "server"),
    "status": ("fedmeta.server.cli", "status"),
}


def _command(name: str) -> click.Command:
    """The click command Typer builds for ``name``, its module imported now."""
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    if not isinstance(target, typer.Typer):
        target, function = typer.Typer(add_completion=False), target
        target.command(name)(function)
    command = typer.main.get_command(target)
    command.name = name
    return command


class _CommandsOnDemand(TyperGroup):
    """Typer's group (its rich help), with each command loaded when it is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _command(cmd_name) if cmd_name in COMMANDS else None


app = typer.Typer(cls=_CommandsOnDemand, no_args_is_help=True)


@app.callback()
def main() -> None:
    """FedMeta Factory: federated meta-learning for manufacturing."""
