# ChronoTick: `make run` starts the daemon in the foreground, `make test` runs the suite.
# Both create .venv and install what they need first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RUN_DIR := $(CURDIR)/run
TORCH_VERSION ?= 2.13.0

.PHONY: run test venv deps system-deps lint results accuracy bench clean install deb

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# torch first and pinned: the CPU build lies on this machine's disk; a bare `torch`
# would pull a multi-GB CUDA build.
$(VENV)/.dev: $(VENV)/.base
	$(PIP) install -q "torch==$(TORCH_VERSION)" || $(PIP) install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PIP) install -q -e ".[dev,chronos,mcp,metrics,bench]"
	# PyPI's ClockBound client (pure Python; it declares Python >= 3.13 but runs on 3.11):
	# tests/test_shm.py reads the ClockBound segment with it
	$(PIP) install -q --no-deps --ignore-requires-python "clockbound==0.3.0" || \
	  echo "clockbound not installed: its test in tests/test_shm.py will skip"
	touch $@

# promtool, from Debian's `prometheus` package unpacked (installing the package would start a
# Prometheus server): tests/test_prometheus_kit.py checks packaging/prometheus/ with it.
# Best effort: without it those tests skip.
$(VENV)/bin/promtool: | $(VENV)/.base
	@d=$$(mktemp -d) && ( cd $$d && apt-get download -q prometheus >/dev/null 2>&1 && \
	  dpkg-deb -x prometheus_*.deb x && cp x/usr/bin/promtool $(CURDIR)/$@ ) || \
	  echo "promtool not fetched (apt-get download prometheus): its tests will skip"; \
	  rm -rf $$d

venv: $(VENV)/.base

deps: $(VENV)/.dev

# Debian packages the integration tests drive (real chronyd, ptp4l, pmc; a booted Debian
# container for the shipped units: systemd-nspawn, mmdebstrap; `make deb`); root only.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for c in chronyd:chrony ptp4l:linuxptp ip:iproute2 pkg-config:pkg-config openssl:openssl; do \
	    command -v $${c%%:*} >/dev/null || missing="$$missing $${c#*:}"; done; \
	  dpkg -s libsystemd-dev >/dev/null 2>&1 || missing="$$missing libsystemd-dev"; \
	  for c in gcc:gcc strace:strace systemd-analyze:systemd; do \
	    command -v $${c%%:*} >/dev/null || missing="$$missing $${c#*:}"; done; \
	  dpkg -s python3-dev >/dev/null 2>&1 || missing="$$missing python3-dev"; \
	  for c in systemd-nspawn:systemd-container mmdebstrap:mmdebstrap zstd:zstd \
	           dpkg-deb:dpkg-dev nsenter:util-linux; do \
	    command -v $${c%%:*} >/dev/null || missing="$$missing $${c#*:}"; done; \
	  dpkg -s python3-venv >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	  dpkg -s python3-pip >/dev/null 2>&1 || missing="$$missing python3-pip"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)) >/dev/null; \
	  fi; \
	else echo "not root: skipping apt packages (tests needing chronyd/ptp4l will skip)"; fi

run: $(VENV)/.base
	mkdir -p $(RUN_DIR)
	@echo "socket: $(RUN_DIR)/chronotick.sock  (try: CHRONOTICK_SOCKET=$(RUN_DIR)/chronotick.sock $(VENV)/bin/chronotick-cli now)"
	$(VENV)/bin/chronotickd --config etc/chronotick.yaml --socket $(RUN_DIR)/chronotick.sock --state-dir $(RUN_DIR)/state

test: system-deps $(VENV)/.dev $(VENV)/bin/promtool
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

# Replay bench: tables and figures of docs/results.md (synced_tacc + every sim scenario).
results: $(VENV)/.dev
	$(PY) -m chronotickd.replay.results

# Accuracy matrix (issue 13): every method × scenario × poll; docs/accuracy.md and the
# accuracy block of docs/results.md.
accuracy: $(VENV)/.dev
	$(PY) benchmarks/bench_accuracy.py --quick --json docs/accuracy.json
	$(PY) benchmarks/accuracy_report.py docs/accuracy.json

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_socket.py
	$(PY) benchmarks/bench_service.py

