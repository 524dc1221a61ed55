"""The aggregation server (a Flower ``ServerApp``).

Runs federated meta-training of the configured algorithm and, when ``compare-with``
names baselines (for example ``fedavg``), trains those too in the same run on the same
factories, each in its own sub-folder of ``run-dir``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmeta.common import source_from_config
from fedmeta.server.run import ProgressFn, run_experiment
from fedmeta.server.settings import ServerSettings

__all__ = ["app", "make_server_app"]


def make_server_app(run_config: Mapping[str, object] | None = None, progress: ProgressFn | None = None) -> ServerApp:
    """A ServerApp; ``run_config`` overrides the run's config (for in-process simulations)."""
    overrides = dict(run_config or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = {**context.run_config, **overrides}
        settings = ServerSettings.from_run_config(config)
        source = source_from_config(config)
        for algorithm in (settings.round.algorithm, *settings.compare_with):
            run_experiment(grid, settings, source, algorithm, Path(settings.run_dir) / algorithm, progress)

    return app


app = make_server_app()
