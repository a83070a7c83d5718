"""The package's layering (docs/architecture.md): a module imports only modules of lower layers, or modules of its
own sub-package (data/, layers/); function-level imports count too, imports for type checking only do not."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "skillmix"

# Lower layers first; the same table is drawn in docs/architecture.md.
LAYERING = [
    {"errors", "io"},
    {"routing", "metrics", "hub", "data"},
    {"layers"},
    {"config"},
    {"model"},
    {"runs", "batching", "loss"},
    {"train", "evaluate", "analysis"},
    {"adapt", "compare"},
    {"cli", "__init__"},
    {"__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERING) for name in names}


def _unit(module: str) -> str:
    """'skillmix.layers.poly' -> 'layers'; 'skillmix.train' -> 'train'; 'skillmix' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """Absolute skillmix module names imported anywhere in `path`."""
    module = "skillmix." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.split(".")[0] == "skillmix":
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "skillmix"}
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def test_every_module_has_a_layer():
    units = {_unit("skillmix." + ".".join(p.relative_to(SRC).with_suffix("").parts)) for p in SRC.rglob("*.py")}
    assert units - {"__init__"} <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERING and docs/architecture.md"


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        importer = _unit("skillmix." + ".".join(path.relative_to(SRC).with_suffix("").parts))
        for imported in _imports(path):
            target = _unit(imported)
            if target != importer and RANK[target] >= RANK[importer]:
                wrong.append(f"{path.relative_to(SRC)} imports {imported}")
    assert not wrong, wrong
