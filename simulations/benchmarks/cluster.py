"""Work spread over a running Ray cluster as tasks, one CPU each: `fedmeta benchmark --ray-address` runs each
seed as one task, on whichever node has a CPU free, and the results come back to the command in this process.

Every node needs the project and the data sets at the same paths (Ray hands the tasks this process's
``sys.path``), as for `fedmeta simulate --ray-address`. A task's node is recorded beside its result.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from fedmeta.simulations.harness import check_reachable

__all__ = ["on_the_cluster"]

Item = TypeVar("Item")
Result = TypeVar("Result")


def _on_a_node(work: Callable[[Item], Result], item: Item) -> tuple[Result, str]:
    import ray

    return work(item), ray.get_runtime_context().get_node_id()


def on_the_cluster(work: Callable[[Item], Result], items: Sequence[Item], address: str,
                   finished: Callable[[Item, Result, str], None]) -> None:
    """``work(item)`` for every item as a task on the Ray cluster at ``address``; ``finished(item, result,
    node id)`` here as each task ends, in the order they end. A `RayClusterError` where no cluster answers; a
    task's error is raised here once the tasks started before it have ended or failed."""
    check_reachable(address)
    import ray

    ray.init(address=address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
    try:
        task = ray.remote(num_cpus=1)(_on_a_node)
        pending = {task.remote(work, item): item for item in items}
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            result, node = ray.get(done)
            finished(pending.pop(done), result, node)
    finally:
        ray.shutdown()
