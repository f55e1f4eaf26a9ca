"""A job's key: what decides its image (its images' bytes and the parameters that decide the
result), hashed. Outputs carry it, and a rerun finds a job done by it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .params import StyleParams


def job_key(content: str, styles: list[str], params: StyleParams, init: str | None = None,
            regions: dict[str, Any] | None = None) -> str:
    """The key of a job from its images' digests and the parameters that decide its image;
    `regions`: Regions.key's."""
    payload: dict[str, object] = {"content": content, "styles": styles,
                                  "params": params.result_dict()}
    if init is not None:  # an init image's bytes matter as the content's do
        payload["init"] = init
    if regions is not None:
        payload["regions"] = regions
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
