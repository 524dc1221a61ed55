"""The meta-learning core: task-batched layers and models, losses, the one inner loop, task
samplers, the algorithms, adaptation and its recipes, and the device they run on.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "adaptation": ["Adaptation", "initial_weights"],
        "adaptation_recipe": [
            "RECIPE_CANDIDATES", "Recipe", "RecipeChoice", "adapt_with_recipes", "choose_recipes", "fold_batch",
            "recipe_candidates", "support_folds",
        ],
        "algorithms": [
            "ALGORITHMS", "META_OPTIMIZERS", "MetaConfig", "MetaTrainResult", "NonFiniteLossError",
            "adapt_to_support", "adapted_names", "algorithm_model_config", "evaluate_adaptation", "init_inner_lrs",
            "meta_step", "meta_train",
            "query_metrics", "task_scores",
        ],
        "device": ["DEVICE_CHOICES", "resolve_device"],
        "inner_loop": ["Params", "adapt", "expand_for_tasks", "predict"],
        "layers": ["TaskConv1d", "TaskLinear"],
        "losses": ["TASK_KINDS", "task_accuracy", "task_losses"],
        "models": ["MLP", "MODEL_NAMES", "TCN", "CNN1d", "MetaModel", "ModelConfig", "build_model"],
        "tasks": ["ClassificationTaskSampler", "FactoryData", "RegressionTaskSampler", "TaskBatch", "TaskSampler"],
    },
)
