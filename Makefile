# Corral: two commands on a fresh Debian/Ubuntu machine.
#   make run   - the whole thing on embedded defaults (SQLite, a broker that needs no server)
#   make test  - the whole test suite against PostgreSQL and Redis
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

# The tests run against these; `make test` starts them if installed but stopped.
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15
PYTEST_ARGS ?=

.PHONY: run test test-fast lint typecheck screenshots venv system-packages services clean help

help:
	@echo "make run         start Corral (web UI + API + worker + beat + a local agent as root)"
	@echo "make test        install what the tests need and run the whole suite"
	@echo "make test-fast   the suite without slow end-to-end tests"
	@echo "make test-guest  the SELinux-enforcing qemu guest scenarios"
	@echo "make lint        ruff + mypy"
	@echo "make screenshots full-page screenshots of the UI into screenshots/"

$(VENV)/.installed-%: requirements.txt requirements-dev.txt agent/requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip
	@$(PIP) install -q -r $(if $(filter dev,$*),requirements-dev.txt,requirements.txt)
	@touch $@

venv: $(VENV)/.installed-base

# The native per-container monitor (see agent/runtime/shim.py): static where libc.a is there,
# so a bundle built here runs on any host of the architecture. No compiler: containers use the
# Python monitor, and say so in their state.
MONITOR := agent/runtime/native/corral-monitor
$(MONITOR): agent/runtime/native/monitor.c
	@if command -v cc >/dev/null; then \
	  cc -O2 -Wall -Wextra -Werror -static -o $@ $< -lm 2>/dev/null || \
	  cc -O2 -Wall -Wextra -Werror -o $@ $< -lm; \
	else echo "no C compiler: containers use the Python monitor (apt-get install gcc)"; fi

run: $(VENV)/.installed-base $(MONITOR)
	@$(PY) deploy/devserver.py

system-packages:
	@bash .ci/system-packages.sh tests/system-packages.txt

services:
	@bash .ci/services.sh

test: $(VENV)/.installed-dev system-packages services $(MONITOR)
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) DEBUG=1 \
	CORRAL_VAR_DIR=$(CURDIR)/var/test SECURE_SSL_REDIRECT=0 \
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-fast: PYTEST_ARGS += -m "not slow"
test-fast: test

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(VENV)/bin/mypy agent

screenshots: PYTEST_ARGS += tests/browser -m browser
screenshots: test

clean:
	rm -rf var/test var/broker

-include Makefile.guest
