"""The exports of `fedmeta.client.rounds` (loaded on first use; see `__init__.py`)."""

from .evaluation import evaluate_factory, local_only_adaptation, prepare_adaptation
from .factory import LoadedFactory, load_factories, load_factory, node_device, sampler_for, task_sampler
from .package import MODEL_DIR_KEY, package_path, store_delivered_package
from .policy import POLICY_KEY, FactoryPolicy, PolicyRefusal, load_policy
from .secure_aggregation import advertise_keys, masked_input, reveal_shares, seal_shares
