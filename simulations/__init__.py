"""Many factories on one machine: the simulation harness, fault injection and the run report.

The commands (`fedmeta simulate`, `benchmark`, `bench`) and the benchmarks
(`fedmeta.simulations.benchmarks`, which need the `bench` extra) are not imported here.
"""

import lazy_loader

# Each export, by the module that defines it, imported on first use: `fedmeta --help` and `fedmeta certs`
# never wait for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "faults": ["FAULTS", "fault_injection_mod", "parse_fault_spec"],
        "harness": ["run_federated_simulation"],
        "report": ["ComparisonRow", "comparison_rows", "final_evaluation"],
    },
)
