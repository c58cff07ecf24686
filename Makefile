# The two commands a newcomer runs (README.md):
#   make run    install everything, then train the default experiment on real Fashion-MNIST
#   make test   install everything, then run lint + the test suite (.ci/run calls this)
#   make bench  every cost benchmark in one sitting (bench/all.py; ARGS="--quick" for a look)
# Extra flags for the run: make run ARGS="--gin_bindings='train.epochs = 2'"

VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test lint bench clean

install: $(VENV)/.installed $(FASHION_MNIST)

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

run: install
	$(PY) -m keras_largebatch.main $(ARGS)

lint: install
	$(PY) -m ruff check keras_largebatch tests bench

bench: install
	$(PY) bench/all.py $(ARGS)

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
