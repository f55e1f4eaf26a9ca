"""The bench and export scripts: `make bench` runs for hours, so what would break it only
there (a name the package no longer has, a command line argparse refuses) is checked here."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from argparse import SUPPRESS
from pathlib import Path

import pytest

from bench.arguments import parser

ROOT = Path(__file__).resolve().parent.parent
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py")
                 if p.stem not in ("__init__", "arguments"))


def test_the_bench_and_export_scripts_import_names_the_package_has():
    """`make bench` runs for hours; a script that imports a name the package no longer has
    would fail only there. Every import counts, those inside functions too."""
    missing = []
    for path in sorted([*(ROOT / "bench").glob("*.py"),
                        *(ROOT / "export").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and not (  # or a submodule
                                hasattr(module, "__path__")
                                and importlib.util.find_spec(f"{node.module}.{a.name}"))]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("pipeline"):
                        importlib.import_module(a.name)
    assert not missing, missing


@pytest.mark.parametrize("name", BENCHES)
def test_every_bench_explains_its_options_and_their_defaults(name, monkeypatch, capsys):
    module = importlib.import_module(f"bench.{name}")
    made = []
    monkeypatch.setattr(module, "parser", lambda doc: made.append(parser(doc)) or made[-1])
    monkeypatch.setattr("sys.argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert " ".join(module.__doc__.split()) in shown  # the whole docstring, not its first line
    (ap,) = made
    for action in ap._actions:
        if action.option_strings and action.default not in (None, False, "", SUPPRESS):
            assert "(default: %(default)s)" in action.help, action.dest
            assert f"--{action.dest.replace('_', '-')}" in shown
