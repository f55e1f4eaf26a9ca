"""The package's layout is its architecture: sub-packages depend one way only (ARCHITECTURE.md),
and no module imports itself through others, inside a sub-package either. Every import counts,
those inside functions and under TYPE_CHECKING too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "pipeline"
# Lowest first: a module may import from its own layer and the layers before it.
LAYERS = [{"errors", "version", "options", "collector"}, {"io"}, {"gatys"}, {"accel"},
          {"targets"}, {"api"}, {"video"}, {"bulk"}, {"report"}, {"cli"}, {"__init__", "__main__"}]
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


def test_the_cli_enters_the_library_through_the_api():
    """Commands parse and print; what they do is the API's (or a bulk run's, or the
    report's), so Python can do all of it too. Below those, a command imports only what it is
    declared from and how it names paths and errors: modules without torch, so that the
    commands that compute nothing start without it."""
    allowed = {"cli", "api", "video", "bulk", "report", "errors", "options", "collector",
               "version"}
    declarations = {"accel.options", "gatys.params", "gatys.region_params", "gatys.trace",
                    "io.storage", "io.files", "io.images", "io.cache_entries"}
    wrong = [f"{path.name} imports {target}" for path in sorted((ROOT / "cli").rglob("*.py"))
             for target in _module_imports(path)
             if target.split(".")[0] not in allowed and target not in declarations]
    assert not wrong, wrong


def test_the_gatys_package_knows_no_accelerator():
    """Sharding, CUDA graphs and the bf16 trunk wrap the engine from accel, through the
    runtime it is given; the algorithm's modules never name them."""
    for path in (ROOT / "gatys").rglob("*.py"):
        text = path.read_text()
        for name in ("cpu_shards", "cuda_graph", "pixel_conv", "low_precision"):
            assert name not in text, f"{path.name} names {name}"


def _module(parts: list[str]) -> str | None:
    """The dotted name of the module file or package at `parts` under pipeline, if any."""
    path = ROOT.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return ".".join(parts)
    if (path / "__init__.py").is_file():
        return ".".join([*parts, "__init__"])
    return None


def _module_imports(path: Path) -> set[str]:
    """The modules of `pipeline` (dotted, under it) that the module at `path` imports."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = list(parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[list[str]] = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            targets.append(base + (node.module.split(".") if node.module else []))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            targets.append(node.module.split(".")[1:])
        elif isinstance(node, ast.Import):
            targets += [a.name.split(".")[1:] for a in node.names
                        if a.name.startswith("pipeline.")]
        for target in targets:  # the module itself, and names in it that are modules
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            found.update(m for m in [_module(target), *(_module([*target, n]) for n in names)]
                         if m is not None)
    return found


def test_no_import_cycles():
    graph = {".".join(p.relative_to(ROOT).with_suffix("").parts): _module_imports(p)
             for p in ROOT.rglob("*.py")}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name):], name]
        if name in done:
            return None
        for target in sorted(graph.get(name, ())):
            if target.endswith("__init__") and name.startswith(target.removesuffix("__init__")):
                continue  # a module names its own package (its __init__ runs first anyway)
            if (cycle := visit(target, [*path, name])) is not None:
                return cycle
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name, [])
        assert cycle is None, " -> ".join(cycle)

