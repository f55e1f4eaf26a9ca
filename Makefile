# style-pipeline: `make demo` and `make test` are the two commands; each installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GPU    ?=
EXTRA  := $(if $(GPU),gpu,cpu)
OTHER_ORT := $(if $(GPU),onnxruntime,onnxruntime-gpu)
STAMP  := $(VENV)/.installed-$(EXTRA)
DEMO_OUT ?= demo-out
MANIFEST ?= manifests/demo.parquet
OUT      ?= out
RUN_ARGS ?=
# Photos and paintings for the early-stopping table (not part of the project)
BENCH_IMAGES ?= ../shared/data/images
# The time-to-quality reference: the classic method (500 plain L-BFGS iterations) to the end
QUALITY_REFERENCE := reference=iterations:500,tol:0,lbfgs_precondition:0,lbfgs_scaling:standard

.PHONY: help install browser test demo run lint docs bench bench-gpu clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

install: $(STAMP)  ## create .venv and install the package with its cpu, dev, ray, video and s3 extras (GPU=1: gpu)

# torch is pinned in pyproject.toml; pip takes it from the local wheel copy where there is one.
# onnxruntime and onnxruntime-gpu install the same module: the other one is removed if present.
# setuptools' advice on editable installs (a UserWarning of its build backend) is not for users.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	! $(PY) -m pip show -q $(OTHER_ORT) >/dev/null 2>&1 || $(PY) -m pip uninstall -q -y $(OTHER_ORT)
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q -e ".[$(EXTRA),dev,ray,video,s3]"
	rm -f $(VENV)/.installed-*
	touch $@

# The report's browser test drives Debian's chromium through its chromedriver: installed here
# where apt-get can (CI, a Debian machine as root); elsewhere that one test skips and says why.
browser:  ## install Debian's chromium for the report's browser test, where apt-get can
	@command -v chromedriver >/dev/null || ! command -v apt-get >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; } || \
	  echo "chromium could not be installed: the report's browser test will skip"

# One test process per core, handed tests one at a time as each finishes (tests/conftest.py:
# those sharing a costly fixture go to one process together).
# Our modules compiled once: where PYTHONDONTWRITEBYTECODE is set (CI images), each of the
# processes the tests start would compile them again.
test: install browser  ## ruff, then the test suite (CPU; CUDA tests skip without a GPU)
	$(VENV)/bin/ruff check pipeline export tests bench
	$(PY) -m compileall -q pipeline export tests >/dev/null
	$(PY) -m pytest tests -n auto

lint: install  ## ruff alone
	$(VENV)/bin/ruff check pipeline export tests bench

docs: install  ## rewrite the option tables of docs/options.md and manifests/SCHEMA.md
	$(PY) -m pipeline.cli.reference

# Draws the example images (nothing is downloaded), then runs the example manifest on the CPU:
# its two jobs share one output size and parameters, so they run as one batch of 2. The README's
# picture of it: python -m bench.demo_picture demo-out docs/demo.jpg
demo: install  ## draw example images and stylize manifests/demo.parquet on the CPU
	$(PY) -m pipeline.io.examples manifests/images
	$(VENV)/bin/pipeline run manifests/demo.parquet --out $(DEMO_OUT) --devices cpu --batch-size 2
	$(VENV)/bin/pipeline status $(DEMO_OUT)

# For CI pipelines: make run MANIFEST=path/to/manifest.parquet OUT=folder [RUN_ARGS="--devices auto"]
run: install  ## make run MANIFEST=m.parquet OUT=folder [RUN_ARGS="--devices auto"]
	$(VENV)/bin/pipeline run $(MANIFEST) --out $(OUT) $(RUN_ARGS)

# Prints every table of BENCHMARKS.md (about three hours on a quiet 2-core CPU).
bench: install  ## print every CPU table of BENCHMARKS.md (hours)
	$(PY) -m bench.flops
	$(PY) -m bench.bench_vs_pastiche
	$(PY) -m bench.bench_schedule
	$(PY) -m bench.bench_batch --sizes 256
	$(PY) -m bench.bench_batch --sizes 512 --batches 1,2,4
	$(PY) -m bench.bench_layers
	$(PY) -m bench.bench_winograd
	$(PY) -m bench.bench_winograd --threads 2
	$(PY) -m bench.bench_gram
	$(PY) -m bench.bench_workers
	$(PY) -m bench.bench_continuous
	$(PY) -m bench.bench_heap
	$(PY) -m bench.bench_precision
	$(PY) -m bench.bench_memory --sizes 1024,2048 --block 512
	$(PY) -m bench.bench_memory --sizes 1024 --block 0 --regions 4
	$(PY) -m bench.bench_blocks --size 1024 --blocks 256,512,1024 --iterations 2 --rounds 3
	$(PY) -m bench.bench_targets
	$(PY) -m bench.bench_manifest
	$(PY) -m bench.bench_digests --photo $(BENCH_IMAGES)/boston.jpg --style $(BENCH_IMAGES)/starry_night.jpg
	$(PY) -m bench.bench_report
	$(PY) -m bench.bench_object_storage --rounds 3
	$(PY) -m bench.bench_scan
	$(PY) -m bench.bench_distributors
	$(PY) -m bench.bench_distributors --iterations 160
	$(PY) -m bench.bench_video --size 128 --frames 8 --weights 0,200,1000,5000
	$(PY) -m bench.bench_video --size 128 --frames 8 --weights 0,1000 --passes 4x40
	$(PY) -m bench.bench_video --speed --size 256 --frames 6
	$(PY) -m bench.bench_video_workers --size 128 --frames 12 --passes 4x40
	$(PY) -m bench.bench_tol --images $(BENCH_IMAGES)
	$(PY) -m bench.bench_quality --images $(BENCH_IMAGES) --size 512 --figure docs/time-to-quality.png --sides docs \
	  --json bench-out/quality-512.json --runs '$(QUALITY_REFERENCE);default='
	$(PY) -m bench.bench_quality --images $(BENCH_IMAGES) --size 256 \
	  --json bench-out/quality-256.json --runs '$(QUALITY_REFERENCE);default='

# The GPU tables of BENCHMARKS.md on the first CUDA device: make install GPU=1 && make bench-gpu
bench-gpu: install  ## the GPU tables of BENCHMARKS.md on the first CUDA device
	PY=$(PY) bash bench/gpu.sh

clean:  ## remove .venv, demo-out, bench-out and caches
	rm -rf $(VENV) $(DEMO_OUT) bench-out .pytest_cache .ruff_cache *.egg-info
