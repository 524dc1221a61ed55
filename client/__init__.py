"""The factory side: the Flower `ClientApp`, its evaluation and data loading, and the
`fedmeta client` deployment (a SuperNode). The ClientApp itself is `fedmeta.client.app:app`.
"""

from fedmeta.client.app import check_model_fits, local_update, make_client_app, train_replies, train_reply
from fedmeta.client.deployment import (
    DEFAULT_RUNTIME_PORT,
    FactoryError,
    FactoryPlan,
    node_config,
    parse_server_address,
    plan_factory,
    probe_server,
    run_factory,
    superexec_command,
    supernode_command,
)
from fedmeta.client.evaluation import (
    Adaptation,
    evaluate_factory,
    initial_weights,
    local_only_adaptation,
    prepare_adaptation,
)
from fedmeta.client.factory import LoadedFactory, load_factories, load_factory, node_device, sampler_for, task_sampler

__all__ = [
    "DEFAULT_RUNTIME_PORT",
    "Adaptation",
    "FactoryError",
    "FactoryPlan",
    "LoadedFactory",
    "check_model_fits",
    "evaluate_factory",
    "initial_weights",
    "load_factories",
    "load_factory",
    "local_only_adaptation",
    "local_update",
    "make_client_app",
    "node_config",
    "node_device",
    "parse_server_address",
    "plan_factory",
    "prepare_adaptation",
    "probe_server",
    "run_factory",
    "sampler_for",
    "superexec_command",
    "supernode_command",
    "task_sampler",
    "train_replies",
    "train_reply",
]
