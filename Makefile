# edgegw: `make demo` runs the main job, `make test` runs the tests. Each sets itself up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
BOARDS := rp2 esp32 unix
STUB_PACKAGE_rp2 := micropython-rp2-rpi-pico-stubs
STUB_PACKAGE_esp32 := micropython-esp32-stubs
STUB_PACKAGE_unix := micropython-unix-stubs
# Each HAL is checked only against the ports it runs on.
EXCLUDE_rp2 := firmware/hal_unix\.py
EXCLUDE_esp32 := firmware/hal_unix\.py
EXCLUDE_unix := firmware/(hal_board|pwm_lamp)\.py
PORTABLE := protocols firmware

.PHONY: all demo test test-fast soak lint typecheck-boards venv mosquitto fuse chromium strace bench clean

all: test

$(STAMP):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || { echo "edgegw: needs Python 3.11 or newer as '$(PYTHON)'" >&2; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV) || { echo "edgegw: cannot create $(VENV); on Debian install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# A Debian package the tests need: installed with apt-get as root, else a message saying how.
# $(call debian_package,PACKAGE,SHELL TEST that passes once it is installed)
define debian_package
	@if ! { $(2); }; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "edgegw: installing Debian's $(1)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; \
	  else \
	    echo "edgegw: $(1) is not installed and we are not root; run: sudo apt-get install $(1)" >&2; exit 1; \
	  fi; \
	fi
endef

# Debian's mosquitto: the tests start their own on a free loopback port.
mosquitto:
	$(call debian_package,mosquitto,command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ])

# Debian's fuse3 (libfuse3 and fusermount3) for the power-cut file system of the tests (hil/powercut.py).
fuse:
	$(call debian_package,fuse3,command -v fusermount3 >/dev/null && ldconfig -p | grep -q 'libfuse3\.so\.3')

# Debian's chromium: the status page is tested in a real headless browser (tests/test_status_page.py, hil/browser.py).
chromium:
	$(call debian_package,chromium,command -v chromium >/dev/null)

# MicroPython stubs per board, each in its own folder: they shadow the standard library.
$(VENV)/stubs/%/.installed: | $(STAMP)
	@rm -rf $(VENV)/stubs/$*
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --target $(VENV)/stubs/$* $(STUB_PACKAGE_$*)
	@touch $@

typecheck-boards: $(foreach board,$(BOARDS),$(VENV)/stubs/$(board)/.installed)
	@for board in $(BOARDS); do \
	  echo "mypy: $(PORTABLE) against the $$board MicroPython stubs"; \
	  case $$board in rp2) exclude='$(EXCLUDE_rp2)';; esp32) exclude='$(EXCLUDE_esp32)';; unix) exclude='$(EXCLUDE_unix)';; esac; \
	  MYPYPATH=$(VENV)/stubs/$$board $(BIN)/mypy --config-file .ci/mypy-boards.ini \
	    --custom-typeshed-dir $(VENV)/stubs/$$board --no-site-packages --exclude "$$exclude" $(PORTABLE) || exit 1; \
	done

lint: $(STAMP) typecheck-boards
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gateway protocols hil

# Four workers on CI's two cores, a test file each at a time: the end-to-end tests mostly wait on
# the wall clock (a broker down for 30 s, a minute of faults, the city scenarios, the radio ones'
# duty cycle), so they run beside the rest. Measured with three on 2026-12-03: 7 CPU minutes in 11
# minutes of wall clock (a third of two cores busy), once the radio scenarios came (8.5 minutes before).
# The slowest files first (tests/conftest.py SLOW_FILES), not xdist's most-tests-first order.
test: $(STAMP) mosquitto fuse chromium lint
	$(BIN)/python -m pytest -q -n 4 --dist loadfile --no-loadscope-reorder --durations=12

# 1,000 power cuts under the gateway (tests/test_powercut.py; `make test` runs 50). About 35 minutes.
soak: $(STAMP) mosquitto fuse
	EDGEGW_POWERCUTS=1000 $(BIN)/python -m pytest -q -s tests/test_powercut.py

# The fast subset while working: no MicroPython VM, no brokers, gateways or nodes (markers: pyproject.toml).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not micropython and not processes"

demo: $(STAMP) mosquitto
	$(BIN)/edgegw demo

BENCH_STAMP := $(VENV)/.bench-$(shell cksum < pyproject.toml | cut -d' ' -f1)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	@rm -f $(VENV)/.bench-*; touch $@

# Debian's strace: make bench counts the gateway's fsyncs with it; without it the bench says so and goes on.
strace:
	@if ! command -v strace >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "edgegw: installing Debian's strace"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; } \
	      || echo "edgegw: could not install strace: make bench counts no fsyncs" >&2; \
	  else \
	    echo "edgegw: strace is not installed: make bench counts no fsyncs (sudo apt-get install strace)" >&2; \
	  fi; \
	fi

# Benchmarks: measured and reported (docs/PERFORMANCE.md), never asserted.
bench: $(BENCH_STAMP) mosquitto strace
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
