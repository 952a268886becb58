# The two set-up commands of the README:  `make run`  (the main job)  and  `make test`.
# VENV may point anywhere (CI uses a fresh temporary one).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
OUT ?= outputs

.PHONY: setup fashion-mnist run test test-fast lint clean

setup: $(VENV)/.installed

# torch is installed first and pinned, so that no CUDA build is pulled on a CPU machine.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[cpu,test]'
	touch $@

# The real dataset of this project's tests and quick runs: Debian's dataset-fashion-mnist.
fashion-mnist:
	@if [ ! -f $(FASHION) ]; then \
	  command -v apt-get >/dev/null || { echo "Fashion-MNIST is missing: install Debian's dataset-fashion-mnist or set DGM_DATA_DIR"; exit 1; }; \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }; \
	fi

# The main job on the embedded default (a local Ray started for each study, MLflow in runs/mlflow.db):
# the quick pipeline, three small Tune studies, the best classifiers exported to ONNX, validated
# and registered, and a report (about 8 minutes on 2 cores).
run: setup fashion-mnist
	$(VENV)/bin/dgm-dist pipeline --preset quick

test: setup fashion-mnist lint
	$(PY) -m pytest -q

# The tests that start no Ray, Tune, export or benchmark (the `slow` marker): a quick check while working.
test-fast: setup fashion-mnist lint
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(OUT) runs .pytest_cache
