"""What crosses the wire in a round: the message names, the round's settings and packed
meta-parameters, deltas and their checks, delta encodings, and the app bundle itself.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.common.federation.app_identity import (
        APP_PACKAGES,
        COMPONENTS,
        DISTRIBUTION,
        bundle_refusal,
        installed_version,
        package_folder,
    )
    from fedmeta.common.federation.compression import (
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
    from fedmeta.common.federation.deltas import (
        DeltaRejected,
        add,
        global_norm,
        subtract,
        validate_delta,
        weighted_average,
    )
    from fedmeta.common.federation.protocol import (
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
    from fedmeta.common.federation.rounds import (
        FEDERATED_ALGORITHMS,
        INNER_LR_PREFIX,
        EvaluationSettings,
        RoundSettings,
        local_algorithm,
        pack_meta_parameters,
        unpack_meta_parameters,
    )

__getattr__, __all__ = lazy_exports(__file__, globals())
