"""cocotb on the generated Verilog: the shipped variants bit-exact on Verilator, Icarus agreeing,
and a scoreboard that is not blind (a corrupted weight, threshold or input pixel in the DUT is
reported at the right place). Marker `sim`; each build in its own folder."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import export_shipped

pytestmark = pytest.mark.rtlsim


def prepare(artifact, images, root, name, lanes=1):
    """Artifact + images -> (hdl folder, golden .npz), like `make sim` does."""
    from hw.generate import generate_verilog
    from model.ir import save_artifact
    from model.ir.golden import write_golden_data
    root.mkdir(parents=True, exist_ok=True)
    save_artifact(artifact, root / f"{name}-artifact")
    hdl = root / name
    generate_verilog(root / f"{name}-artifact.json", hdl, lanes=lanes)
    golden = root / f"{name}-golden.npz"
    write_golden_data(artifact, images, np.zeros(len(images), np.int64), golden)
    return hdl, golden


def check_bitexact(raw):
    for r in raw["images"]:
        assert r["bitexact"], r["mismatches"]
        assert r["compared"] > 100 and r["cycles"] > 0
        assert len(r["layer_cycles"]) == 9


@pytest.mark.parametrize("variant", [
    "l1p", pytest.param("dsp", marks=pytest.mark.slow), pytest.param("dense", marks=pytest.mark.slow)])
def test_shipped_variant_is_bitexact_on_verilator(variant, tmp_path):
    """The shipped models themselves (the default suite runs the deployed L1P one; the tiny
    variants below cover the DSP and dense formats of the RTL in every run)."""
    from sim.runner import run_simulation
    artifact, split = export_shipped(variant, tmp_path)
    hdl, golden = prepare(artifact, split.x_test[:2], tmp_path / "sim", variant)
    check_bitexact(run_simulation(hdl, golden, [0, 1], "verilator",
                                  build_root=tmp_path / "build"))


@pytest.mark.parametrize("kind", ["dsp", "dense", "events"])
def test_tiny_variant_is_bitexact_on_verilator(kind, tmp_path):
    from sim.runner import run_simulation
    from tests.accelerator_fixtures import sample_images, tiny_artifact
    artifact = tiny_artifact(kind)
    images = sample_images(artifact, 2)                  # two inputs, all-max, all-zero
    hdl, golden = prepare(artifact, images, tmp_path / "sim", kind)
    check_bitexact(run_simulation(hdl, golden, list(range(len(images))), "verilator",
                                  build_root=tmp_path / "build"))


def test_lanes_on_verilator_bitexact_and_cycle_model_exact(tmp_path):
    """`make sim LANES=2` in small: the generated Verilog of a 2-lane accelerator (free
    walkers) is bit-exact on Verilator, and sim.json (its "lanes" and "engine" from
    design.json) finds the cycle model exact."""
    from sim.runner import run_simulation, summarize
    from tests.accelerator_fixtures import sample_images, tiny_artifact
    artifact = tiny_artifact("l1p-wide")
    images = sample_images(artifact, 1)                  # a digit, all-max, all-zero
    hdl, golden = prepare(artifact, images, tmp_path / "sim", "wide", lanes=2)
    assert json.loads((hdl / "design.json").read_text())["lanes"] == 2
    raw = run_simulation(hdl, golden, list(range(len(images))), "verilator",
                         build_root=tmp_path / "build")
    check_bitexact(raw)
    report = summarize(raw, "verilator", "wide-x2", golden)
    assert report["lanes"] == 2 and report["engine"] == "walkers"
    assert report["bitexact"] == len(images)
    assert report["model_error"] == 0.0


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")   # the refused design
def test_generate_refuses_lanes_the_model_cannot_take(tmp_path, capsys):
    """Too many lanes for a layer: one line naming the layer and the numbers, exit 2, nothing
    written."""
    from model.flows.cli import main
    from model.ir import save_artifact
    from tests.accelerator_fixtures import tiny_artifact
    save_artifact(tiny_artifact("l1p-wide"), tmp_path / "wide")
    out = tmp_path / "hdl"
    assert main(["hdl", str(tmp_path / "wide.json"), "--out", str(out), "--lanes", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stforge: error: stem0 has 10 channels, 2 groups of 5 lanes")
    assert "Traceback" not in err and not out.exists()
    assert main(["hdl", str(tmp_path / "wide.json"), "--out", str(out), "--lanes", "0"]) == 2
    err = capsys.readouterr().err
    assert "--lanes: must be at least 1, not 0" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.accelerator_fixtures import sample_images, tiny_artifact
    root = tmp_path_factory.mktemp("tiny")
    artifact = tiny_artifact("l1p")
    return artifact, sample_images(artifact, 2), root


def test_icarus_agrees_with_the_golden_model(tiny):
    from sim.runner import run_simulation
    if shutil.which("iverilog") is None:
        pytest.fail("Icarus Verilog is not installed: `make install` installs it (apt-get)")
    artifact, images, root = tiny
    hdl, golden = prepare(artifact, images[:2], root / "icarus", "tiny")
    raw = run_simulation(hdl, golden, [0, 1], "icarus", build_root=root / "build")
    assert all(r["bitexact"] for r in raw["images"]), raw["images"][0]["mismatches"]


def test_results_do_not_depend_on_power_up_values(tiny):
    """Registers without an initial value (memory read data) and X assignments take random
    values on Verilator, two seeds: still bit-exact, so the zeros Verilator and the Icarus
    harness give them hide no dependence (an FPGA need not power up with zeros there)."""
    from sim.runner import run_simulation
    artifact, images, root = tiny
    hdl, golden = prepare(artifact, images[:2], root / "random-init", "tiny")
    for seed in (1, 2):
        raw = run_simulation(hdl, golden, [0, 1], "verilator", build_root=root / "build",
                             random_init_seed=seed)
        check_bitexact(raw)


def first_mismatch(raw):
    return next(m for r in raw["images"] for m in r["mismatches"])


def test_scoreboard_locates_a_corrupted_weight(tiny):
    from sim.runner import run_simulation
    from tests.accelerator_fixtures import perturb_weight
    artifact, images, root = tiny
    golden_root = root / "weight"
    _, golden = prepare(artifact, images[:1], golden_root, "good")
    bad, detail = perturb_weight(artifact, "block0.mlp1", images[:1])
    hdl, _ = prepare(bad, images[:1], golden_root, "bad")
    raw = run_simulation(hdl, golden, [0], "verilator", build_root=root / "build")
    assert not raw["images"][0]["bitexact"]
    assert first_mismatch(raw).startswith("image 0: spikes mismatch at node block0.mlp1,")


def test_scoreboard_locates_a_corrupted_threshold(tiny):
    from sim.runner import run_simulation
    from tests.accelerator_fixtures import perturb_threshold
    artifact, images, root = tiny
    golden_root = root / "threshold"
    _, golden = prepare(artifact, images[:1], golden_root, "good")
    bad, detail = perturb_threshold(artifact, "block0.q", images[:1])
    hdl, _ = prepare(bad, images[:1], golden_root, "bad")
    raw = run_simulation(hdl, golden, [0], "verilator", build_root=root / "build")
    m = first_mismatch(raw)
    assert m.startswith("image 0: spikes mismatch at node block0.q,")
    assert f"channel {detail['channel']}:" in m


def test_scoreboard_locates_a_corrupted_input_pixel(tiny):
    from sim.runner import run_simulation
    artifact, images, root = tiny
    hdl, golden = prepare(artifact, images[:1], root / "pixel", "good")
    pixel = int(np.argmax(images[0].reshape(-1)))        # the brightest pixel goes dark
    raw = run_simulation(hdl, golden, [0], "verilator", build_root=root / "build",
                         corrupt_pixel=pixel)
    assert first_mismatch(raw).startswith("image 0: spikes mismatch at node stem0,")


def test_design_without_trace_port_compares_logits_and_class(tiny):
    """`stforge hdl --no-trace`: the simulation compares the logits and the class, says so, and
    takes the layer cycles from the cycle model (totals measured)."""
    from hw.generate import generate_verilog
    from model.ir import save_artifact
    from sim.runner import run_simulation, summarize
    artifact, images, root = tiny
    hdl, golden = prepare(artifact, images[:2], root / "notrace", "tiny")
    save_artifact(artifact, root / "notrace" / "plain")
    generate_verilog(root / "notrace" / "plain.json", hdl, trace=False)
    raw = run_simulation(hdl, golden, [0, 1], "verilator", build_root=root / "build")
    report = summarize(raw, "verilator", "tiny-notrace", golden)
    assert report["bitexact"] == 2 and report["mismatches"] == 0
    assert report["compared"].startswith("the logits and the class")
    assert all(r["layer_cycles"] == {} and r["compared"] == 11 for r in raw["images"])
    assert not any(layer["measured"] for layer in report["layers"])
    assert report["model_error"] == 0.0          # the totals, against the cycle model


def test_a_hung_design_is_reported_not_waited_for(tiny, monkeypatch):
    """An image without a result within its deadline ends the run: the report names the
    image and counts it as a mismatch (here the deadline is made too short to finish)."""
    import sim.runner as runner
    artifact, images, root = tiny
    hdl, golden = prepare(artifact, images[:2], root / "hung", "tiny")
    monkeypatch.setattr(runner, "_deadlines", lambda expected: [100] * len(expected))
    raw = runner.run_simulation(hdl, golden, [1, 0], "verilator", build_root=root / "build")
    report = runner.summarize(raw, "verilator", "tiny", golden)
    assert raw["hung"] == 1 and raw["images"] == []
    assert report["mismatches"] == 2 and report["hung"] == {"image": 1, "cycles": 100}


def test_ctrl_c_during_a_simulation_is_one_line(tiny):
    """Ctrl-C (SIGINT to the terminal's process group) while `stforge sim` runs: one line, exit
    130, and no simulator left running (the simulator ignores it; the runner stops it)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    artifact, images, root = tiny
    many = np.concatenate([images] * 150)              # long enough to be interrupted
    hdl, golden = prepare(artifact, many, root / "ctrl-c", "tiny")
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from model.flows.cli import main; sys.exit(main(sys.argv[1:]))")
    child = subprocess.Popen(
        [sys.executable, "-c", code, "sim", "--hdl", str(hdl), "--golden", str(golden),
         "--images", str(len(many)), "--report", str(root / "ctrl-c.json")],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    deadline = time.time() + 300
    built = root / "build" / "sim" / "tiny-verilator" / "run" / "records.txt"
    while not (built.exists() and built.stat().st_size) and time.time() < deadline \
            and child.poll() is None:
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert err.strip().splitlines() == ["stforge: interrupted"], err
    assert not (root / "ctrl-c.json").exists()
