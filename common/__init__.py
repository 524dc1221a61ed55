"""The pure library: tasks, models, meta-learning algorithms, deltas, data and run settings.

No Flower import and no global state; the Flower apps (`fedmeta.client`, `fedmeta.server`) and the
harness (`fedmeta.simulations`) build on it. Callers import from here; modules inside the package
import each other's leaf modules.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "data.synthetic": [
            "FAMILY_KINDS", "FAULT_CLASSES", "MIN_CLASS_SAMPLES", "FactoryFamily", "FamilyConfig", "make_family",
            "min_class_samples",
        ],
        "data_sources": [
            "DataSource", "FactoryAssignment", "SplitSource", "SyntheticSource", "TableSource", "TablesSource",
            "model_config_for", "source_from_config", "standardizes_targets",
        ],
        "federation.deltas": ["DeltaRejected", "add", "global_norm", "subtract", "validate_delta", "weighted_average"],
        "federation.protocol": [
            "CONFIG", "DEFAULT_CONTROL_PORT", "DEFAULT_PORT", "DEFAULT_RUNTIME_PORT", "DELTA", "FACTORIES", "FACTORY",
            "META_PARAMETERS", "METRICS", "NAMES", "NUM_EXAMPLES", "ROLE", "ROLES", "ROLES_FIELD", "factory_key",
            "is_delta_key",
        ],
        "federation.rounds": [
            "FEDERATED_ALGORITHMS", "INNER_LR_PREFIX", "TREE_ALGORITHMS", "EvaluationSettings", "RoundSettings",
            "is_tree_algorithm", "local_algorithm", "pack_meta_parameters", "unpack_meta_parameters",
        ],
        "meta.adaptation": ["Adaptation", "initial_weights"],
        "meta.adaptation_recipe": [
            "RECIPE_CANDIDATES", "Recipe", "RecipeChoice", "adapt_with_recipes", "choose_recipes",
            "recipe_candidates", "support_folds",
        ],
        "meta.algorithms": [
            "ALGORITHMS", "META_OPTIMIZERS", "MetaConfig", "MetaTrainResult", "NonFiniteLossError",
            "adapt_to_support", "adapted_names", "algorithm_model_config", "evaluate_adaptation", "init_inner_lrs",
            "meta_step", "meta_train",
            "query_metrics", "task_scores",
        ],
        "meta.device": ["DEVICE_CHOICES", "resolve_device"],
        "meta.inner_loop": ["Params", "adapt", "expand_for_tasks", "predict"],
        "meta.layers": ["TaskConv1d", "TaskLinear"],
        "meta.losses": ["TASK_KINDS", "task_accuracy", "task_losses"],
        "meta.models": ["MLP", "MODEL_NAMES", "TCN", "CNN1d", "MetaModel", "ModelConfig", "build_model"],
        "meta.tasks": ["ClassificationTaskSampler", "FactoryData", "RegressionTaskSampler", "TaskBatch", "TaskSampler"],
        "package.decision": ["BaseRateDecision", "FailureDecisions", "expected_f1_threshold", "prior_shift"],
        "run_settings": [
            "ADAPTATION_RECIPES", "DATA_EVAL_SHOTS", "DATASET_LR", "DATASETS", "READERS", "RUN_SETTINGS", "Setting",
            "UnknownSettingError", "app_config_defaults", "check_run_config", "default_lr", "parse_shots",
            "resolve_run_config",
        ],
        "runtime.console": ["Report", "elapsed_log", "exit_on_errors"],
        "runtime.processes": [
            "ChildProcess", "ProcessError", "descendants", "flower_env", "free_port", "port_in_use",
            "sigterm_as_interrupt", "still_running", "stop_all", "wait_until_listening",
        ],
        "security.credentials": [
            "CredentialError", "certificate_names", "check_server_certificate", "load_certificate",
            "load_factory_private_key", "load_factory_public_key",
        ],
        "validation": ["check_choice", "check_positive_int"],
    },
)
