# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv (if needed), install slidestream, run the offline demo
#   make test   same venv, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.slidestream-installed
DEMO_OUT ?= demo-output
PYTEST_ARGS ?=

.PHONY: demo test test-slow install clean

install: $(STAMP)

# constraints.txt pins torch/torchvision for this venv only (the library itself does not cap them).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || $(PYTHON) -m virtualenv $(VENV)
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --upgrade
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/slidestream demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# pytest exits 5 when no test is selected: not a failure here.
test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info
