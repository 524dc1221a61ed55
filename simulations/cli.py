"""The ``fedmeta`` command: each component owns its commands, this only registers them.

As ``flwr/cli/app.py`` does: the server package's ``server`` and ``certs``, the client
package's ``client``, ``validate-data`` and the factory floor's ``adapt``, ``predict``, ``update``,
``optimize`` and ``export``, the simulations package's ``simulate``, ``example-plants``,
``benchmark``, ``tune`` and the ``bench`` group.
"""

from __future__ import annotations

import typer

from fedmeta.client.cli import client, validate_data
from fedmeta.client.floor_cli import adapt, export, optimize, predict, update
from fedmeta.server.cli import certs, server
from fedmeta.simulations.bench_cli import bench_app, benchmark, tune
from fedmeta.simulations.example_plants import example_plants
from fedmeta.simulations.simulate_cli import simulate

__all__ = ["app"]

app = typer.Typer(help="FedMeta Factory: federated meta-learning for manufacturing.", no_args_is_help=True)
app.command("simulate")(simulate)
app.command("example-plants")(example_plants)
app.command("benchmark")(benchmark)
app.command("tune")(tune)
app.add_typer(bench_app, name="bench")
app.command("validate-data")(validate_data)
app.command("client")(client)
app.command("adapt")(adapt)
app.command("predict")(predict)
app.command("update")(update)
app.command("optimize")(optimize)
app.command("export")(export)
app.command("certs")(certs)
app.command("server")(server)
