"""Jobs of a bulk run: checking each row's images, the job key, what a batch is and its size.

A job's key is a hash of its input image bytes and its parameters: the same inputs always
give the same key, so a finished output is recognized across runs and never recomputed.
Batches group jobs with the same parameters and output size, in manifest order, so that the
same set of unfinished jobs always forms the same batches; a fixed batch with a checkpoint is
formed again as it was (queue.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputError, RowError, StoreUnavailable
from ..gatys.keys import job_key
from ..gatys.layers import min_input_side
from ..io.copy_budget import linked_copy
from ..io.fetch import Version, concurrently, copy_name, current, local_copy, local_file
from ..io.files import forget_digest, remembered_digest
from ..io.images import check_shape, fit_longest_side, header_size, image_digest, read_rgb
from ..io.listing import Lister
from ..io.objects import ImageObject, copied, forget, image_object, scan_ahead
from ..io.storage import Location, is_url, location
from ..io.video import is_video
from ..video.part import ClipPart, clip_key, clip_part, kept_part
from .manifest import JobSpec


@dataclass(frozen=True)
class Job:
    spec: JobSpec
    key: str
    size: tuple[int, int]  # output (w, h)
    frames: int = 0  # of a video job's part
    inputs: tuple[tuple[str, str], ...] = ()  # (file, sha256) of each input, as keyed
    # Whether its content's targets go to the disk cache: another job of the run reads them
    # (scan.py). At 512 px they take more room than the photo; they cost one forward pass.
    cache_content: bool = field(default=True, compare=False)

    @property
    def id(self) -> tuple[str, str]:
        """What the ledger tracks: rows with the same inputs and parameters share a key but
        not an output."""
        return self.key, self.spec.output_name

    @property
    def group(self) -> str:
        """Jobs that can share a batch: same options, output size and number of styles (and
        images with images, videos with videos, jobs with masks with jobs with masks)."""
        spec = self.spec
        video = {} if spec.video is None else spec.video.to_dict()
        # With masks, one region per style: jobs with other masks share a batch.
        return json.dumps([{**spec.params.to_dict(), **video}, spec.video is not None,
                           self.size, len(spec.styles), spec.regions.active], sort_keys=True)


@dataclass(frozen=True)
class Piece:
    """Frames `first` to `stop` - 1 of pass `index` (0-based) of a multi-pass video, `batch`
    frames at a time (bulk/pass_plan.py)."""

    index: int
    first: int
    stop: int
    batch: int


@dataclass(frozen=True)
class Batch:
    jobs: tuple[Job, ...]
    piece: Piece | None = None  # of its one job's passes; None: the jobs whole
    slots: int = 0  # the jobs go through this many rows (continuous batching); 0: all at once
    # Jobs (Job.id) written before: they run again only so that the batch they were
    # checkpointed in resumes whole (queue.py); not written or counted again.
    kept: frozenset[tuple[str, str]] = frozenset()

    @property
    def pending(self) -> tuple[Job, ...]:
        return tuple(job for job in self.jobs if job.id not in self.kept)

    @property
    def id(self) -> str:
        piece = "" if self.piece is None else repr(self.piece)
        return hashlib.sha256("".join(j.key for j in self.jobs).encode()
                              + piece.encode()).hexdigest()[:16]


def under(batch: Batch, out_dir: Path) -> Batch:
    """The batch with its outputs in `out_dir`, a worker's own copy of the run folder (a run
    folder in object storage, on a machine other than the driver's: io/mirror.attach)."""
    return replace(batch, jobs=tuple(
        replace(job, spec=replace(job.spec, output=out_dir / job.spec.output_name))
        for job in batch.jobs))


def check_unchanged(job: Job, cache: str | None = None, held: Path | None = None) -> None:
    """InputError when a file the job reads is no longer the one its key was made from: its
    output would carry that key over other pixels, and be taken as done if the file came
    back. Checked after the job read its inputs, so a change before or during that read
    shows. A rerun keys the new version and makes it. `held`: the job's own link to its
    video's copy (video/part.kept_part), read where the object is still that version, so
    that a copy trimmed meanwhile is not downloaded again to be checked."""
    for where, digest in job.inputs:
        try:  # a video is hashed whole only if it changed (io/files.remembered_digest)
            now = (_video_digest(where, cache, held) if is_video(where)
                   else image_digest(where))
        except OSError as e:
            raise InputError(f"{where}: cannot read ({e.strerror or e})") from None
        if now != digest:
            # The scan's digest may be a remembered one, gone stale: a file's is forgotten, an
            # object's read again (io/objects.py). A video's is keyed by what changed.
            if is_url(where) and not is_video(where):
                with contextlib.suppress(InputError, OSError):
                    image_object(where, cache, fresh=True)
            elif not is_video(where):
                forget_digest(where, cache)
            raise InputError(f"{where}: changed since the run's scan (the job's key names the "
                             "file as it was then); run again to stylize the new version")


