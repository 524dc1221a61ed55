"""The pure library: tasks, models, meta-learning algorithms, deltas, data and run settings.

No Flower import and no global state; the Flower apps (`fedmeta.client`, `fedmeta.server`) and the
harness (`fedmeta.simulations`) build on it. Callers import from here; modules inside the package
import each other's leaf modules.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.common.data.synthetic import (
        FAMILY_KINDS,
        FAULT_CLASSES,
        MIN_CLASS_SAMPLES,
        FactoryFamily,
        FamilyConfig,
        make_family,
        min_class_samples,
    )
    from fedmeta.common.data_sources import (
        DataSource,
        FactoryAssignment,
        SplitSource,
        SyntheticSource,
        TableSource,
        TablesSource,
        source_from_config,
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
    from fedmeta.common.federation.rounds import (
        FEDERATED_ALGORITHMS,
        INNER_LR_PREFIX,
        EvaluationSettings,
        RoundSettings,
        local_algorithm,
        pack_meta_parameters,
        unpack_meta_parameters,
    )
    from fedmeta.common.meta.adaptation import Adaptation, initial_weights
    from fedmeta.common.meta.adaptation_recipe import (
        RECIPE_CANDIDATES,
        Recipe,
        RecipeChoice,
        adapt_with_recipes,
        choose_recipes,
        recipe_candidates,
        support_folds,
    )
    from fedmeta.common.meta.algorithms import (
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
    from fedmeta.common.meta.device import DEVICE_CHOICES, resolve_device
    from fedmeta.common.meta.inner_loop import Params, adapt, expand_for_tasks, predict
    from fedmeta.common.meta.layers import TaskConv1d, TaskLinear
    from fedmeta.common.meta.losses import TASK_KINDS, task_accuracy, task_losses
    from fedmeta.common.meta.models import MLP, MODEL_NAMES, TCN, CNN1d, MetaModel, ModelConfig, build_model
    from fedmeta.common.meta.tasks import (
        ClassificationTaskSampler,
        FactoryData,
        RegressionTaskSampler,
        TaskBatch,
        TaskSampler,
    )
    from fedmeta.common.package.decision import BaseRateDecision, FailureDecisions, expected_f1_threshold, prior_shift
    from fedmeta.common.run_settings import (
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
    from fedmeta.common.runtime.console import Report, elapsed_log, exit_on_errors
    from fedmeta.common.runtime.processes import (
        ChildProcess,
        ProcessError,
        descendants,
        flower_env,
        free_port,
        port_in_use,
        sigterm_as_interrupt,
        wait_until_listening,
    )
    from fedmeta.common.security.credentials import (
        CredentialError,
        certificate_names,
        check_server_certificate,
        load_certificate,
        load_factory_private_key,
        load_factory_public_key,
    )
    from fedmeta.common.validation import check_choice, check_positive_int

__getattr__, __all__ = lazy_exports(__file__, globals())
