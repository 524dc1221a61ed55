"""The benchmarks behind `fedmeta benchmark` and `fedmeta bench`, one module each.

Each prints ratios measured side by side in one run and has the same shape: a ``run_*``
function returning a result and a ``render`` that prints it, so the modules themselves
are this package's public names. They need the `bench` extra (torchopt, scikit-learn,
matplotlib); only the benchmark commands import this package.
"""

import lazy_loader

# Each module imported on first use: a benchmark's `spawn` children (`memory`) and every `fedmeta bench`
# command import only the modules they run, not LightGBM, torchopt and matplotlib with all the others.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=[
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
    ],
)
