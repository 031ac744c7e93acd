# litejobs: `make run` to serve, `make test` to test. Windows: see README (no make needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test test-fast faults lint consumer bench bench-orders clean

# The venv is rebuilt whenever a requirements file changes.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $@

# --reload: a saved file of an app or of functions/ restarts the server (after running jobs finish).
run: $(VENV)/.installed
	$(PY) web.py run --reload

consumer: $(VENV)/.installed
	$(VENV)/bin/huey_consumer jobs.huey -w 4

test: $(VENV)/.installed-test
	$(PY) -m pytest

# Everything but the tests that start real processes (marker `slow`).
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -m "not slow"

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
# The fault suite alone (make test runs it too): Redis, PostgreSQL, consumers and a disk failing.
faults: $(VENV)/.installed-test
	$(PY) -m pytest -m faults

bench: $(VENV)/.installed-test
	$(PY) bench/run.py

# 10,000 due orders against the sandbox at 100 ms: greenlet -w 100 vs thread -w 8.
bench-orders: $(VENV)/.installed-test
	$(PY) bench/orders.py

clean:
	rm -rf $(VENV) .pytest_cache data
