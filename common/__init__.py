"""The pure library: tasks, models, meta-learning algorithms, deltas, data and run settings.

No Flower import and no global state; the Flower apps (`fedmeta.client`, `fedmeta.server`) and the
harness (`fedmeta.simulations`) build on it. Callers import from here; modules inside the package
import each other's leaf modules.
"""

import lazy_loader

# Exports listed in __init__.pyi, imported on first use: `fedmeta --help` and `fedmeta certs` never wait
# for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
