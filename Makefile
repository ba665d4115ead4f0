# make setup  - virtual environment with the pinned requirements
# make lint   - ruff check . (rules and exclusions in pyproject.toml)
# make test   - the whole test suite (CPU, offline, synthetic data)
# make study  - study.py with PLAN on DATA: every experiment, evaluation, robustness, Grad-CAM and
#               runs/report/index.html. PLAN=quick takes minutes on a CPU; PLAN=full is the complete study (GPU).
#               *_WEIGHTS=imagenet uses torchvision's download/cache; offline, give a state-dict file
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data/animals10/raw-img
MOBILENET_WEIGHTS ?= imagenet
RESNET_WEIGHTS ?= imagenet
PLAN ?= quick
PY := $(VENV)/bin/python

.PHONY: setup lint test study

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collects no tests: that is a failure here, not a pass.
test: setup
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

study: setup
	$(PY) study.py --plan $(PLAN) --data-dir $(DATA) --mobilenet-weights $(MOBILENET_WEIGHTS) --resnet-weights $(RESNET_WEIGHTS)
