"""The factory side: the Flower `ClientApp`, its evaluation and data loading, and the
`fedmeta client` deployment (a SuperNode). The ClientApp itself is `fedmeta.client.app:app`.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.client.app import check_model_fits, local_update, make_client_app, train_replies, train_reply
    from fedmeta.client.node.deployment import (
        FactoryError,
        FactoryPlan,
        node_config,
        parse_server_address,
        plan_factory,
        probe_server,
        run_factory,
        superexec_command,
        supernode_command,
    )
    from fedmeta.client.rounds.evaluation import evaluate_factory, local_only_adaptation, prepare_adaptation
    from fedmeta.client.rounds.factory import (
        LoadedFactory,
        load_factories,
        load_factory,
        node_device,
        sampler_for,
        task_sampler,
    )

__getattr__, __all__ = lazy_exports(__file__, globals())
