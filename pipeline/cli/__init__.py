"""The `pipeline` command: options, progress display, summaries."""

from .commands import app

__all__ = ["app"]
