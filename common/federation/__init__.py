"""What crosses the wire in a round: the message names, the round's settings and packed
meta-parameters, deltas and their checks, delta encodings, and the app bundle itself.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "app_identity": [
            "APP_PACKAGES", "COMPONENTS", "DISTRIBUTION", "bundle_refusal", "installed_version", "package_folder",
        ],
        "compression": [
            "COMPRESSIONS", "INDICES", "VALUES", "Compression", "ParameterLayout", "decode_delta", "encode_delta",
            "pack_parameters", "unpack_parameters",
        ],
        "deltas": ["DeltaRejected", "add", "global_norm", "subtract", "validate_delta", "weighted_average"],
        "protocol": [
            "CONFIG", "DEFAULT_CONTROL_PORT", "DEFAULT_PORT", "DEFAULT_RUNTIME_PORT", "DELTA", "FACTORIES", "FACTORY",
            "MANIFEST", "MASKED", "META_PARAMETERS", "METRICS", "MODEL_DELIVERY", "NAMES", "NUM_EXAMPLES",
            "PARAMETER_LAYOUT", "ROLE", "ROLES", "ROLES_FIELD", "SECAGG", "SECAGG_KEYS", "SECAGG_REVEAL",
            "SECAGG_SHARES", "STORED", "factory_key", "is_delta_key",
        ],
        "rounds": [
            "FEDERATED_ALGORITHMS", "INNER_LR_PREFIX", "EvaluationSettings", "RoundSettings", "local_algorithm",
            "pack_meta_parameters", "unpack_meta_parameters",
        ],
    },
)
