"""The factory side: the Flower `ClientApp`, its evaluation and data loading, and the
`fedmeta client` deployment (a SuperNode). The ClientApp itself is `fedmeta.client.app:app`.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "app": ["check_model_fits", "local_update", "make_client_app", "train_replies", "train_reply"],
        "node.deployment": [
            "FactoryError", "FactoryPlan", "node_config", "parse_server_address", "plan_factory", "probe_server",
            "run_factory", "superexec_command", "supernode_command",
        ],
        "rounds.evaluation": ["evaluate_factory", "factory_predictors", "local_only_adaptation", "prepare_adaptation"],
        "rounds.factory": [
            "LoadedFactory", "load_factories", "load_factory", "node_device", "sampler_for", "task_sampler",
        ],
    },
)
