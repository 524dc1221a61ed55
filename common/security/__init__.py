"""Privacy and security: client-level differential privacy, secure aggregation's primitives,
certificate and key checks.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "credentials": [
            "CredentialError", "certificate_names", "check_server_certificate", "load_certificate",
            "load_factory_private_key", "load_factory_public_key",
        ],
        "privacy": ["NOISE_SIGMAS", "ORDERS", "DifferentialPrivacy", "clip_delta", "spent_epsilon"],
        "secure_aggregation": [
            "FIELD_BITS", "PRIME", "FixedPoint", "Participant", "PublicKeys", "SecureAggregation",
            "SecureAggregationError", "ShareRefusedError", "aggregate_in_process", "neighbourhoods",
            "participant_from_state", "participant_state", "reconstruct", "reveal_text", "revealed_shares",
            "secagg_plus_parameters", "shamir_shares", "unmask_sum", "weighted_input", "weighted_mean",
        ],
    },
)
