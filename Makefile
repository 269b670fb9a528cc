# The two commands a newcomer runs: `make run` and `make test`.
# Both set everything up: the Debian tools dhtdeb needs (when root), a venv in .venv, the package.
# `make check-real` (CI runs it after `make test`) does the same, with what it needs on top.
VENV ?= .venv
PY := $(VENV)/bin/python
# iproute2: the fleet tests run hosts in network namespaces (ip netns, tc).
DEB_PACKAGES := gpgv gpg apt-utils dpkg-dev xz-utils iproute2
# make test only: tests/test_dashboard.py loads the dashboard in headless chromium;
# tests/fleet/test_fleet_harness.py gives a fleet its NAT uplink with nft (nftables).
TEST_DEB_PACKAGES := chromium nftables
# make deb (and make test, which installs the package it builds): Debian's packaging tools.
BUILD_DEB_PACKAGES := debhelper dh-virtualenv python3-venv help2man lintian
# check-real: the fleet hosts' NAT uplink (nftables), debootstrap, and Debian's archive keys.
REAL_DEB_PACKAGES := nftables debootstrap debian-archive-keyring
ARGS ?=

.PHONY: run test check-real setup debian-packages lint bench clean deb

setup: debian-packages $(VENV)/.installed

debian-packages:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "dhtdeb needs these Debian packages:$$missing -- run 'sudo apt-get install$$missing'" >&2; exit 1; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: setup
	$(VENV)/bin/dhtdeb serve $(ARGS)

test: DEB_PACKAGES += $(TEST_DEB_PACKAGES) $(BUILD_DEB_PACKAGES)
test: setup deb
	$(VENV)/bin/ruff check dhtdeb tests bench
	$(VENV)/bin/ruff format --check dhtdeb tests bench
	$(PY) -m pytest $(ARGS)

# Against the Debian mirror of this machine's apt sources (needs root and the internet):
# tests/real/test_real_archive.py. Prints a report at the end.
check-real: DEB_PACKAGES += $(REAL_DEB_PACKAGES)
check-real: setup
	$(PY) -m pytest -m real -s tests/real $(ARGS)

lint: setup
	$(VENV)/bin/mypy dhtdeb

bench: setup
	$(PY) bench/index.py
	$(PY) bench/proxy.py
	$(PY) bench/dht.py
	$(PY) bench/swarm.py

# dist/dhtdeb_<version>_<arch>.deb, built with dpkg-buildpackage (debian/: dh + dh-virtualenv) from
# a copy of the tree's files (git's tracked and untracked, not ignored), so the checkout stays
# clean. Rebuilt only when one of them changed. tests/test_deb.py installs it in a throwaway root.
DEB_VERSION = $(shell dpkg-parsechangelog -S Version 2>/dev/null)
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_FILE = dist/dhtdeb_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_SOURCES = $(shell git ls-files -co --exclude-standard 2>/dev/null | grep -v '^bench/\|^tests/\|^docs/')

deb: DEB_PACKAGES += $(BUILD_DEB_PACKAGES)
deb: debian-packages
	@$(MAKE) --no-print-directory $(DEB_FILE)

$(DEB_FILE): $(DEB_SOURCES)
	rm -rf build/deb && mkdir -p build/deb/dhtdeb-$(DEB_VERSION) dist
	git ls-files -co --exclude-standard | grep -v '^bench/\|^tests/\|^docs/' \
	  | tar -cf - -T - | tar -xf - -C build/deb/dhtdeb-$(DEB_VERSION)
	cd build/deb/dhtdeb-$(DEB_VERSION) && dpkg-buildpackage -us -uc -b --no-sign >../build.log 2>&1 \
	  || { tail -40 ../build.log; exit 1; }
	mv build/deb/dhtdeb_$(DEB_VERSION)_$(DEB_ARCH).deb $@
	rm -rf build/deb
	@echo "built $@ (lintian: lintian --fail-on error $@)"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache build dist
