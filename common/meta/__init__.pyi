"""The exports of `fedmeta.common.meta` (loaded on first use; see `__init__.py`)."""

from .adaptation import Adaptation, initial_weights
from .adaptation_recipe import (
    RECIPE_CANDIDATES,
    Recipe,
    RecipeChoice,
    adapt_with_recipes,
    choose_recipes,
    fold_batch,
    recipe_candidates,
    support_folds,
)
from .algorithms import (
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
from .device import DEVICE_CHOICES, resolve_device
from .inner_loop import Params, adapt, expand_for_tasks, predict
from .layers import TaskConv1d, TaskLinear
from .losses import TASK_KINDS, task_accuracy, task_losses
from .models import MLP, MODEL_NAMES, TCN, CNN1d, MetaModel, ModelConfig, build_model
from .tasks import ClassificationTaskSampler, FactoryData, RegressionTaskSampler, TaskBatch, TaskSampler
