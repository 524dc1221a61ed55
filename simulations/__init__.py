"""Many factories on one machine: the simulation harness, fault injection and the run report.

The commands (`fedmeta simulate`, `benchmark`, `bench`) and the benchmarks
(`fedmeta.simulations.benchmarks`, which need the `bench` extra) are not imported here.
"""

from fedmeta.simulations.faults import FAULTS, fault_injection_mod, parse_fault_spec
from fedmeta.simulations.harness import run_federated_simulation
from fedmeta.simulations.report import ComparisonRow, comparison_rows, final_evaluation

__all__ = [
    "FAULTS",
    "ComparisonRow",
    "comparison_rows",
    "fault_injection_mod",
    "final_evaluation",
    "parse_fault_spec",
    "run_federated_simulation",
]
