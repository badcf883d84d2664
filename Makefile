# The AI-factory hub. Two commands for a new user: `make demo` and `make test`.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c
.SILENT:

PREFIX   ?= /opt/aifactory
VENV     := $(PREFIX)/venv
PY       := $(VENV)/bin/python
CHP      := $(PREFIX)/node_modules/.bin/configurable-http-proxy
STATE    ?= $(CURDIR)/.state
APT_PKGS := munge mariadb-server slurmdbd slurmctld slurmd slurm-client sudo iproute2 python3-venv python3-dev chromium

.PHONY: help install cluster cluster-stop hub demo stop stop-hub test test-fast notebooks lint publish

help:
	@echo "make demo   install what is missing, start the local Slurm cluster and the hub on http://127.0.0.1:8000"
	@echo "make test   the whole suite (unit, real Slurm, hub + proxy, browser, notebooks)"
	@echo "make stop   stop the hub and the local cluster"

install:
	@if [ "$$(id -u)" != 0 ]; then echo "make install needs root (Debian packages, system daemons)"; exit 1; fi
	missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done)
	if [ -n "$$missing" ]; then
	  echo "== installing Debian packages: $$missing"
	  apt-get update -qq
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null
	fi
	# node may come from another source that ships npm with it
	if ! command -v npm >/dev/null; then
	  apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
	fi
	# the jobs' environment: Debian's python, world-readable (the default python3 lives under /root)
	if [ ! -x $(PY) ]; then echo "== creating $(VENV)"; mkdir -p $(PREFIX); /usr/bin/python3 -m venv $(VENV); fi
	# dependencies only when pyproject.toml changed (resolving takes a while), the package always
	stamp=$(PREFIX)/.deps-$$(sha256sum pyproject.toml | cut -c1-16)
	if [ ! -e $$stamp ]; then
	  echo "== installing dependencies into $(VENV) (a few minutes the first time)"
	  # torch==2.13.0 (CPU) lies in /opt/wheels on these machines; any other spec pulls GBs
	  links=$$([ -d /opt/wheels ] && echo "--find-links /opt/wheels" || true)
	  $(VENV)/bin/pip install -q --disable-pip-version-check $$links ".[courses,test]" 2>&1 | grep -v "^WARNING: Location" || true
	  rm -f $(PREFIX)/.deps-*; touch $$stamp
	fi
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall . \
	  2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import aifactory, torch, sklearn, papermill, nbval, playwright" \
	  || { echo "the environment in $(VENV) is incomplete"; exit 1; }
	if [ ! -x $(CHP) ]; then echo "== installing configurable-http-proxy (npm)"; \
	  npm install --silent --no-audit --no-fund --prefix $(PREFIX) configurable-http-proxy@5; fi
	chmod -R a+rX $(PREFIX)

publish: install
	$(VENV)/bin/aifactory --site hub_config/site.yaml courses publish
	# the registered datasets (the course notebooks load them), with their unix permissions
	$(VENV)/bin/aifactory --site hub_config/site.yaml data publish

cluster: install
	$(VENV)/bin/aifactory --site hub_config/site.yaml cluster start

cluster-stop:
	$(VENV)/bin/aifactory cluster stop

hub: cluster publish
	# the state (database, cookie secret, log) is private: the hub's files are created 0600
	umask 077
	mkdir -p $(STATE); chmod 700 $(STATE)
	if [ -f $(STATE)/hub.pid ] && kill -0 $$(cat $(STATE)/hub.pid) 2>/dev/null; then
	  echo "== the hub is already running (log: $(STATE)/hub.log)"
	else
	  echo "== starting the hub (log: $(STATE)/hub.log)"
	  cd $(STATE)
	  # job control on: a background command of a script would otherwise ignore SIGINT, and so
	  # would the hub's services, which the hub stops with SIGINT
	  set -m
	  AIFACTORY_STATE=$(STATE) nohup $(VENV)/bin/jupyterhub \
	    -f $(CURDIR)/hub_config/jupyterhub_config.py >$(STATE)/hub.log 2>&1 < /dev/null &
	  echo $$! > $(STATE)/hub.pid
	fi
	for i in $$(seq 60); do curl -sf http://127.0.0.1:8000/hub/health >/dev/null && break; sleep 1; done
	curl -sf http://127.0.0.1:8000/hub/health >/dev/null || { echo "the hub did not come up:"; tail -30 $(STATE)/hub.log; exit 1; }

demo: hub
	@$(VENV)/bin/python -m aifactory.demo --site hub_config/site.yaml

stop: stop-hub cluster-stop

stop-hub:
	if [ -f $(STATE)/hub.pid ]; then
	  pid=$$(cat $(STATE)/hub.pid); kill $$pid 2>/dev/null || true
	  for i in $$(seq 30); do kill -0 $$pid 2>/dev/null || break; sleep 1; done
	  # the hub leads its own process group (job control): take its proxy and services with it
	  kill -9 -- -$$pid 2>/dev/null || true
	  rm -f $(STATE)/hub.pid; echo "== hub stopped (sessions keep running as Slurm jobs)"
	fi

lint: install
	$(VENV)/bin/ruff check src tests hub_config benchmarks courses

# The whole suite: unit tests, the real Slurm cluster, the hub with its proxy, the browser,
# then every course and tutorial notebook (papermill, then nbval against the stored outputs).
test: cluster publish
	$(VENV)/bin/ruff check src tests hub_config benchmarks courses
	$(PY) -m pytest tests -p no:cacheprovider
	$(PY) -m pytest -p no:cacheprovider -q --nbval courses notebooks \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=300 -o testpaths= -o addopts=

# Seconds, no cluster needed: pure functions and parsers.
test-fast:
	$(PY) -m pytest tests -p no:cacheprovider -m "not slurm and not hub and not browser and not notebooks"
