# The two set-up commands of the README: `make demo` and `make test`.
# Each one creates .venv, installs the package and, when it can, Debian's Fashion-MNIST files.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist
# The torch the project is developed and tested with, installed on its own first. pyproject.toml allows a range
# (the releases that pass the tests, see bench/torch_versions.sh); with nothing installed, pip would take the
# newest release in it, a multi-GB CUDA build. This exact release comes as a CPU build from the machine's disk,
# and the package install after it finds torch already satisfied.
TORCH := torch==2.13.0

.PHONY: demo test setup data lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check '$(TORCH)'
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,onnx,bench]'
	touch $@

# Debian's dataset-fashion-mnist package; installed when we are root, otherwise we say how.
data:
	@if [ -d "$(FMNIST)" ] || [ -n "$$ATO_DATA_ROOT" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null)) \
	  && echo "installed Debian package dataset-fashion-mnist"; \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (or set ATO_DATA_ROOT)"; fi

demo: setup data
	$(VENV)/bin/ato demo

# lint-imports first: the layer contracts of .importlinter (docs/architecture.md); an upward import or a cycle fails
test: setup data
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n 2 --durations=15

lint: setup
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
