"""Many factories on one machine: the simulation harness, fault injection and the run report.

The commands (`fedmeta simulate`, `benchmark`, `bench`) and the benchmarks
(`fedmeta.simulations.benchmarks`, which need the `bench` extra) are not imported here.
"""

import lazy_loader

# Exports listed in __init__.pyi, imported on first use: `fedmeta --help` and `fedmeta certs` never wait
# for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
