# litejobs: `make run` to serve, `make test` to test. Windows: see README (no make needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test consumer bench clean

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

clean:
	rm -rf $(VENV) .pytest_cache data
