"""The aggregation side: the Flower `ServerApp`, the delta-averaging strategy, the resumable
round loop, checkpoints, certificates and the `fedmeta server` deployment (a SuperLink).
The ServerApp itself is `fedmeta.server.app:app`.
"""

import lazy_loader

# Exports listed in __init__.pyi, imported on first use: `fedmeta --help` and `fedmeta certs` never wait
# for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
