"""The `pipeline` command, one module per group of commands (each registers its commands on
`app`, in the order --help lists them), the options made from declared fields, and the rich
display."""

from . import stylize  # noqa: I001  (the order of --help)
from . import video, run, manifest, cache
from .app import app, main

__all__ = ["app", "cache", "main", "manifest", "run", "stylize", "video"]
