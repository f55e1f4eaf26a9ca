"""`python -m export`: the same as `pipeline export`."""

import sys

from pipeline.cli import app

app(["export", *sys.argv[1:]], prog_name="python -m")
