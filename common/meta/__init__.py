"""The meta-learning core: task-batched layers and models, losses, the one inner loop, task
samplers, the algorithms, adaptation and its recipes, and the device they run on.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.common.meta.adaptation import (
        Adaptation,
        initial_weights,
    )
    from fedmeta.common.meta.adaptation_recipe import (
        RECIPE_CANDIDATES,
        Recipe,
        RecipeChoice,
        adapt_with_recipes,
        choose_recipes,
        fold_batch,
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
    from fedmeta.common.meta.device import (
        DEVICE_CHOICES,
        resolve_device,
    )
    from fedmeta.common.meta.inner_loop import (
        Params,
        adapt,
        expand_for_tasks,
        predict,
    )
    from fedmeta.common.meta.layers import (
        TaskConv1d,
        TaskLinear,
    )
    from fedmeta.common.meta.losses import (
        TASK_KINDS,
        task_accuracy,
        task_losses,
    )
    from fedmeta.common.meta.models import (
        MLP,
        MODEL_NAMES,
        TCN,
        CNN1d,
        MetaModel,
        ModelConfig,
        build_model,
    )
    from fedmeta.common.meta.tasks import (
        ClassificationTaskSampler,
        FactoryData,
        RegressionTaskSampler,
        TaskBatch,
        TaskSampler,
    )

__getattr__, __all__ = lazy_exports(__file__, globals())
