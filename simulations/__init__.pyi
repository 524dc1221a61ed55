"""The exports of `fedmeta.simulations` (loaded on first use; see `__init__.py`)."""

from .faults import FAULTS, fault_injection_mod, parse_fault_spec
from .harness import run_federated_simulation
from .report import ComparisonRow, comparison_rows, final_evaluation
