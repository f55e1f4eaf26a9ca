"""Parquet manifests: one row per output image. Reading in batches, turning rows into jobs,
validating every row (building them is build.py's).

Columns: `content` (path) and `style` (path, or list of paths) are required; `style_weights`
(list of floats) blends several styles; `masks`, `style_masks` (lists of paths),
`segmentation`, `style_segmentations` and `colors` give it regions (Regions' fields);
`output` names the output file (relative to the run's --out folder, and it must stay inside
it; default: derived from the input names and a parameter hash); every StyleParams field may
be a column. A row whose content is a video (by its extension) is a video job: its output is a
video (.mp4, .m4v, .mov, .mkv), and every VideoParams field may be a column too. Null cells
and missing columns take the command line's `--set` value, else the default. Relative input
paths (content, style, an init image, a weights file, masks) resolve against the manifest's
folder. Rows are numbered from 0, as pyarrow and pandas number them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, RowError, did_you_mean
from ..gatys.params import INIT_WORDS, WEIGHT_SOURCES, StyleParams
from ..gatys.region_params import NO_REGIONS, Regions
from ..io.files import atomic_path
from ..io.images import OUTPUT_FORMATS, nameless, output_bit_depth
from ..io.storage import Location, is_url, location, object_identity, parent, read_bytes
from ..io.storage import name as file_name
from ..io.video import is_video
from ..options import base_type, check_field, coerce, declared, spec
from ..video.layout import ENCODED
from ..video.params import VideoParams

# Each parameter's column: its own name, or the one its option declares.
PARAM_COLUMNS = {f.name: spec(f).column or f.name for f in declared(StyleParams)}
# A video row's options beyond StyleParams'.
VIDEO_COLUMNS = {f.name: spec(f).column or f.name for f in declared(VideoParams)}
# A row's regions (masks): files, relative to the manifest as content is, and colours.
REGION_COLUMNS = {f.name: spec(f).column or f.name for f in declared(Regions)}
REGION_FILES = ("masks", "style_masks", "segmentation", "style_segmentations")
# Columns that hold lists.
LIST_COLUMNS = {*(n for n in PARAM_COLUMNS if base_type(StyleParams, n)[1]),
                *(n for n in REGION_COLUMNS if base_type(Regions, n)[1])}
COLUMNS = {"content", "style", "output", *PARAM_COLUMNS.values(), *VIDEO_COLUMNS.values(),
           *REGION_COLUMNS.values()}
READ_BATCH = 8192
# Parameters that name a file unless they hold one of these words.
FILE_PARAMS = {"init": INIT_WORDS, "weights": WEIGHT_SOURCES}
# Folders of a run's own under --out: no output may land in them.
RESERVED = ("ledger", ".checkpoints", "traces", "report_files")


@dataclass(frozen=True)
class JobSpec:
    row: int
    content: Location  # a path, or a URL in object storage (io/storage.py)
    styles: tuple[Location, ...]
    params: StyleParams
    output: Path      # absolute and resolved (links followed), inside the run's --out folder
    output_name: str  # the same, relative to --out (what the ledger records)
    video: VideoParams | None = None  # a video job's options; None for an image
    regions: Regions = NO_REGIONS  # its masks (paths resolved)

    def settings(self) -> dict[str, Any]:
        """Every option of the job, as the ledger records them (its regions' only when it
        has masks)."""
        video = {} if self.video is None else self.video.to_dict()
        regions = self.regions.to_dict() if self.regions.active else {}
        return {**self.params.to_dict(), **video, **regions}

    @property
    def inputs(self) -> list[Location]:
        return job_inputs(self.content, self.styles, self.params, self.regions)


def job_inputs(content: Location, styles: Sequence[Location], params: StyleParams,
               regions: Regions) -> list[Location]:
    """Every file a job reads: its content, styles, init image and region files."""
    return [content, *styles, *([location(params.init)] if params.init_is_file else []),
            *(location(f) for f in regions.files())]


def _record(name: str) -> type:
    """The record whose field a column is."""
    return (VideoParams if name in VIDEO_COLUMNS else Regions if name in REGION_COLUMNS
            else StyleParams)


def coerce_param(name: str, value: Any) -> Any:
    """A cell, --set or CLI string to the parameter's type (options.coerce)."""
    return coerce(_record(name), name, value)


