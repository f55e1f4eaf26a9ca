"""The option tables of the docs, made from the same declarations as the CLI's options:
`make docs` (python -m pipeline.cli.reference) rewrites each table between its markers, and a
test fails when a file's table is not what this would write."""

from __future__ import annotations

import sys
from dataclasses import Field
from pathlib import Path

from ..accel.options import RuntimeOptions
from ..bulk.run_options import RunOptions
from ..gatys.params import StyleParams
from ..gatys.region_params import Regions
from ..options import base_type, cli_fields, cli_name, declared, default, range_sentence, spec
from ..video.params import VideoParams
from .options import cli_default, help_text

ROOT = Path(__file__).resolve().parents[2]
# How a default reads in a table where it is not a value to type.
DEFAULT_WORDS = {True: "on", False: "off", None: "none", ...: "required"}
TYPE_WORDS = {int: "int", float: "float", str: "string", bool: "bool", Path: "path"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type(owner: type, f: Field) -> str:
    kind, is_list, nullable = base_type(owner, f.name)
    word = TYPE_WORDS[kind]
    text = f"list of {word}s (or a comma-separated string)" if is_list else word
    return text + (" or null" if nullable else "")


def _key_note(f: Field) -> str:
    key = spec(f).key
    if key is True:
        return ""
    return " Not part of the job key." if key is False else f" Part of the job key only {key[1]}."


def manifest_table(owner: type = StyleParams) -> str:
    """One row per parameter column: name, type, default, meaning, range."""
    lines = ["| column | type | default | meaning |", "|---|---|---|---|"]
    for f in declared(owner):
        value = default(f)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        meaning = spec(f).help + range_sentence(spec(f)) + _key_note(f)
        lines.append(f"| `{spec(f).column or f.name}` | {_type(owner, f)} | `{shown}` | "
                     f"{_cell(meaning)} |")
    return "\n".join(lines)


def cli_table(owner: type) -> str:
    """One row per command-line option: its name, default and help as --help shows them."""
    lines = ["| option | default | meaning |", "|---|---|---|"]
    for f in cli_fields(owner):
        value = cli_default(owner, f)
        shown = (DEFAULT_WORDS[value] if isinstance(value, bool) or value in (None, ...)
                 else f"`{value}`")
        lines.append(f"| `{cli_name(f)}` | {shown} | {_cell(help_text(owner, f))} |")
    return "\n".join(lines)


# (file, marker name, table): each table sits between <!-- NAME --> and <!-- /NAME -->.
TABLES = [
    ("manifests/SCHEMA.md", "parameters", manifest_table),
    ("manifests/SCHEMA.md", "video-parameters", lambda: manifest_table(VideoParams)),
    ("manifests/SCHEMA.md", "region-parameters", lambda: manifest_table(Regions)),
    ("docs/options.md", "style-options", lambda: cli_table(StyleParams)),
    ("docs/options.md", "region-options", lambda: cli_table(Regions)),
    ("docs/options.md", "video-options", lambda: cli_table(VideoParams)),
    ("docs/options.md", "run-options", lambda: cli_table(RunOptions)),
    ("docs/options.md", "runtime-options", lambda: cli_table(RuntimeOptions)),
]


def render(text: str, name: str, table: str) -> str:
    """`text` with what is between the table's markers replaced by `table`."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    i = text.find(start)
    j = text.find(end, i)
    if i < 0 or j < 0:
        raise ValueError(f"no {start} ... {end} markers")
    return f"{text[:i + len(start)]}\n{table}\n{text[j:]}"


def rendered(root: Path = ROOT) -> dict[Path, str]:
    """Every file with a table, as `make docs` would write it."""
    texts: dict[Path, str] = {}
    for name, marker, make in TABLES:
        path = root / name
        texts[path] = render(texts.get(path) or path.read_text(), marker, make())
    return texts


def main() -> int:
    for path, text in rendered().items():
        if path.read_text() != text:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)  # atomic: a reader sees the old file or the new one
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
