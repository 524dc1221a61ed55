"""The exports of `fedmeta.server` (loaded on first use; see `__init__.py`)."""

from .app import make_server_app
from .bundle import stage_app, toml_value
from .certificates import (
    CertificateAuthority,
    create_certificate_authority,
    create_factory_keys,
    create_server_certificate,
    load_certificate_authority,
)
from .checkpoint import Checkpoint, CheckpointError, RunDirectory
from .deployment import (
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
from .run import ProgressFn, initial_meta_parameters, run_experiment
from .settings import ServerSettings
from .strategy.fedmeta import (
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