def _resolve_files(value: Any, base: Location) -> Any:
    """A file column's value (a path or a list of them) resolved against `base`."""
    if isinstance(value, tuple):
        return tuple(str(_resolve(base, v)) for v in value)
    return str(_resolve(base, value))


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`--set name=value` pairs to typed column defaults."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        known = [*PARAM_COLUMNS, *VIDEO_COLUMNS, *REGION_COLUMNS]
        if not sep and name in known:
            raise InputError(f"--set {item!r}: no value; give {name}=value")
        if not sep or name not in known:
            raise InputError(f"--set {item!r}{did_you_mean(name, known)}: expected name=value "
                             f"with name one of {', '.join(sorted(known))}")
        try:  # its range too, here, not in every row it fills (cross-field rules there)
            out[name] = coerce_param(name, value)
            check_field(_record(name), name, out[name])
        except (ValueError, InputError) as e:
            raise InputError(f"--set {item!r}: {e}") from None
        if name in FILE_PARAMS and out[name] not in FILE_PARAMS[name]:  # against the cwd
            out[name] = str(Path(os.path.expanduser(out[name])).absolute())
        if name in REGION_FILES:
            out[name] = _resolve_files(out[name], Path.cwd())
    return out


@functools.lru_cache(maxsize=1 << 16)  # rows name the same contents and styles thousands of times
def _resolve(base: Location, value: str) -> Location:
    """A cell's path: a URL as it is; else relative to the manifest's folder `base` (a URL
    for a manifest in object storage)."""
    if is_url(value):
        return value
    if isinstance(base, str) and not value.startswith(("/", "~")):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(f'{rest}/{value}')}"
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (Path(base) / path)


class RealPaths:
    """os.path.realpath for one read of a manifest, each folder resolved once: rows repeat the
    same folders thousands of times. A file's own name is still checked for a link."""

    def __init__(self) -> None:
        self._folders: dict[Path, Path] = {}
        self._files: dict[Path, Path] = {}  # an input is checked against every row's output

    def __call__(self, path: Path) -> Path:
        if (known := self._files.get(path)) is None:
            known = self._files[path] = self._resolve(path)
        return known

    def _resolve(self, path: Path) -> Path:
        if path.name in ("", ".", ".."):
            return Path(os.path.realpath(path))
        folder = self._folders.get(path.parent)
        if folder is None:
            folder = self._folders[path.parent] = Path(os.path.realpath(path.parent))
        resolved = folder / path.name
        return Path(os.path.realpath(resolved)) if resolved.is_symlink() else resolved


def output_path(out_dir: Path, value: str, inputs: Sequence[Location],
                real: RealPaths | None = None, video: bool = False) -> Path:
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
    if nameless(path):
        raise ValueError(f"output {value!r} has no name before its extension")
    if video and path.suffix.lower() not in ENCODED:
        raise ValueError(f"output {value!r} of a video must end in {', '.join(ENCODED)}")
    if not video and path.suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"output {value!r} must end in .png, .jpg, .jpeg, .tif or .tiff")
    if any(path == real(p) for p in inputs if isinstance(p, Path)):
        raise ValueError(f"output {value!r} is one of the job's own input images")
    return path


def params_tag(params: StyleParams, video: VideoParams | None = None,
               regions: Regions = NO_REGIONS) -> str:
    """What default output names carry of the parameters: a hash of those that decide the
    image (and, for a video, of its options; with masks, of the regions)."""
    decided: dict[str, Any] = params.result_dict()
    if video is not None:
        decided["video"] = video.to_dict()
    if regions.active:
        decided["regions"] = regions.to_dict()
    return hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:8]


def default_output(content: Location, styles: Sequence[Location], tag: str,
                   names: dict[Path, str] | None = None) -> str:
    """`content__style__tag.png` (`.mp4` for a video), each input called by its stem or by
    its name in `names`."""
    def name(path: Location) -> str:
        return names[path] if names else Path(file_name(str(path))).stem

    suffix = ".mp4" if is_video(content) else ".png"
    return f"{name(content)}__{'+'.join(name(s) for s in styles)}__{tag}{suffix}"


