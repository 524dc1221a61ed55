"""The architecture the folders show holds in the code: components and `common/`'s packages import only
downward, and no module-level imports form a cycle.

The graph is read from the source (``ast``), resolving a name imported from a package to the module that
defines it (through the table of lazily loaded exports in its ``__init__``), so ``from fedmeta.common
import build_model`` counts as an import of ``fedmeta.common.meta.models``. Imports inside functions are
left out: they are how a command loads what it runs only when it runs.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"common": "fedmeta.common", "client": "fedmeta.client", "server": "fedmeta.server",
           "simulations": "fedmeta.simulations"}
# Each component may import those before it in its row, never those after.
COMPONENTS = ["fedmeta.common", "fedmeta.client", "fedmeta.server", "fedmeta.simulations"]
ALLOWED_COMPONENTS = {
    "fedmeta.common": {"fedmeta.common"},
    "fedmeta.client": {"fedmeta.common", "fedmeta.client"},
    "fedmeta.server": {"fedmeta.common", "fedmeta.server"},
    "fedmeta.simulations": set(COMPONENTS),
}
# common/, bottom to top: a module imports from its own layer or those below.
COMMON_LAYERS = [
    ("fedmeta.common.validation", "fedmeta.common.run_settings"),
    ("fedmeta.common.runtime",),
    ("fedmeta.common.meta",),
    ("fedmeta.common.trees",),
    ("fedmeta.common.data",),
    ("fedmeta.common.federation",),
    ("fedmeta.common.security",),
    ("fedmeta.common.package",),
    ("fedmeta.common.data_sources",),
]


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _top_level_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    statements, pending = [], list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            statements.append(node)
        elif isinstance(node, ast.If | ast.Try):  # `if TYPE_CHECKING:`, optional imports
            pending += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            pending += [statement for handler in getattr(node, "handlers", []) for statement in handler.body]
    return statements


@cache
def _exports(package: str) -> dict[str, str]:
    """What a package exports (the ``submod_attrs`` its ``__init__`` hands to ``lazy_loader.attach``), by name,
    and the module that defines it."""
    for node in ast.walk(ast.parse(MODULES[package].read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg == "submod_attrs":
            table = ast.literal_eval(node.value)
            return {name: f"{package}.{module}" for module, names in table.items() for name in names}
    return {}


def _defining(module: str, name: str) -> str:
    if f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    if MODULES.get(module, Path()).name == "__init__.py" and name in _exports(module):
        return _defining(_exports(module)[name], name) if _exports(module)[name] != module else module
    return module


def _imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    targets = set()
    for node in _top_level_imports(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedmeta."):
            targets |= {_defining(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names if alias.name.startswith("fedmeta.")}
    return {target for target in targets if target in MODULES and target != module}


def _component(module: str) -> str:
    return next(component for component in COMPONENTS if module == component or module.startswith(component + "."))


def _layer(module: str) -> int:
    for index, members in enumerate(COMMON_LAYERS):
        if any(module == member or module.startswith(member + ".") for member in members):
            return index
    raise AssertionError(f"{module} is in no layer of common/: add it to COMMON_LAYERS")


def _is_package_init(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def test_components_import_only_what_sits_below_them():
    wrong = [(module, target) for module in MODULES if not _is_package_init(module)
             for target in _imports(module) if _component(target) not in ALLOWED_COMPONENTS[_component(module)]]
    assert wrong == []


def test_common_never_imports_flower():
    flower = [module for module, path in MODULES.items() if module.startswith("fedmeta.common")
              for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
              if isinstance(node, ast.Import | ast.ImportFrom)
              and any(name == "flwr" or name.startswith("flwr.")
                      for name in ([node.module or ""] if isinstance(node, ast.ImportFrom)
                                   else [alias.name for alias in node.names]))]
    assert flower == []


def test_common_imports_only_from_its_own_layer_or_below():
    upward = [(module, target) for module in MODULES
              if module.startswith("fedmeta.common.") and not _is_package_init(module)
              for target in _imports(module)
              if target.startswith("fedmeta.common.") and _layer(target) > _layer(module)]
    assert upward == []


def test_no_module_level_imports_form_a_cycle():
    graph = {module: _imports(module) for module in MODULES if not _is_package_init(module)}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_layer_test_sees_every_package_of_common():
    """A new folder under common/ must be placed in a layer (or this test's tables are stale)."""
    for module in MODULES:
        if module.startswith("fedmeta.common.") and not module.startswith("fedmeta.common.__"):
            _layer(module)
