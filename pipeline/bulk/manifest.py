"""Parquet manifests: one row per output image. Reading in batches, turning rows into jobs,
validating every row, and building manifests as a cross product.

Columns: `content` (path) and `style` (path, or list of paths) are required; `style_weights`
(list of floats) blends several styles; `output` names the output file (relative to the run's
--out folder, and it must stay inside it; default: derived from the input names and a parameter
hash); every StyleParams field may be a column. Null cells and missing columns take the command
line's `--set` value, else the default. Relative input paths (content, style, an init image, a
weights file) resolve against the manifest's folder. Rows are numbered from 0, as pyarrow and
pandas number them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, RowError
from ..gatys.params import INIT_WORDS, WEIGHT_SOURCES, StyleParams
from ..io.files import atomic_path
from ..io.images import OUTPUT_FORMATS, output_bit_depth

PARAM_TYPES = {f.name: f.type for f in fields(StyleParams)}
LIST_PARAMS = {"content_layers", "style_layers", "style_layer_weights", "style_blend"}
COLUMNS = {"content", "style", "style_weights", "output", *PARAM_TYPES} - {"style_blend"}
READ_BATCH = 8192
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
# Parameters that name a file unless they hold one of these words.
FILE_PARAMS = {"init": INIT_WORDS, "weights": WEIGHT_SOURCES}
# Folders of a run's own under --out: no output may land in them.
RESERVED = ("ledger", ".checkpoints", "traces", "report_files")


@dataclass(frozen=True)
class JobSpec:
    row: int
    content: Path
    styles: tuple[Path, ...]
    params: StyleParams
    output: Path      # absolute and resolved (links followed), inside the run's --out folder
    output_name: str  # the same, relative to --out (what the ledger records)


def coerce_param(name: str, value: Any) -> Any:
    """A cell, --set or CLI string to the parameter's Python type; ValueError if it can't be.
    List parameters take a list or a comma-separated string."""
    kind = PARAM_TYPES[name]
    if name in LIST_PARAMS:
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        conv = float if "float" in kind else str
        return tuple(conv(v.strip() if isinstance(v, str) else v) for v in items)
    if "bool" in kind:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"not a boolean: {value!r}")
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    if "int" in kind and "float" not in kind:
        number = float(value)
        if not number.is_integer():
            raise ValueError(f"not an integer: {value!r}")
        return int(number)
    if "float" in kind:
        return float(value)
    return str(value)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`--set name=value` pairs to typed column defaults."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in PARAM_TYPES:
            raise InputError(f"--set {item!r}: expected name=value with name one of "
                             f"{', '.join(sorted(PARAM_TYPES))}")
        try:
            out[name] = coerce_param(name, value)
        except ValueError as e:
            raise InputError(f"--set {item!r}: {e}") from None
        if name in FILE_PARAMS and out[name] not in FILE_PARAMS[name]:  # against the cwd
            out[name] = str(Path(os.path.expanduser(out[name])).absolute())
    return out


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


class RealPaths:
    """os.path.realpath for one read of a manifest, each folder resolved once: rows repeat the
    same folders thousands of times. A file's own name is still checked for a link."""

    def __init__(self) -> None:
        self._folders: dict[Path, Path] = {}

    def __call__(self, path: Path) -> Path:
        if path.name in ("", ".", ".."):
            return Path(os.path.realpath(path))
        folder = self._folders.get(path.parent)
        if folder is None:
            folder = self._folders[path.parent] = Path(os.path.realpath(path.parent))
        resolved = folder / path.name
        return Path(os.path.realpath(resolved)) if resolved.is_symlink() else resolved


def output_path(out_dir: Path, value: str, inputs: Sequence[Path],
                real: RealPaths | None = None) -> Path:
    """Where an `output` cell writes: resolved (`..` and links), inside `out_dir` (resolved),
    outside the run's own folders, and none of the job's inputs. A manifest is data, often
    written by someone else: a cell must not be able to write anywhere else."""
    real = real or RealPaths()
    path = real(_resolve(out_dir, value))
    if not path.is_relative_to(out_dir) or path == out_dir:
        raise ValueError(f"output {value!r} resolves to {path}, outside the --out folder "
                         f"{out_dir}")
    if path.relative_to(out_dir).parts[0] in RESERVED:
        raise ValueError(f"output {value!r} is inside the run's own {RESERVED} folders")
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"output {value!r} must end in .png, .jpg, .jpeg, .tif or .tiff")
    if any(path == real(p) for p in inputs):
        raise ValueError(f"output {value!r} is one of the job's own input images")
    return path


def default_output(content: Path, styles: Sequence[Path], params: StyleParams) -> str:
    spec_hash = hashlib.sha256(json.dumps(params.result_dict(), sort_keys=True).encode())
    return f"{content.stem}__{'+'.join(s.stem for s in styles)}__{spec_hash.hexdigest()[:8]}.png"


