"""What crosses the wire in a round: the message names, the round's settings and packed
meta-parameters, deltas and their checks, delta encodings, and the app bundle itself.
"""

import lazy_loader

# Exports listed in __init__.pyi, imported on first use: `fedmeta --help` and `fedmeta certs` never wait
# for torch and Flower.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
