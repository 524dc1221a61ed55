"""The factory's node process: `fedmeta client` (checks, the SuperNode), the SuperNode with its
app guard and timings, and the warm ClientApp worker.
The process entry points (`supernode`, `warm_worker`, `supernode_timings`) are run as modules; `supernode_loop`
keeps the SuperNode's loop in step with its replies.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "deployment": [
            "FactoryError", "FactoryPlan", "WarmWorkerSupervisor", "node_config", "parse_server_address",
            "plan_factory", "probe_server", "run_factory", "superexec_command", "supernode_command",
            "warm_worker_command",
        ],
        "supernode": ["REFUSED", "ForeignApp", "app_refusal", "guard_runs"],
        "supernode_loop": ["deliver_stranded_replies", "forget_given_up_messages", "repair"],
        "warm_worker": ["TaskRecord", "WarmWorker", "answer_dropped_task"],
    },
)
