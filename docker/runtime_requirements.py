"""Print the project's runtime requirements for a container image, one per line.

Reads ``[project] dependencies`` from pyproject.toml, the single source of truth, and
drops Flower's extras: ``flwr[simulation]`` pulls in Ray (over 1 GB of RAM and a large
image layer), which only the simulation engine needs; deployed servers and factory
clients run Flower's SuperLink and SuperNode, which the base image already provides.

Usage: python runtime_requirements.py pyproject.toml > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_FLWR_EXTRAS = re.compile(r"^(flwr)\s*\[[^\]]*\]")


def runtime_requirements(pyproject: Path) -> list[str]:
    """The ``[project] dependencies`` of ``pyproject``, with Flower's extras removed."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [_FLWR_EXTRAS.sub(r"\1", requirement) for requirement in dependencies]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} pyproject.toml")
    print("\n".join(runtime_requirements(Path(sys.argv[1]))))
