"""The run report: `write_report(out_dir)` writes <out>/report.html (see page.py)."""

from .page import write_report

__all__ = ["write_report"]
