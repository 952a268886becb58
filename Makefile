# The two set-up commands of the README:  `make run`  (the main job)  and  `make test`.
# VENV may point anywhere (CI uses a fresh temporary one).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
OUT ?= outputs

.PHONY: setup fashion-mnist postgresql run test test-fast lint clean clean-runs

setup: $(VENV)/.installed

# torch is installed first and pinned. PyPI's torch==2.13.0 for Linux is the CUDA build (several GB);
# on a CPU-only machine set TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU wheel.
TORCH_INDEX ?=
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[cpu,test]'
	touch $@

# The real dataset of this project's tests and quick runs: Debian's dataset-fashion-mnist, installed
# by apt as root; anyone else (or a machine without apt) gets the same files from the canonical
# mirror, checked against their published MD5s, by `dgm-dist data prepare`. Never sudo.
fashion-mnist: setup
	@if [ ! -f $(FASHION) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; \
	  else \
	    echo "Fashion-MNIST is not in /usr/share/datasets: downloading it (MD5-checked) with dgm-dist data prepare"; \
	    $(VENV)/bin/dgm-dist data prepare fashion-mnist; \
	  fi; \
	fi

# PostgreSQL's server, for the test of MLflow's PostgreSQL backend (tests/test_tracking_postgres.py):
# installed by apt as root; anyone else installs Debian's postgresql package (or their system's).
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q postgresql || { apt-get update -q && apt-get install -y -q postgresql; }; \
	  else \
	    echo "PostgreSQL's server is missing: install the postgresql package (its test fails without it)"; \
	  fi; \
	fi

# The main job on the embedded default (a local Ray started for each study, MLflow in runs/mlflow.db):
# the quick pipeline, three small Tune studies, the best classifiers exported to ONNX, validated
# and registered, and a report (about 8 minutes on 2 cores).
run: setup fashion-mnist
	$(VENV)/bin/dgm-dist pipeline --preset quick

# Two processes (TEST_PROCESSES): most slow tests wait on Ray's start-up, subprocesses and servers.
# Tests go one at a time to whichever process is free; a file whose module fixtures are costly is
# one xdist_group, run whole on one process (docs/testing.md).
TEST_PROCESSES ?= 2
test: setup fashion-mnist postgresql lint
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadgroup

# The tests that start no Ray, Tune, export or benchmark (the `slow` marker): a quick check while working.
test-fast: setup fashion-mnist lint
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

# Keeps runs/ (every run, checkpoint, export and the MLflow registry); `make clean-runs` removes it.
clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

clean-runs:
	rm -rf runs
