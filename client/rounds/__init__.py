"""What the ClientApp's round handlers use: the node's factories, K-shot evaluation, secure
aggregation's client side, the factory's policy and the delivered model package.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "evaluation": ["evaluate_factory", "factory_predictors", "local_only_adaptation", "prepare_adaptation"],
        "factory": ["LoadedFactory", "load_factories", "load_factory", "node_device", "sampler_for", "task_sampler"],
        "package": ["MODEL_DIR_KEY", "package_path", "store_delivered_package"],
        "policy": ["POLICY_KEY", "FactoryPolicy", "PolicyRefusal", "load_policy"],
        "secure_aggregation": ["advertise_keys", "masked_input", "reveal_shares", "seal_shares"],
    },
)
