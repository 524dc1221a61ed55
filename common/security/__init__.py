"""Privacy and security: client-level differential privacy, secure aggregation's primitives,
certificate and key checks.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.common.security.credentials import (
        CredentialError,
        certificate_names,
        check_server_certificate,
        load_certificate,
        load_factory_private_key,
        load_factory_public_key,
    )
    from fedmeta.common.security.privacy import (
        NOISE_SIGMAS,
        ORDERS,
        DifferentialPrivacy,
        clip_delta,
        spent_epsilon,
    )
    from fedmeta.common.security.secure_aggregation import (
        FIELD_BITS,
        PRIME,
        FixedPoint,
        Participant,
        PublicKeys,
        SecureAggregation,
        SecureAggregationError,
        aggregate_in_process,
        participant_from_state,
        participant_state,
        reconstruct,
        shamir_shares,
        unmask_sum,
        weighted_input,
        weighted_mean,
    )

__getattr__, __all__ = lazy_exports(__file__, globals())