def _video_digest(where: Location, cache: str | None, held: Path | None) -> str:
    if is_url(where) and held is not None and \
            linked_copy(held).name == copy_name(current(str(where))):
        return remembered_digest(held, cache, fetched=True)
    return remembered_digest(local_file(where), cache, is_url(where))


def forget_input_digests(jobs: Iterable[Job], objects: Mapping[str, ImageObject],
                         cache: str | None = None) -> None:
    """Forget what this machine remembers of the jobs' images (remembered_digest; of those
    in `objects`, the scan's image objects, io/objects.py), so that the next run reads them
    again: for jobs that failed. One may have failed for a stale entry, which the worker that
    found it forgot in its own cache (check_unchanged); on another machine that is not the
    cache that keys the next run."""
    for job in jobs:
        for where, _ in job.inputs:
            if where in objects:
                forget([objects[where]], cache)
            elif not is_url(where) and not is_video(where):
                forget_digest(where, cache)


def slotted(job: Job) -> bool:
    """Jobs that go through slots (gatys/slots.py): images made in one stage with L-BFGS."""
    params = job.spec.params
    return (job.spec.video is None and params.optimizer == "lbfgs"
            and len(params.scale_sizes()) == 1)


class Inspector:
    """Checks every image a job needs (each distinct file once) and computes its key.

    `decode=True` (manifest validate) decodes every pixel; `decode=False` (pipeline run) reads
    only headers, so a 100k-row run starts in minutes, not hours: an image that is corrupt past
    its header then fails its own job in the worker, with the same message, and each file's
    digest is remembered in the `cache` (io/files.remembered_digest), so a rerun reads only
    the headers (a video's is remembered either way); an object's digest and size are
    remembered by its URL and version (io/objects.py), so a rerun reads none of its bytes.
    A store that does not answer
    is no row's fault: StoreUnavailable ends the scan instead of making every row invalid.
    """

    def __init__(self, decode: bool = True, cache: str | None = None) -> None:
        self.decode, self.cache = decode, cache
        self._seen: dict[Location, tuple[str, tuple[int, int]]] = {}
        self.objects: dict[str, ImageObject] = {}  # the image objects, by URL
        self._asked: dict[str, Version] = {}  # with `decode`: the objects asked ahead, copied
        self._lister = Lister()
        self._folders: dict[Path, Path | None] = {}  # output folder -> a file blocking it

    def _image(self, path: Location, row: int) -> tuple[str, tuple[int, int]]:
        if path not in self._seen:
            try:
                if self.decode:  # one read: decode and hash the same bytes
                    img, digest = read_rgb(self._asked.pop(str(path), path))
                    self._seen[path] = (digest, img.size)
                elif is_url(path):
                    self._remember(image_object(str(path), self.cache))
                else:  # the header first: it names a folder or a broken link clearly
                    size = header_size(path)
                    self._seen[path] = (remembered_digest(path, self.cache), size)
            except StoreUnavailable:  # the run's problem, not the row's: the scan stops
                raise
            except InputError as e:
                raise RowError(row, e) from None
            except OSError as e:  # unreadable after the header was read
                raise RowError(row, f"{path}: cannot read ({e.strerror or e})") from None
        return self._seen[path]

    def ask_ahead(self, images: list[Location], videos: list[Location]) -> None:
        """What the next rows need of the objects among their images and videos, asked at
        once (a round trip each, all in flight together): with `decode`, their copies; else
        an image's digest and size, and a video's copy (its probe reads it). The versions of
        many images of one folder come from its listing (io/listing.py)."""
        images = [f for f in images if f not in self._seen]
        listed = self._lister.versions(images)
        if self.decode:
            self._asked |= concurrently(lambda url: copied(url, listed.get(url)), images)
            concurrently(local_copy, videos)
            return
        for obj in scan_ahead(images, videos, self.cache, listed).values():
            self._remember(obj)

    def _remember(self, obj: ImageObject) -> None:
        self.objects[obj.version.url] = obj
        self._seen[obj.version.url] = (obj.digest, obj.size)

    def _destination(self, output: Path, row: int) -> None:
        """The output can be written: not a folder, and no file where a folder must be."""
        if output.is_dir():
            raise RowError(row, f"output {output} is an existing folder")
        parent = output.parent
        if parent not in self._folders:
            blocked = next((p for p in (parent, *parent.parents) if p.exists()), None)
            self._folders[parent] = None if blocked is None or blocked.is_dir() else blocked
        if (blocked := self._folders[parent]) is not None:
            raise RowError(row, f"output {output}: {blocked} is a file, not a folder")

    def _video(self, spec: JobSpec) -> tuple[str, tuple[int, int], ClipPart]:
        """A video's digest, frame size and the part the row asks for (probed: the first
        frame decoded, also without `decode`; the others fail the job in the worker)."""
        assert spec.video is not None
        try:
            part = clip_part(spec.content, spec.video)  # of the local copy of a URL
            with kept_part(spec.content, part) as kept:  # (its name may be trimmed meanwhile)
                digest = remembered_digest(kept.info.path, self.cache, is_url(spec.content))
            return digest, part.info.size, part
        except StoreUnavailable:
            raise
        except InputError as e:
            raise RowError(spec.row, e) from None
        except OSError as e:
            raise RowError(spec.row, f"{spec.content}: cannot read ({e.strerror or e})") from None

    def __call__(self, spec: JobSpec) -> Job:
        params = spec.params
        if spec.video is not None:
            digest, size, part = self._video(spec)
        else:
            digest, size = self._image(spec.content, spec.row)
        out_size = fit_longest_side(size, params.size, params.size_bucket)
        if min(out_size) < min_input_side(params.layers):
            raise RowError(spec.row, f"{spec.content}: output would be {out_size[0]}x"
                                     f"{out_size[1]}, too small for these layers")
        style_digests = [self._image(s, spec.row)[0] for s in spec.styles]
        init = self._image(location(params.init), spec.row)[0] if params.init_is_file else None
        regions = self._regions(spec, size)
        if params.weights_is_file and not Path(params.weights).is_file():
            raise RowError(spec.row, f"weights file {params.weights} does not exist")
        self._destination(spec.output, spec.row)
        inputs = ((str(spec.content), digest),
                  *((str(f), self._seen[f][0]) for f in spec.inputs[1:]))
        if spec.video is not None:
            return Job(spec, clip_key(digest, part, style_digests, params, spec.video, init,
                                      regions),
                       out_size, part.count, inputs)
        return Job(spec, job_key(digest, style_digests, params, init, regions), out_size,
                   inputs=inputs)

    def _regions(self, spec: JobSpec, size: tuple[int, int]) -> dict[str, Any] | None:
        """The job key's part of a row's regions; each file checked (with `decode`, decoded),
        and the content's masks of the content's shape (io/masks.py's rule)."""
        regions = spec.regions
        styles = regions.style_masks or regions.style_segmentations
        pairs = [(m, size) for m in regions.content_files()]
        if styles:  # one per style image (Regions.validate)
            pairs += [(m, self._image(s, spec.row)[1])
                      for m, s in zip(styles, spec.styles, strict=True)]
        for path, like in pairs:
            try:
                check_shape(path, self._image(location(path), spec.row)[1], like, "mask")
            except StoreUnavailable:
                raise
            except InputError as e:
                raise RowError(spec.row, e) from None
        return regions.key(lambda path: self._image(location(path), spec.row)[0])


