# make setup  - virtual environment with the pinned requirements
# make test   - the whole test suite (CPU, offline, synthetic data)
# make study  - on DATA: scratch CNN (part 1), MobileNetV2 head on cached features (part 2), evaluation, comparison
#               MOBILENET_WEIGHTS=imagenet uses torchvision's download/cache; offline, give a state-dict file
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data/animals10/raw-img
MOBILENET_WEIGHTS ?= imagenet
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
	$(PY) part2_mobilenet.py --mode fc --cache-features --epochs 30 --data-dir $(DATA) --weights $(MOBILENET_WEIGHTS)
	$(PY) evaluate.py --ckpt runs/best.pt
	$(PY) evaluate.py --compare runs
