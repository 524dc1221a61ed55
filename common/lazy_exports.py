"""A package's exports imported on first use (PEP 562), so that a command needing none of them
(``fedmeta certs``, any ``--help``) does not import torch and Flower: they cost several seconds
per process, and a deployment starts many processes.

A package keeps its ``from ... import ...`` lines under ``if TYPE_CHECKING:`` (the one list of its
exports, read by editors and type checkers) and hands its own file to `lazy_exports`, which reads
those lines and imports a name's module when the name is first looked up.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path

__all__ = ["lazy_exports"]


def _exported_modules(init_file: str) -> dict[str, str]:
    """Each name the file's ``from X import name`` lines bring in, and its module X."""
    exports: dict[str, str] = {}
    for node in ast.walk(ast.parse(Path(init_file).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__" and node.level == 0:
            for alias in node.names:
                exports[alias.asname or alias.name] = node.module
    exports.pop("TYPE_CHECKING", None)
    exports.pop("lazy_exports", None)
    return exports


def lazy_exports(init_file: str, namespace: dict[str, object]) -> tuple[Callable[[str], object], list[str]]:
    """``(__getattr__, __all__)`` for the package whose ``__init__.py`` is ``init_file`` and whose
    globals are ``namespace``: a name is imported from its module when first looked up, then kept."""
    modules = _exported_modules(init_file)
    package = str(namespace["__name__"])

    def __getattr__(name: str) -> object:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(modules[name]), name)
        namespace[name] = value
        return value

    return __getattr__, sorted(modules)
