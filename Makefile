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
# MONAI + torch (CPU wheel) for bench-train / bench-infer only: Python 3.11, never installed by `make test`.
PYTHON_311 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.11*/bin/python3.11 /usr/bin/python3.11 /usr/local/bin/python3.11) python3.11)
MONAI_VENV := .venv-monai
MONAI_STAMP := $(MONAI_VENV)/.installed
WORKDIR ?= workdir
PYTEST_ARGS ?=

.PHONY: setup tools demo test test-kubeflow test-distributed lint bench-hippocampus bench-ct bench-dicom bench-resample bench-io bench-train bench-infer compile clean fuzz

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

# The DICOMweb tests run a real Orthanc: installed here when missing and apt-get may run (root);
# otherwise those tests skip locally and fail with CI=true.
ORTHANC_PACKAGES := orthanc orthanc-dicomweb

test: setup tools
	@if ! dpkg -s $(ORTHANC_PACKAGES) >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(ORTHANC_PACKAGES) (DICOMweb tests)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq $(ORTHANC_PACKAGES) >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null && apt-get install -y -qq $(ORTHANC_PACKAGES) >/dev/null; }; \
	fi
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff (lint + format) on the tree, mypy on modules/ and components/ (configured in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Hostile-input fuzzing: the seeded mutation corpus of tests/fuzz_corpus.py over many seeds, under a
# 3 GB address-space limit (`make test` runs one seed); nice: the machine's cores are shared.
MEDTFX_FUZZ_SEEDS ?= 20
fuzz: setup
	MEDTFX_FUZZ_SEEDS=$(MEDTFX_FUZZ_SEEDS) nice -n 10 $(PY) -m pytest -q -s tests/test_hostile_input.py -k fuzz_many_seeds

# Placeholder image and bucket: a spec to inspect, not to upload.
compile: setup
	$(VENV)/bin/medtfx compile --runner kubeflow --output $(WORKDIR)/medtfx_pipeline.json \
	  --allow-placeholders --set patient_salt_secret=medtfx-patient-salt

# The compiled KFP package run task by task through the KFP launcher test double (a few minutes).
test-kubeflow: setup
	MEDTFX_KUBEFLOW=1 $(PY) -m pytest -q tests/test_kubeflow_launcher.py

# The pipeline through Beam's portable runner (several SDK worker processes) against the
# DirectRunner, and ingestion + planning from an s3:// dataset on moto (tens of minutes on 2 cores).
test-distributed: setup
	MEDTFX_DISTRIBUTED=1 $(PY) -m pytest -q -m distributed tests/test_beam_portable.py tests/test_object_store_data.py

# Decathlon hippocampus with no settings: the plan, the default 30-minute training budget.
bench-hippocampus: setup
	$(VENV)/bin/medtfx run --data ../shared/data/hippocampus --workdir $(WORKDIR)/hippocampus

# The anisotropic CT phantoms (150 mm field of view, 0.8 x 0.8 x 4 mm, uint16 + intercept, an organ
# with a small lesion), trained with no settings in a 12-minute budget, then predicted from NIfTI
# without naming the modality; prints Dice per structure.
bench-ct: setup
	$(VENV)/bin/medtfx synth $(WORKDIR)/ct_data --kind ct --cases 40
	$(VENV)/bin/medtfx run --data $(WORKDIR)/ct_data --workdir $(WORKDIR)/ct --budget-minutes 12
	$(VENV)/bin/python -m pipeline.tools.bench_ct --data $(WORKDIR)/ct_data --workdir $(WORKDIR)/ct

# The generated JPEG 2000 CT series needs a dcm2niix built with OpenJPEG (Debian's; the PyPI wheel
# cannot decode it): installed here when missing and apt-get may run, else that series is not compared.
bench-dicom: setup
	@if ! dpkg -s dcm2niix >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcm2niix >/dev/null 2>&1 || true; \
	fi
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

# The MONAI side's venv (pipeline/tools/monai-requirements.txt pins torch's "+cpu" wheel and MONAI).
$(MONAI_STAMP): pipeline/tools/monai-requirements.txt
	@test -x $(MONAI_VENV)/bin/python || $(PYTHON_311) -m venv $(MONAI_VENV)
	$(MONAI_VENV)/bin/pip install --quiet -r pipeline/tools/monai-requirements.txt 2>&1 | { $(PIP_FILTER); }
	@touch $(MONAI_STAMP)

# The Trainer's training step vs MONAI's DynUNet on the same planned U-Nets (hippocampus and the
# anisotropic CT), float32 and bfloat16, interleaved, best of 3 rounds; ~10 minutes. Not niced: it
# is a timing. Prints the table; figures in $(WORKDIR)/bench_train.json.
bench-train: setup $(MONAI_STAMP)
	mkdir -p $(WORKDIR)
	$(VENV)/bin/medtfx bench train --json $(WORKDIR)/bench_train.json

# Sliding-window inference of the planned network on a CT-sized volume (512x512x200 at
# 0.8x0.8x2.5 mm on the plan's grid) vs MONAI's sliding_window_inference, mirroring off and on.
bench-infer: setup $(MONAI_STAMP)
	mkdir -p $(WORKDIR)
	$(VENV)/bin/medtfx bench infer --json $(WORKDIR)/bench_infer.json

clean:
	rm -rf $(WORKDIR) .pytest_cache