def row_to_job(row: dict[str, Any], index: int, base: Location, out_dir: Path,
               overrides: dict[str, Any], real: RealPaths | None = None) -> JobSpec:
    """One manifest row to a job; RowError on anything wrong with it."""
    try:
        if not row.get("content"):
            raise ValueError("content is empty")
        style = row.get("style")
        styles = [style] if isinstance(style, str) else list(style or [])
        if not styles or not all(isinstance(s, str) and s for s in styles):
            raise ValueError("style must be a path or a non-empty list of paths")
        values = _cells(row, PARAM_COLUMNS, overrides)
        for name in FILE_PARAMS:  # a file in a cell resolves as content does
            if row.get(name) is not None and values[name] not in FILE_PARAMS[name]:
                values[name] = str(_resolve(base, values[name]))
        params = StyleParams(**values).validate(n_styles=len(styles), blend_name="style_weights")
        content = _resolve(base, row["content"])
        video = (VideoParams(**_cells(row, VIDEO_COLUMNS, overrides)).validate()
                 if is_video(content) else None)
        region_values = _cells(row, REGION_COLUMNS, overrides)
        for name in REGION_FILES:  # --set's are resolved already, against the cwd
            if row.get(REGION_COLUMNS[name]) is not None and region_values[name]:
                region_values[name] = _resolve_files(region_values[name], base)
        regions = Regions(**region_values).validate(len(styles), params)
        style_paths = tuple(_resolve(base, s) for s in styles)
        inputs = job_inputs(content, style_paths, params, regions)
        output = output_path(out_dir, row.get("output")
                             or default_output(content, style_paths,
                                                    params_tag(params, video, regions)),
                             inputs, real, video=video is not None)
        if video is None:
            output_bit_depth(output, params.bit_depth)
        return JobSpec(index, content, style_paths, params, output,
                       output.relative_to(out_dir).as_posix(), video, regions)
    except (InputError, ValueError, TypeError) as e:
        raise RowError(index, e) from None


def _cells(row: dict[str, Any], columns: dict[str, str], overrides: dict[str, Any]
           ) -> dict[str, Any]:
    """The values of `columns`' fields: the row's cell, else --set's."""
    values = {name: overrides[name] for name in columns if name in overrides}
    for name, column in columns.items():
        if row.get(column) is not None:
            try:
                values[name] = coerce_param(name, row[column])
            except (ValueError, TypeError) as e:
                raise ValueError(f"{column}: {e}") from None
    return values


def read_rows(path: Location) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) pairs, READ_BATCH rows at a time; checks the columns first. A
    manifest in object storage is read whole."""
    if isinstance(path, str):
        source: Any = pa.BufferReader(read_bytes(path))
    elif not path.is_file():
        raise InputError(f"{path}: no such manifest")
    else:
        source = path
    try:
        parquet = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a Parquet file ({e})") from None
    names = set(parquet.schema_arrow.names)
    missing = {"content", "style"} - names
    if missing:
        raise InputError(f"{path}: missing required column(s) {sorted(missing)}")
    unknown = names - COLUMNS
    if unknown:
        hints = "".join(did_you_mean(u, COLUMNS) for u in sorted(unknown))
        raise InputError(f"{path}: unknown column(s) {sorted(unknown)}{hints}; known: "
                         f"{', '.join(sorted(COLUMNS))}")
    index = 0
    for batch in parquet.iter_batches(batch_size=READ_BATCH):
        for row in batch.to_pylist():
            yield index, row
            index += 1


def row_inputs(row: dict[str, Any], base: Location, overrides: dict[str, Any]
               ) -> list[Location]:
    """The image files a row reads (content, styles, an init image), from its cells as they
    are, also when the row is invalid for another reason: no row may write over them."""
    style = row.get("style")
    init = row.get("init") or overrides.get("init")
    regions = [row.get(REGION_COLUMNS[name]) for name in REGION_FILES]
    cells = [row.get("content"), *(style if isinstance(style, list) else [style]),
             init if init not in INIT_WORDS else None,
             *(v for cell in regions for v in (cell if isinstance(cell, list) else [cell]))]
    return [_resolve(base, cell) for cell in cells if isinstance(cell, str) and cell]


def read_jobs(path: Location, out_dir: Path, overrides: dict[str, Any] | None = None,
              inputs: dict[Location, int] | None = None) -> Iterator[JobSpec | RowError]:
    """Every row as a JobSpec, or the RowError that explains why it is not one. `inputs`, if
    given, collects every row's input images (files with links resolved, objects by
    storage.object_identity) with the first row reading each."""
    base = parent(path) if isinstance(path, str) else path.resolve().parent
    out_dir = Path(os.path.realpath(out_dir))
    real = RealPaths()
    for index, row in read_rows(path):
        if inputs is not None:
            for image in row_inputs(row, base, overrides or {}):
                inputs.setdefault(real(image) if isinstance(image, Path)
                                  else object_identity(image), index)
        try:
            yield row_to_job(row, index, base, out_dir, overrides or {}, real)
        except RowError as e:
            yield e


def write_manifest(rows: list[dict[str, Any]], dest: Path) -> Path:
    """Write rows atomically; a column that some rows lack is null in those; list-valued
    `style` when any row blends styles."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows])
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp)
    return dest