# Debian package (dpkg-deb): dist/chronotick_<version>_<arch>.deb, a venv under /opt/chronotick
# built with Debian's /usr/bin/python3 (needs python3-venv, python3-pip, and for python-systemd
# gcc, pkg-config, libsystemd-dev, python3-dev: `make system-deps`). docs/service.md.
deb:
	packaging/deb/build-deb.sh

clean:
	rm -rf $(VENV) $(RUN_DIR) .pytest_cache .ruff_cache

# -- install, for packagers (docs/service.md) --------------------------------------------
# `make install DESTDIR=/tmp/stage PREFIX=/usr`: a private venv under $(PREFIX)/lib/chronotick
# with the entry points linked into $(PREFIX)/bin, the systemd units, sysusers.d/tmpfiles.d,
# a udev rule for /dev/ptp*, and /etc/chronotick/chronotick.yaml (an existing one is kept).
PREFIX        ?= /usr/local
SYSCONFDIR    ?= /etc
CT_LIBDIR     := $(PREFIX)/lib/chronotick
UNITDIR       ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR   ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR   ?= $(PREFIX)/lib/tmpfiles.d
UDEVRULESDIR  ?= $(PREFIX)/lib/udev/rules.d
DOCDIR        ?= $(PREFIX)/share/doc/chronotick
INSTALL_EXTRAS ?= systemd,nts

.PHONY: install-venv install-data

install: install-venv install-data
	@echo "installed under $(DESTDIR)$(PREFIX); on the target run: systemd-sysusers;" \
	  "systemd-tmpfiles --create; udevadm trigger -s ptp; systemctl daemon-reload;" \
	  "systemctl enable --now chronotickd.socket chronotickd.service"

# A venv records its own absolute path: staged under DESTDIR, that prefix is stripped again.
install-venv:
	$(PYTHON) -m venv --clear $(DESTDIR)$(CT_LIBDIR)/venv
	@for d in build chronotick.egg-info; do [ -e $$d ] || touch .ct-rm-$$d; done
	$(DESTDIR)$(CT_LIBDIR)/venv/bin/python -m pip install -q --no-cache-dir ".[$(INSTALL_EXTRAS)]"
	@for d in build chronotick.egg-info; do \
	  if [ -e .ct-rm-$$d ]; then rm -rf $$d .ct-rm-$$d; fi; done  # leave the tree as it was
	if [ -n "$(DESTDIR)" ]; then \
	  grep -rlIF -- "$(DESTDIR)" $(DESTDIR)$(CT_LIBDIR)/venv | xargs -r sed -i "s|$(DESTDIR)||g"; fi
	install -d $(DESTDIR)$(PREFIX)/bin
	for exe in chronotickd chronotick-cli chronotick-mcp; do \
	  if [ -e $(DESTDIR)$(CT_LIBDIR)/venv/bin/$$exe ]; then \
	    ln -sfn ../lib/chronotick/venv/bin/$$exe $(DESTDIR)$(PREFIX)/bin/$$exe; fi; done

install-data:
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/chronotick
	sed -e "s|/usr/bin/chronotickd|$(PREFIX)/bin/chronotickd|" \
	  -e "s|/usr/share/doc/chronotick|$(DOCDIR)|" packaging/systemd/chronotickd.service \
	  > $(DESTDIR)$(UNITDIR)/chronotickd.service
	chmod 644 $(DESTDIR)$(UNITDIR)/chronotickd.service
	install -m 644 packaging/systemd/chronotickd.socket $(DESTDIR)$(UNITDIR)/chronotickd.socket
	install -D -m 644 packaging/sysusers.d/chronotick.conf $(DESTDIR)$(SYSUSERSDIR)/chronotick.conf
	install -D -m 644 packaging/tmpfiles.d/chronotick.conf $(DESTDIR)$(TMPFILESDIR)/chronotick.conf
	install -D -m 644 packaging/udev/60-chronotick-ptp.rules \
	  $(DESTDIR)$(UDEVRULESDIR)/60-chronotick-ptp.rules
	install -D -m 644 docs/service.md $(DESTDIR)$(DOCDIR)/service.md
	@conf=$(DESTDIR)$(SYSCONFDIR)/chronotick/chronotick.yaml; \
	if [ -e $$conf ]; then \
	  install -m 644 etc/chronotick.yaml $$conf.dist; \
	  echo "kept existing $$conf; the shipped defaults are in $$conf.dist"; \
	else install -m 644 etc/chronotick.yaml $$conf; fi
