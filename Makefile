# make setup  - virtual environment with the pinned requirements
# make test   - the whole test suite (CPU, offline, synthetic data)
# make study  - split, cache and train the scratch CNN on DATA (default ../shared/data/animals10/raw-img)
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data/animals10/raw-img
PY := $(VENV)/bin/python

.PHONY: setup test study

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

# pytest exits 5 when it collects no tests: that is a failure here, not a pass.
test: setup
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

study: setup
	$(PY) part1_scratch_cnn.py --data-dir $(DATA)
