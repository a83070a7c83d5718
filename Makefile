# One-command set-up: `make setup` creates .venv with pinned dependencies and installs skillmix.
PY ?= python3
VENV ?= .venv

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

test: setup
	$(VENV)/bin/python -m pytest tests

demo: setup
	$(VENV)/bin/skillmix demo

clean:
	rm -rf $(VENV)