# Pixels in flight on the CPU, all workers together: batches up to this measured faster per
# image than single images (bench/bench_batch.py, both CPU kinds of BENCHMARKS.md); larger
# sizes were not measured, so they run alone.
CPU_BATCH_PIXELS = 4 * 512 * 384
CPU_BATCH_IMAGES = 4  # per worker: larger batches were not measured
# CUDA (bench_batch with CUDA graphs): batch 8 was the best of 1, 2, 4, 8 up to 512x384, and
# at 1024x768 batches were slower per image than 1, so larger images run alone.
CUDA_BATCH = 8
CUDA_BATCH_PIXELS = 512 * 384


def auto_cpu_workers(sizes: Iterable[tuple[int, int]], cores: int) -> int:
    """CPU workers for `--workers 0`. Two processes with half the cores each beat one with all
    of them on both CPU kinds measured (bench/bench_workers.py): no thread hand-offs, and one's
    memory-bound work overlaps the other's GEMMs. Two, not more: more were not measured. And
    only when two of the largest jobs fit the pixel budget together, so peak memory stays
    within what one worker was measured at."""
    largest = max((w * h for w, h in sizes), default=0)
    return 2 if cores >= 2 and 2 * largest <= CPU_BATCH_PIXELS else 1


def default_batch_size(device: str, size: tuple[int, int], cpu_workers: int = 1) -> int:
    """Jobs per batch when --batch-size is 0: on CUDA 8 up to 512x384 px, else 1 (the memory
    check splits a batch that cannot fit); on the CPU at most CPU_BATCH_IMAGES per worker, and
    CPU_BATCH_PIXELS in flight over all the CPU workers (beyond that, unmeasured: one at a
    time). With two workers, batches of 4 beat batches of 2 on the Xeon, most on small
    images (AMX GEMMs grow with the batch), and were no slower where measured before
    (bench_workers; BENCHMARKS.md); the pixel budget keeps large images to fewer."""
    if device.startswith("cuda"):
        return CUDA_BATCH if size[0] * size[1] <= CUDA_BATCH_PIXELS else 1
    share = CPU_BATCH_PIXELS // cpu_workers // (size[0] * size[1])
    return max(1, min(CPU_BATCH_IMAGES, share))
