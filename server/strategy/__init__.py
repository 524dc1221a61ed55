"""The delta-averaging strategy and its rules, beside it as Flower keeps
``flwr/serverapp/strategy/``: robust aggregation and the outer optimizer.
"""

import lazy_loader

# Exports listed in __init__.pyi, imported on first use: `fedmeta --help` and `fedmeta certs` never wait
# for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
