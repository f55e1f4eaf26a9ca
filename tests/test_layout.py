"""The package's layout is its architecture: sub-packages depend one way only (ARCHITECTURE.md).
Every import counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "pipeline"
# Lowest first: a module may import from its own layer and the layers before it.
LAYERS = [{"errors", "version"}, {"io"}, {"gatys"}, {"accel"}, {"targets"}, {"api"}, {"bulk"},
          {"report"},
          {"cli"}, {"__init__", "__main__"}]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _imports(path: Path) -> set[str]:
    """The top-level parts of `pipeline` that a module imports (relative or absolute)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = list(parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            names = target[:1] or [a.name for a in node.names]
            found.update(names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            module = node.module.split(".")[1:]
            found.update(module[:1] or [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("pipeline."))
    return found


def test_sub_packages_depend_one_way():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        me = parts[0]
        for target in _imports(path):
            if target == "__version__":
                target = "__init__"
            if target != me and RANK[target] > RANK[me]:
                wrong.append(f"{path.relative_to(ROOT.parent)} imports {target}")
    assert not wrong, wrong


def test_every_module_is_in_a_layer():
    tops = {p.relative_to(ROOT).with_suffix("").parts[0] for p in ROOT.rglob("*.py")}
    assert tops <= RANK.keys(), tops - RANK.keys()


def test_the_gatys_package_knows_no_accelerator():
    """Sharding, CUDA graphs and the bf16 trunk wrap the engine from accel, through the
    runtime it is given; the algorithm's modules never name them."""
    for path in (ROOT / "gatys").rglob("*.py"):
        text = path.read_text()
        for name in ("cpu_shards", "cuda_graph", "pixel_conv", "low_precision"):
            assert name not in text, f"{path.name} names {name}"
