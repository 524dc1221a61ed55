"""What the ClientApp's round handlers use: the node's factories, K-shot evaluation, secure
aggregation's client side, the factory's policy and the delivered model package.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.client.rounds.evaluation import (
        evaluate_factory,
        local_only_adaptation,
        prepare_adaptation,
    )
    from fedmeta.client.rounds.factory import (
        LoadedFactory,
        load_factories,
        load_factory,
        node_device,
        sampler_for,
        task_sampler,
    )
    from fedmeta.client.rounds.package import (
        MODEL_DIR_KEY,
        package_path,
        store_delivered_package,
    )
    from fedmeta.client.rounds.policy import (
        POLICY_KEY,
        FactoryPolicy,
        PolicyRefusal,
        load_policy,
    )
    from fedmeta.client.rounds.secure_aggregation import (
        advertise_keys,
        masked_input,
        reveal_shares,
        seal_shares,
    )

__getattr__, __all__ = lazy_exports(__file__, globals())
