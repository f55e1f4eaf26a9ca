"""A job's key: what decides its image (its images' bytes and the parameters that decide the
result), hashed. Outputs carry it, and a rerun finds a job done by it. A video job's key
(video/part.py) is made the same way."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .params import StyleParams


def job_key(content: str, styles: list[str], params: StyleParams, init: str | None = None,
            regions: dict[str, Any] | None = None) -> str:
    """The key of a job from its images' digests and the parameters that decide its image;
    `regions`: Regions.key's."""
    return hashed({"content": content, "styles": styles, "params": params.result_dict()},
                  init, regions)


def hashed(payload: dict[str, Any], init: str | None, regions: dict[str, Any] | None) -> str:
    """sha256 of `payload` with the init image's digest and the regions where the job has
    them (a value JSON lacks, such as a Fraction, as its str)."""
    if init is not None:  # an init image's bytes matter as the content's do
        payload["init"] = init
    if regions is not None:
        payload["regions"] = regions
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
