# litejobs: `make run` to serve, `make test` to test. Windows: see README (no make needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test consumer bench bench-orders docs clean

# The venv is rebuilt whenever a requirements file changes.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $@

run: $(VENV)/.installed
	$(PY) web.py run

consumer: $(VENV)/.installed
	$(VENV)/bin/huey_consumer jobs.huey -w 4

test: $(VENV)/.installed-test
	$(PY) -m pytest

bench: $(VENV)/.installed-test
	$(PY) bench/run.py

# 10,000 due orders against the sandbox at 100 ms: greenlet -w 100 vs thread -w 8.
bench-orders: $(VENV)/.installed-test
	$(PY) bench/orders.py

$(VENV)/.installed-docs: $(VENV)/.installed requirements-docs.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-docs.txt
	touch $@

# The documentation site in site/; --strict fails on any broken link or anchor.
docs: $(VENV)/.installed-docs
	$(PY) -m mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) .pytest_cache data site
