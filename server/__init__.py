"""The aggregation side: the Flower `ServerApp`, the delta-averaging strategy, the resumable
round loop, checkpoints, certificates and the `fedmeta server` deployment (a SuperLink).
The ServerApp itself is `fedmeta.server.app:app`.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.server.app import make_server_app
    from fedmeta.server.bundle import stage_app, toml_value
    from fedmeta.server.certificates import (
        CertificateAuthority,
        create_certificate_authority,
        create_factory_keys,
        create_server_certificate,
        load_certificate_authority,
    )
    from fedmeta.server.checkpoint import Checkpoint, CheckpointError, RunDirectory
    from fedmeta.server.deployment import (
        CONNECTION,
        DeploymentError,
        ServerPlan,
        build_run_config,
        local_host,
        plan_server,
        register_factory,
        run_status,
        serve,
        stop_stale_runs,
        superlink_command,
    )
    from fedmeta.server.run import ProgressFn, initial_meta_parameters, run_experiment
    from fedmeta.server.settings import ServerSettings
    from fedmeta.server.strategy.fedmeta import (
        PULL_COST_FACTOR,
        PULL_INTERVAL_S,
        PULL_MAX_INTERVAL_S,
        FedMetaStrategy,
        NodeInfo,
        SamplingSettings,
        Seat,
        exchange,
        weighted_metrics,
    )

__getattr__, __all__ = lazy_exports(__file__, globals())
