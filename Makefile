# The two set-up commands of the README: `make demo` and `make test`.
# Each one creates .venv, installs the package and, when it can, Debian's Fashion-MNIST files.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test setup data lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
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

test: setup data
	$(PY) -m pytest -q -n 2 --durations=15

lint: setup
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
