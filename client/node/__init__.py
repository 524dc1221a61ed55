"""The factory's node process: `fedmeta client` (checks, the SuperNode), the SuperNode with its
app guard and timings, and the warm ClientApp worker.
The process entry points (`supernode`, `warm_worker`, `supernode_timings`) are run as modules.
"""

import lazy_loader

# Exports listed in __init__.pyi, imported on first use: `fedmeta --help` and `fedmeta certs` never wait
# for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
