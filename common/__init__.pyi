"""The exports of `fedmeta.common` (loaded on first use; see `__init__.py`)."""

from .data.synthetic import (
    FAMILY_KINDS,
    FAULT_CLASSES,
    MIN_CLASS_SAMPLES,
    FactoryFamily,
    FamilyConfig,
    make_family,
    min_class_samples,
)
from .data_sources import (
    DataSource,
    FactoryAssignment,
    SplitSource,
    SyntheticSource,
    TableSource,
    TablesSource,
    source_from_config,
)
from .federation.deltas import DeltaRejected, add, global_norm, subtract, validate_delta, weighted_average
from .federation.protocol import (
    CONFIG,
    DEFAULT_CONTROL_PORT,
    DEFAULT_PORT,
    DEFAULT_RUNTIME_PORT,
    DELTA,
    FACTORIES,
    FACTORY,
    META_PARAMETERS,
    METRICS,
    NAMES,
    NUM_EXAMPLES,
    ROLE,
    ROLES,
    ROLES_FIELD,
    factory_key,
    is_delta_key,
)
from .federation.rounds import (
    FEDERATED_ALGORITHMS,
    INNER_LR_PREFIX,
    EvaluationSettings,
    RoundSettings,
    local_algorithm,
    pack_meta_parameters,
    unpack_meta_parameters,
)
from .meta.adaptation import Adaptation, initial_weights
from .meta.adaptation_recipe import (
    RECIPE_CANDIDATES,
    Recipe,
    RecipeChoice,
    adapt_with_recipes,
    choose_recipes,
    recipe_candidates,
    support_folds,
)
from .meta.algorithms import (
    ALGORITHMS,
    META_OPTIMIZERS,
    MetaConfig,
    MetaTrainResult,
    NonFiniteLossError,
    adapt_to_support,
    adapted_names,
    evaluate_adaptation,
    init_inner_lrs,
    meta_step,
    meta_train,
    query_metrics,
)
from .meta.device import DEVICE_CHOICES, resolve_device
from .meta.inner_loop import Params, adapt, expand_for_tasks, predict
from .meta.layers import TaskConv1d, TaskLinear
from .meta.losses import TASK_KINDS, task_accuracy, task_losses
from .meta.models import MLP, MODEL_NAMES, TCN, CNN1d, MetaModel, ModelConfig, build_model
from .meta.tasks import ClassificationTaskSampler, FactoryData, RegressionTaskSampler, TaskBatch, TaskSampler
from .package.decision import BaseRateDecision, FailureDecisions, expected_f1_threshold, prior_shift
from .run_settings import (
    ADAPTATION_RECIPES,
    DATA_EVAL_SHOTS,
    DATASET_LR,
    DATASETS,
    READERS,
    RUN_SETTINGS,
    Setting,
    UnknownSettingError,
    app_config_defaults,
    check_run_config,
    default_lr,
    parse_shots,
    resolve_run_config,
)
from .runtime.console import Report, elapsed_log, exit_on_errors
from .runtime.processes import (
    ChildProcess,
    ProcessError,
    descendants,
    flower_env,
    free_port,
    port_in_use,
    sigterm_as_interrupt,
    wait_until_listening,
)
from .security.credentials import (
    CredentialError,
    certificate_names,
    check_server_certificate,
    load_certificate,
    load_factory_private_key,
    load_factory_public_key,
)
from .validation import check_choice, check_positive_int
