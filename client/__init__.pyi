"""The exports of `fedmeta.client` (loaded on first use; see `__init__.py`)."""

from .app import check_model_fits, local_update, make_client_app, train_replies, train_reply
from .node.deployment import (
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
from .rounds.evaluation import evaluate_factory, local_only_adaptation, prepare_adaptation
from .rounds.factory import LoadedFactory, load_factories, load_factory, node_device, sampler_for, task_sampler
