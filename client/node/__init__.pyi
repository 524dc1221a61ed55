"""The exports of `fedmeta.client.node` (loaded on first use; see `__init__.py`)."""

from .deployment import (
    FactoryError,
    FactoryPlan,
    WarmWorkerSupervisor,
    node_config,
    parse_server_address,
    plan_factory,
    probe_server,
    run_factory,
    superexec_command,
    supernode_command,
    warm_worker_command,
)
from .supernode import REFUSED, ForeignApp, app_refusal, guard_runs
from .warm_worker import TaskRecord, WarmWorker, answer_dropped_task
