"""Many factories on one machine: the simulation harness, fault injection and the run report.

The commands (`fedmeta simulate`, `benchmark`, `bench`) and the benchmarks
(`fedmeta.simulations.benchmarks`, which need the `bench` extra) are not imported here.
"""

from typing import TYPE_CHECKING

from fedmeta.common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedmeta.simulations.faults import FAULTS, fault_injection_mod, parse_fault_spec
    from fedmeta.simulations.harness import run_federated_simulation
    from fedmeta.simulations.report import ComparisonRow, comparison_rows, final_evaluation

__getattr__, __all__ = lazy_exports(__file__, globals())
