"""The meta-learning core: task-batched layers and models, losses, the one inner loop, task
samplers, the algorithms, adaptation and its recipes, and the device they run on.
"""

import lazy_loader

# Exports listed in __init__.pyi, imported on first use: `fedmeta --help` and `fedmeta certs` never wait
# for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