def row_to_job(row: dict[str, Any], index: int, base: Path, out_dir: Path,
               overrides: dict[str, Any], real: RealPaths | None = None) -> JobSpec:
    """One manifest row to a job; RowError on anything wrong with it."""
    try:
        if not row.get("content"):
            raise ValueError("content is empty")
        style = row.get("style")
        styles = [style] if isinstance(style, str) else list(style or [])
        if not styles or not all(isinstance(s, str) and s for s in styles):
            raise ValueError("style must be a path or a non-empty list of paths")
        values = dict(overrides)
        cells = {"style_blend": "style_weights"}  # the parameter a column fills, if renamed
        for name in PARAM_TYPES:
            column = cells.get(name, name)
            if row.get(column) is not None:
                try:
                    values[name] = coerce_param(name, row[column])
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{column}: {e}") from None
        for name in FILE_PARAMS:  # a file in a cell resolves as content does
            if row.get(name) is not None and values[name] not in FILE_PARAMS[name]:
                values[name] = str(_resolve(base, values[name]))
        params = StyleParams(**values).validate(n_styles=len(styles), blend_name="style_weights")
        content = _resolve(base, row["content"])
        style_paths = tuple(_resolve(base, s) for s in styles)
        inputs = [content, *style_paths] + ([Path(params.init)] if params.init_is_file else [])
        output = output_path(out_dir, row.get("output")
                             or default_output(content, style_paths, params), inputs, real)
        output_bit_depth(output, params.bit_depth)
        return JobSpec(index, content, style_paths, params, output,
                       output.relative_to(out_dir).as_posix())
    except (InputError, ValueError, TypeError) as e:
        raise RowError(index, e) from None


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) pairs, READ_BATCH rows at a time; checks the columns first."""
    if not path.is_file():
        raise InputError(f"{path}: no such manifest")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a Parquet file ({e})") from None
    names = set(parquet.schema_arrow.names)
    missing = {"content", "style"} - names
    if missing:
        raise InputError(f"{path}: missing required column(s) {sorted(missing)}")
    unknown = names - COLUMNS
    if unknown:
        raise InputError(f"{path}: unknown column(s) {sorted(unknown)}; known: "
                         f"{', '.join(sorted(COLUMNS))}")
    index = 0
    for batch in parquet.iter_batches(batch_size=READ_BATCH):
        for row in batch.to_pylist():
            yield index, row
            index += 1


def read_jobs(path: Path, out_dir: Path, overrides: dict[str, Any] | None = None
              ) -> Iterator[JobSpec | RowError]:
    """Every row as a JobSpec, or the RowError that explains why it is not one."""
    base = path.resolve().parent
    out_dir = Path(os.path.realpath(out_dir))
    real = RealPaths()
    for index, row in read_rows(path):
        try:
            yield row_to_job(row, index, base, out_dir, overrides or {}, real)
        except RowError as e:
            yield e


def write_manifest(rows: list[dict[str, Any]], dest: Path) -> Path:
    """Write rows atomically; list-valued `style` when any row blends styles."""
    table = pa.Table.from_pylist(rows)
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp)
    return dest


def image_files(candidates: Iterable[Path], skipped: list[Path] | None,
                any_extension: bool = False) -> list[Path]:
    """The candidates named like images (any name, with `any_extension`) that are files,
    sorted; the others named like images (folders, broken links) go to `skipped`."""
    named = sorted(p for p in candidates
                   if any_extension or p.suffix.lower() in IMAGE_EXTENSIONS)
    if skipped is not None:
        skipped += [p for p in named if not p.is_file()]
    return [p for p in named if p.is_file()]


def expand_inputs(spec: str, skipped: list[Path] | None = None) -> list[Path]:
    """A folder (its image files, sorted) or a glob pattern. Entries that are not files (a
    folder named like an image, a dangling link) are left out and added to `skipped`."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        found = image_files(path.iterdir(), skipped)
    else:
        import glob

        found = image_files(map(Path, glob.glob(os.path.expanduser(spec), recursive=True)),
                            skipped, any_extension=True)
    if not found:
        raise InputError(f"{spec}: no images found")
    return found


def relative_path(path: Path, relative_to: Path | None) -> str:
    """A manifest cell: `path` relative to the manifest's folder (absolute without one)."""
    if relative_to is None:
        return str(path.resolve())
    return os.path.relpath(path.resolve(), relative_to.resolve())


def build_rows(contents: Sequence[Path], styles: Sequence[Path], grid: dict[str, list[Any]],
               relative_to: Path | None = None) -> list[dict[str, Any]]:
    """contents x styles x parameter grid, one row each."""
    names = list(grid)
    rows = []
    for content, style, values in itertools.product(contents, styles,
                                                    itertools.product(*grid.values())):
        rows.append({"content": relative_path(content, relative_to),
                     "style": relative_path(style, relative_to),
                     **dict(zip(names, values, strict=True))})
    return rows


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`--param name=v1,v2` (list parameters take ';' between values) to typed value lists."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in PARAM_TYPES or name == "style_blend":
            raise InputError(f"--param {item!r}: expected name=v1,v2 with name a parameter")
        split = values.split(";") if name in LIST_PARAMS else values.split(",")
        try:
            grid[name] = [coerce_param(name, v) for v in split if v.strip()]
        except ValueError as e:
            raise InputError(f"--param {item!r}: {e}") from None
        grid[name] = [list(v) if isinstance(v, tuple) else v for v in grid[name]]
    return grid
