"""What the ClientApp's round handlers use: the node's factories, K-shot evaluation, secure
aggregation's client side, the factory's policy and the delivered model package.
"""

import lazy_loader

# Exports listed in __init__.pyi, imported on first use: `fedmeta --help` and `fedmeta certs` never wait
# for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
