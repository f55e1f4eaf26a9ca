"""`python -m export`: the same as `pipeline export`."""

import sys

from pipeline.cli import main

main(["export", *sys.argv[1:]], prog_name="python -m")
