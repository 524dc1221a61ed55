"""The exports of `fedmeta.common.federation` (loaded on first use; see `__init__.py`)."""

from .app_identity import APP_PACKAGES, COMPONENTS, DISTRIBUTION, bundle_refusal, installed_version, package_folder
from .compression import (
    COMPRESSIONS,
    INDICES,
    VALUES,
    Compression,
    ParameterLayout,
    decode_delta,
    encode_delta,
    pack_parameters,
    unpack_parameters,
)
from .deltas import DeltaRejected, add, global_norm, subtract, validate_delta, weighted_average
from .protocol import (
    CONFIG,
    DEFAULT_CONTROL_PORT,
    DEFAULT_PORT,
    DEFAULT_RUNTIME_PORT,
    DELTA,
    FACTORIES,
    FACTORY,
    MANIFEST,
    MASKED,
    META_PARAMETERS,
    METRICS,
    MODEL_DELIVERY,
    NAMES,
    NUM_EXAMPLES,
    PARAMETER_LAYOUT,
    ROLE,
    ROLES,
    ROLES_FIELD,
    SECAGG,
    SECAGG_KEYS,
    SECAGG_REVEAL,
    SECAGG_SHARES,
    STORED,
    factory_key,
    is_delta_key,
)
from .rounds import (
    FEDERATED_ALGORITHMS,
    INNER_LR_PREFIX,
    EvaluationSettings,
    RoundSettings,
    local_algorithm,
    pack_meta_parameters,
    unpack_meta_parameters,
)
