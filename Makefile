PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench lambda audit lock clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# requirements.lock pins every distribution the tests and the demo run on (made by `make lock` from a fresh
# install of pyproject.toml's ranges); CI installs exactly it, and audits exactly it.
LOCK := requirements.lock

$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/costwatch demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/detection.py

lambda: $(STAMP)
	$(BIN)/python deploy/lambda/build.py

audit: $(STAMP)
	AUDIT_REQUIREMENTS=$(LOCK) bash .ci/audit

# re-resolve pyproject.toml's ranges in a scratch venv and write the pins (then `make test`, and commit both)
lock:
	rm -rf build/lock-venv
	$(PY) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install -q --upgrade pip
	build/lock-venv/bin/python -m pip install -q -e '.[dev]'
	build/lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -vE '^(pip|setuptools|wheel)==' > $(LOCK)
	rm -rf build/lock-venv

clean:
	rm -rf $(VENV) costwatch-demo build *.egg-info
