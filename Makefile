# Two commands for a newcomer: `make demo` and `make test`. Both create .venv (pinned
# requirements + the backend in editable mode) the first time.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-quick install clean-venv

install: $(STAMP)

$(STAMP): requirements.txt backend/pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps -e backend
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medsegrwkv demo --output outputs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest Testing -q -p no:cacheprovider

# The same without the slow tier (pytest.ini, Testing/conftest.py): a few minutes, for each edit.
test-quick: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest Testing -q -p no:cacheprovider -m "not slow"

clean-venv:
	rm -rf $(VENV)
