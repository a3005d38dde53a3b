"""Random models through the generator and the simulators (model/flows/fuzz_hw.py): a fixed-seed
batch on Verilator and a smaller one on Icarus, every spike, logit and class bit-exact and the
cycle model exact; and the random models themselves (pure Python)."""

import numpy as np
import pytest

from model.flows.fuzz_hw import fuzz, model_setup
from model.ir.random_model import random_architecture, random_inputs, random_model

#: The CI batches: seeds chosen once, never edited to make a failure go away (a model that
#: fails is fixed in the generator and kept under tests/artifacts/fuzz instead)
VERILATOR_SEEDS = (104, 4)     # 104..107: lanes 1, 2 and 4, event input, no trace port, rpe,
ICARUS_SEEDS = (105, 2)        # low-rank matrices; 105..106: lanes 2, event input, no trace


def check(report):
    assert report["failed"] == 0, [(r["seed"], r["failure"]) for r in report["failures"]]
    assert report["passed"] == report["models"]
    assert report["inputs_compared"] == report["models"] * report["inputs_per_model"]


@pytest.mark.rtlsim
def test_random_models_are_bitexact_on_verilator(tmp_path):
    first, count = VERILATOR_SEEDS
    check(fuzz(count, first, 6, "verilator", tmp_path, jobs=1, progress=lambda line: None))


@pytest.mark.rtlsim
def test_random_models_are_bitexact_on_icarus(tmp_path):
    first, count = ICARUS_SEEDS
    check(fuzz(count, first, 3, "icarus", tmp_path, jobs=1, progress=lambda line: None))


@pytest.mark.rtlsim
def test_a_failing_model_is_kept_with_a_repeat_command(tmp_path, monkeypatch):
    """A defect anywhere (here: the generator refuses the model) fails the model, keeps its
    folder and names the command that repeats it."""
    import hw.generate
    def refuse(*args, **kwargs):
        raise ValueError("a planted defect")
    monkeypatch.setattr(hw.generate, "generate_verilog", refuse)
    report = fuzz(1, 5, 2, "verilator", tmp_path, progress=lambda line: None)
    (failure,) = report["failures"]
    assert failure["failure"] == "ValueError: a planted defect"
    assert (tmp_path / "failures" / "seed-5" / "model.json").exists()
    assert failure["repeat"].startswith("stforge fuzz-hw --models 1 --seed 5")


#: Models the fuzz found defects with, kept as artifacts (the generator may change): name ->
#: (lanes, what went wrong)
FOUND = {
    "seed-5004": (4, "1-bit spike counts everywhere (pixels up to 1, no block): the issue "
                     "FSM's event count is a constant process that simulators never ran, so "
                     "every weight was multiplied by 0"),
}


@pytest.mark.rtlsim
@pytest.mark.parametrize("sim", ["verilator", "icarus"])
@pytest.mark.parametrize("name", sorted(FOUND))
def test_models_the_fuzz_found_stay_bitexact(name, sim, tmp_path):
    from pathlib import Path
    from hw.generate import generate_verilog
    from model.ir import load_artifact
    from model.ir.golden import write_golden_data
    from sim.runner import run_simulation, summarize
    artifact = Path(__file__).parents[1] / "artifacts" / "fuzz" / f"{name}.json"
    lanes = FOUND[name][0]
    graph = load_artifact(artifact)
    x = random_inputs(np.random.default_rng(2), graph, 4)
    write_golden_data(graph, x, np.zeros(len(x), np.int64), tmp_path / "golden.npz")
    generate_verilog(artifact, tmp_path / "hdl", lanes=lanes)
    raw = run_simulation(tmp_path / "hdl", tmp_path / "golden.npz", list(range(len(x))), sim,
                         build_root=tmp_path / "build", quiet=True)
    report = summarize(raw, sim, name, tmp_path / "golden.npz")
    assert report["mismatches"] == 0, report.get("first_mismatch")
    assert report["model_error"] == 0


def test_constant_processes_hold_their_value_from_time_zero():
    """Yosys writes a comb process that assigns a constant as an `always @*` with nothing to
    wait on; the generated Verilog gives it an `initial` twin (hw.generate)."""
    from hw.generate import settle_constant_processes
    text = ("  always @*\n    events__payload[8] = 1'h1;\n"
            "  always @* begin\n    x = y;\n  end\n")
    settled = settle_constant_processes(text)
    assert settled == ("  initial events__payload[8] = 1'h1;\n  always @*\n"
                       "    events__payload[8] = 1'h1;\n  always @* begin\n    x = y;\n  end\n")


def test_random_models_are_reproducible_and_varied():
    a, b = random_model(7, 2), random_model(7, 2)
    assert a.source == b.source
    assert all(np.array_equal(x.threshold, y.threshold) for x, y in zip(a.neurons, b.neurons))
    described = {random_model(seed, model_setup(seed)[0]).source["random_model"]
                 for seed in range(12)}
    assert len(described) == 12


def test_random_architectures_cover_the_space():
    """Over 200 seeds every feature the generator may draw turns up."""
    rng = np.random.default_rng(0)
    archs = [random_architecture(rng, lanes) for lanes in (1, 2, 3, 4) for _ in range(50)]
    formats = {f for a in archs for block in a.formats for f in block.values()}
    assert formats == {"dense", "sparse", "lowrank"}
    assert {a.depth for a in archs} == {0, 1, 2}
    assert any(a.time_varying_input for a in archs) and any(a.rpe for a in archs)
    assert {len(a.stem) for a in archs} == {1, 2, 3}
    assert any(pool for a in archs for _, pool, _ in a.stem)
    assert {a.timesteps for a in archs} == {1, 2, 3, 4, 5}
    for a in archs:                  # every layer takes the model's lanes
        assert a.dim % (a.heads * a.lanes) == 0 and a.hidden % a.lanes == 0
        assert min([c for c, _, _ in a.stem] + [a.dim, a.hidden]) >= 4 * a.lanes


def test_random_models_fire_and_fit_the_hardware():
    """The calibrated thresholds make most models fire at moderate rates; every model is one the
    hardware plan takes on its lanes."""
    from hw.plan import Plan
    from model.ir.golden import node_spikes, run_golden
    rates = []
    for seed in range(20):
        lanes = model_setup(seed)[0]
        graph = random_model(seed, lanes)
        Plan.build(graph, lanes)
        result = run_golden(graph, random_inputs(np.random.default_rng(seed), graph, 4))
        rates.append(np.mean([node_spikes(graph, result, n).mean() for n in graph.neurons]))
    assert 0.03 < np.median(rates) < 0.4, rates
