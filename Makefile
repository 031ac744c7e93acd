# litejobs: `make run` to serve, `make test` to test. Windows: see README (no make needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test test-fast faults lint consumer bench bench-quick bench-orders docs clean

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

# The peers (Celery, RQ, Dramatiq, Procrastinate) are measured in the same run.
$(VENV)/.installed-peers: $(VENV)/.installed-test bench/requirements-peers.txt
	$(PY) -m pip install -q --disable-pip-version-check -r bench/requirements-peers.txt
	touch $@

# Every row; exits non-zero when a row fails. BENCH_REDIS_URL and BENCH_POSTGRES_URL pick the services.
bench: $(VENV)/.installed-peers
	$(PY) bench/run.py

# The headline rows at small sizes, in under 5 minutes.
bench-quick: $(VENV)/.installed-peers
	$(PY) bench/run.py --quick

# 10,000 due orders against the sandbox at 100 ms: greenlet -w 100 vs thread -w 8.
bench-orders: $(VENV)/.installed-test
	$(PY) bench/bench_orders.py

$(VENV)/.installed-docs: $(VENV)/.installed requirements-docs.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-docs.txt
	touch $@

# The documentation site in site/; --strict fails on any broken link or anchor.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) .pytest_cache data site
