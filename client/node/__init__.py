"""The factory's node process: `fedmeta client` (checks, the SuperNode), the SuperNode with its
app guard and timings, and the warm ClientApp worker.
The process entry points (`supernode`, `warm_worker`, `supernode_timings`) are run as modules.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.client.node.deployment import (
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
    from fedmeta.client.node.supernode import REFUSED, ForeignApp, app_refusal, guard_runs
    from fedmeta.client.node.warm_worker import TaskRecord, WarmWorker, answer_dropped_task

__getattr__, __all__ = lazy_exports(__file__, globals())
