# The two commands a newcomer runs (README.md):
#   make run    install everything, then train the default experiment on real Fashion-MNIST
#   make test   install everything, then run lint + the test suite on 2 workers, less the tests
#               marked slow (TEST_SLOW=1 adds them; .ci/run calls `make test TEST_SLOW=1`)
#   make bench  every cost benchmark in one sitting (bench/all.py; ARGS="--quick" for a look,
#               ARGS="--smoke" to check that each still runs, at its smallest size)
# Extra flags for the run: make run ARGS="--gin_bindings='train.epochs = 2'"

VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# TCMalloc under every training process (keras_largebatch/allocator.py, BUILD_NOTES "Allocator":
# same numbers, faster on CPU); KERAS_LARGEBATCH_MALLOC=system runs on glibc's malloc instead.
TCMALLOC := libtcmalloc_minimal.so.4
PRELOAD = env $$([ "$$KERAS_LARGEBATCH_MALLOC" != system ] && [ -n "$$(/sbin/ldconfig -p | grep $(TCMALLOC))" ] \
	&& echo "LD_PRELOAD=$(TCMALLOC)$${LD_PRELOAD:+:$$LD_PRELOAD}")

.PHONY: install run test lint bench clean tcmalloc

install: $(VENV)/.installed $(FASHION_MNIST) tcmalloc

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist libtcmalloc-minimal4

tcmalloc:
	@dpkg -s libtcmalloc-minimal4 >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq libtcmalloc-minimal4; }

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,ray]'
	touch $@

# jax for the JAX-backend tests, outside the venv: TensorFlow imports jax whenever it can
# (TF Lite): ~0.5 s more CPU per TensorFlow process (bench/startup.py, tests/backend_env.py).
JAX_PACKAGES := .jax-packages
$(JAX_PACKAGES)/.installed: tests/jax-requirements.txt $(VENV)/.installed
	rm -rf $(JAX_PACKAGES)
	$(VENV)/bin/pip install -q --no-deps --target $(JAX_PACKAGES) -r tests/jax-requirements.txt
	touch $@

run: install
	$(PRELOAD) $(PY) -m keras_largebatch.main $(ARGS)

lint: install
	$(PY) -m ruff check keras_largebatch tests bench

bench: install $(JAX_PACKAGES)/.installed
	$(PRELOAD) $(PY) bench/all.py $(ARGS)

# The suite is CPU-bound (most of its time is real CLI processes importing TensorFlow): two
# pytest workers keep both cores busy. --dist loadscope keeps a module on one worker, so a
# module fixture (e.g. the bad-input CLI runs) runs once. TEST_WORKERS=0 runs it serially.
# `make test` leaves out the tests marked `slow` (real processes of half a minute or more:
# multi-worker jobs, kill/resume chains, the Ray cluster, the wheel, the bench smoke runs);
# TEST_SLOW=1 runs them too, and CI (.ci/run) always does.
TEST_WORKERS ?= 2
TEST_SLOW ?= 0

test: lint $(JAX_PACKAGES)/.installed
	$(PRELOAD) $(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope) \
		$(if $(filter 1,$(TEST_SLOW)),,-m 'not slow') $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(JAX_PACKAGES) *.egg-info .pytest_cache .ruff_cache
