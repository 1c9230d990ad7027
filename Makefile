# medtfx: `make demo` sets everything up and runs the pipeline on synthetic phantoms;
# `make test` runs the test suite. Both install into .venv (Python 3.10) only when needed.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
# This machine's pip.conf names two local indexes that may not exist; drop pip's per-package warning about it.
PIP_FILTER := grep -v "^WARNING: Location 'file:" || true
# pyenv's python3.10 shim fails unless 3.10 is selected, so prefer a real interpreter path.
PYTHON_310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10) python3.10)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
WORKDIR ?= workdir
PYTEST_ARGS ?=

.PHONY: setup tools demo test bench-hippocampus bench-dicom bench-resample bench-io compile clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON_310) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==24.2"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]" 2>&1 | { $(PIP_FILTER); }
	@touch $(STAMP)

# Static checkers for k8s/ live in their own venv so their pins never fight the TFX stack.
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): k8s/tools-requirements.txt
	@test -x $(TOOLS)/bin/python || $(PYTHON_310) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet -r k8s/tools-requirements.txt 2>&1 | { $(PIP_FILTER); }
	@touch $(TOOLS_STAMP)

demo: setup
	$(VENV)/bin/medtfx demo --workdir $(WORKDIR)/demo

test: setup tools
	$(PY) -m pytest -q $(PYTEST_ARGS)

compile: setup
	$(VENV)/bin/medtfx compile --runner kubeflow --output $(WORKDIR)/medtfx_pipeline.json

# Decathlon hippocampus, ~19 minutes of training on CPU (22 min in all); nice: the machine's cores are shared.
bench-hippocampus: setup
	nice -n 10 $(VENV)/bin/medtfx run --data ../shared/data/hippocampus --workdir $(WORKDIR)/hippocampus --preset hippocampus

bench-dicom: setup
	mkdir -p $(WORKDIR)
	$(VENV)/bin/medtfx bench dicom --json $(WORKDIR)/bench_dicom.json
	MEDTFX_BENCH=1 $(PY) -m pytest -q tests/test_dicom_real.py -k bench

bench-resample: setup
	mkdir -p $(WORKDIR)
	$(VENV)/bin/medtfx bench resample --json $(WORKDIR)/bench_resample.json

# The seed's volume-reading benchmark (in-memory / float_list TFRecord / generator) vs medtfx's
# int16 records, cached and streaming; ~1 GB of temporary records, a few minutes.
bench-io: setup
	mkdir -p $(WORKDIR)
	$(VENV)/bin/medtfx bench io --json $(WORKDIR)/bench_io.json

clean:
	rm -rf $(WORKDIR) .pytest_cache
