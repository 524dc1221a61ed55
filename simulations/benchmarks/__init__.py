"""The benchmarks behind `fedmeta benchmark` and `fedmeta bench`, one module each.

Each prints ratios measured side by side in one run and has the same shape: a ``run_*``
function returning a result and a ``render`` that prints it, so the modules themselves
are this package's public names. They need the `bench` extra (torchopt, scikit-learn,
matplotlib); only the benchmark commands import this package.
"""

from fedmeta.simulations.benchmarks import (
    deployment,
    engine_shots,
    fewshot,
    fewshot_report,
    field_metrics,
    gradient_boosting,
    inner_loop,
    memory,
    reference_models,
    references,
    scaling,
)

__all__ = [
    "deployment",
    "engine_shots",
    "fewshot",
    "fewshot_report",
    "field_metrics",
    "gradient_boosting",
    "inner_loop",
    "memory",
    "reference_models",
    "references",
    "scaling",
]
