"""The Flower release whose internals this project's process wrappers know.

The SuperNode's timings and app guard (`fedmeta.client.node.supernode`), the warm ClientApp worker and the
SuperLink's split ports (`fedmeta.server.superlink`) reach into flwr's own modules. Each refuses,
naming itself, any other Flower release rather than run on internals that may have moved. Flower
itself is not imported here: the installed version is read from its metadata.
"""

from __future__ import annotations

import importlib.metadata

__all__ = ["FLOWER_VERSION", "FlowerInternalsChanged", "require_flower"]

FLOWER_VERSION = "1.42.0"


class FlowerInternalsChanged(RuntimeError):
    """The installed Flower is not the one whose internals a wrapper of this project replaces."""


def require_flower(what: str) -> None:
    """`FlowerInternalsChanged` naming ``what`` unless the installed Flower is `FLOWER_VERSION`."""
    installed = importlib.metadata.version("flwr")
    if installed != FLOWER_VERSION:
        raise FlowerInternalsChanged(f"{what}: written for flwr {FLOWER_VERSION}'s internals, but flwr {installed} "
                                     f"is installed: install flwr=={FLOWER_VERSION}")
