# ChronoTick: `make run` starts the daemon in the foreground, `make test` runs the suite.
# Both create .venv and install what they need first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RUN_DIR := $(CURDIR)/run
TORCH_VERSION ?= 2.13.0

.PHONY: run test venv deps system-deps lint results bench clean install

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# torch first and pinned: the CPU build lies on this machine's disk; a bare `torch`
# would pull a multi-GB CUDA build.
$(VENV)/.dev: $(VENV)/.base
	$(PIP) install -q "torch==$(TORCH_VERSION)" || $(PIP) install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PIP) install -q -e ".[dev,chronos,mcp,bench]"
	touch $@

venv: $(VENV)/.base

deps: $(VENV)/.dev

# Debian packages the integration tests drive (real chronyd, ptp4l, pmc); root only.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for c in chronyd:chrony ptp4l:linuxptp ip:iproute2 pkg-config:pkg-config; do \
	    command -v $${c%%:*} >/dev/null || missing="$$missing $${c#*:}"; done; \
	  dpkg -s libsystemd-dev >/dev/null 2>&1 || missing="$$missing libsystemd-dev"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)) >/dev/null; \
	  fi; \
	else echo "not root: skipping apt packages (tests needing chronyd/ptp4l will skip)"; fi

run: $(VENV)/.base
	mkdir -p $(RUN_DIR)
	@echo "socket: $(RUN_DIR)/chronotick.sock  (try: CHRONOTICK_SOCKET=$(RUN_DIR)/chronotick.sock $(VENV)/bin/chronotick-cli now)"
	$(VENV)/bin/chronotickd --config etc/chronotick.yaml --socket $(RUN_DIR)/chronotick.sock --state-dir $(RUN_DIR)/state

test: system-deps $(VENV)/.dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

# Replay bench: tables and figures of docs/results.md (synced_tacc + every sim scenario).
results: $(VENV)/.dev
	$(PY) -m chronotickd.replay.results

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_socket.py

clean:
	rm -rf $(VENV) $(RUN_DIR) .pytest_cache .ruff_cache
