# make setup  - virtual environment with the requirements at the versions constraints.txt pins
# make lock   - regenerate constraints.txt: what a fresh install of requirements.txt resolves to now
# make lint   - ruff check . (rules and exclusions in pyproject.toml)
# make test   - the whole test suite (CPU, offline, synthetic data)
# make study  - study.py with PLAN on DATA: the runs, their evaluation, robustness, Grad-CAM and
#               runs/report/index.html. PLAN=auto: the full plan with CUDA, the cpu plan (the assignment converged,
#               finishing at 224 px, 31 minutes on a 2-core EPYC) without; PLAN=quick is a smoke run of every experiment.
#               *_WEIGHTS=imagenet uses torchvision's download/cache; offline, give a state-dict file.
#               HANDIN=DIR also writes the hand-in (the notebook and report.py, the code, the records, saved_models/)
#               and its zip, named STUDENT_ID.zip when STUDENT_ID=ID is given
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data/animals10/raw-img
MOBILENET_WEIGHTS ?= imagenet
RESNET_WEIGHTS ?= imagenet
PLAN ?= auto
HANDIN ?=
STUDENT_ID ?=
PY := $(VENV)/bin/python

.PHONY: setup lint test study lock

# constraints.txt pins every package (and every package they need) to the version `make lock` resolved, so two
# fresh installs a month apart are the same; `make lock` regenerates it from requirements.txt in a fresh venv.
$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet -r requirements.txt \
		&& .lock-venv/bin/pip freeze --exclude-editable > constraints.txt; rm -rf .lock-venv

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collects no tests: that is a failure here, not a pass. The test files run on one
# pytest-xdist worker per core (TEST_WORKERS=0 runs them in this process), each file whole on one worker, so
# the fixtures a file builds once are built once.
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

study: setup
	$(PY) study.py --plan $(PLAN) --data-dir $(DATA) --mobilenet-weights $(MOBILENET_WEIGHTS) --resnet-weights $(RESNET_WEIGHTS) \
		$(if $(HANDIN),--handin $(HANDIN)) $(if $(STUDENT_ID),--student-id $(STUDENT_ID))
