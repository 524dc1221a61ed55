"""The aggregation side: the Flower `ServerApp`, the delta-averaging strategy, the resumable
round loop, checkpoints, certificates and the `fedmeta server` deployment (a SuperLink).
The ServerApp itself is `fedmeta.server.app:app`.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "app": ["make_server_app"],
        "bundle": ["stage_app", "toml_value"],
        "certificates": [
            "CertificateAuthority", "create_certificate_authority", "create_factory_keys",
            "create_server_certificate", "load_certificate_authority",
        ],
        "checkpoint": ["Checkpoint", "CheckpointError", "RunDirectory", "refuse_started_runs"],
        "deployment": [
            "CONNECTION", "DeploymentError", "ServerPlan", "build_run_config", "local_host", "plan_server",
            "register_factories", "run_status", "serve", "stop_stale_runs", "superlink_command",
        ],
        "run": ["ProgressFn", "initial_meta_parameters", "run_experiment"],
        "settings": ["ServerSettings"],
        "strategy.fedmeta": [
            "PULL_COST_FACTOR", "PULL_INTERVAL_S", "PULL_MAX_INTERVAL_S", "FedMetaStrategy", "NodeInfo",
            "SamplingSettings", "Seat", "exchange", "weighted_metrics",
        ],
    },
)
