"""The exports of `fedmeta.common.security` (loaded on first use; see `__init__.py`)."""

from .credentials import (
    CredentialError,
    certificate_names,
    check_server_certificate,
    load_certificate,
    load_factory_private_key,
    load_factory_public_key,
)
from .privacy import NOISE_SIGMAS, ORDERS, DifferentialPrivacy, clip_delta, spent_epsilon
from .secure_aggregation import (
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
