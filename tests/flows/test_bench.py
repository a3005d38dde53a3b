"""model/bench.py: arithmetic, op counts, measured/modelled labelling, missing reports, keys.

Fast: no simulation, no synthesis, no real timing loops beyond a tiny model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model.flows import bench
from accelerator_fixtures import tiny_artifact
from model.ir import LowRankMatMul

REPORTS_FPGA_KEYS = {"variant", "target", "cycles", "ideal_cycles", "fmax_mhz", "latency_us",
                     "inferences_per_s", "energy_uj_ops", "energy_uj_device"}
REPORTS_BASELINE_KEYS = {"device", "measured", "model", "batch", "latency_us"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-artifacts"


# ---- arithmetic ---------------------------------------------------------------------------------

def test_latency_and_throughput():
    assert bench.fpga_latency(30_000, 30.0) == (1000.0, 1000.0)
    assert bench.fpga_latency(110_000, None) == (None, None)
    assert bench.fpga_latency(None, 30.0) == (None, None)


def test_energy_arithmetic():
    # 1e6 MACs at 4.6 pJ + 1e6 ACs at 0.9 pJ = 5.5 uJ
    assert bench.ops_energy_uj(1e6, 1e6) == pytest.approx(5.5)
    assert bench.ops_energy_uj(0, 1000) == pytest.approx(0.9e-3)
    assert bench.device_energy_uj(0.25, 1000.0) == pytest.approx(250.0)   # W x us = uJ
    assert bench.device_energy_uj(None, 1000.0) is None
    assert bench.E_MAC_PJ == 4.6 and bench.E_AC_PJ == 0.9


def test_gpu_latency_model():
    spec = dict(bench.GPU_SPEC, launch_us=5.0, peak_fp32_flops=1e12, hbm_bytes_per_s=1e9,
                boost_clock_mhz=1000.0)
    est = bench.model_gpu_latency(10, 2e6, 3e3, spec)    # 50 us + 2 us + 3 us
    assert est["latency_us"] == pytest.approx(55.0)
    assert est["launch_us"] == pytest.approx(50.0)
    assert est["cycles"] == pytest.approx(55_000.0)


def test_fpga_row_numbers():
    sim = {"cycles_per_inference": {"mean": 60_000.0, "min": 50_000, "max": 70_000},
           "ideal_cycles_per_inference": 30_000.0, "images": 100, "bitexact": 100}
    synth = {"fmax_mhz": 30.0, "model": "l1p"}
    ops = {"mac": 1e6, "ac": 1e6, "energy_uj": 5.5}
    row = bench.fpga_row("l1p", "ecp5-85f", sim, synth, ops, [])
    assert row["latency_us"] == pytest.approx(2000.0)
    assert row["inferences_per_s"] == pytest.approx(500.0)
    assert row["ideal_latency_us"] == pytest.approx(1000.0)
    assert row["energy_uj_ops"] == 5.5
    power = bench.DEVICE_POWER["ecp5-85f"][0]
    assert row["energy_uj_device"] == pytest.approx(power * 2000.0)
    assert "fmax_note" not in row
    other = bench.fpga_row("dense", "ecp5-85f", sim, synth, ops, [])
    assert "l1p" in other["fmax_note"]           # fmax borrowed from another build: said so
    assert REPORTS_FPGA_KEYS <= set(row)


# ---- op counting on hand-made spikes --------------------------------------------------------------

def _silent(artifact):
    """Zero spikes of every traced node (right shapes) and an all-zero image."""
    image = np.zeros((1,) + tuple(artifact.model.input_shape), np.int64)
    spikes, img = bench.golden_node_spikes(artifact, image)[0]
    return {k: np.zeros_like(v) for k, v in spikes.items()}, np.zeros_like(img)


def _node(artifact, name):
    return artifact.node(name)


def test_count_ops_hand_made_l1p(root):
    art = tiny_artifact("l1p", root)
    spikes, image = _silent(art)
    stem0 = _node(art, "stem0")
    image[0, 3, 3] = 5                  # one interior pixel: seen by 9 outputs x c_out weights
    o = _node(art, "block0.o")
    col_nnz = np.diff(np.asarray(o.col_ptr))
    j = int(np.argmax(col_nnz))
    spikes["block0.attn"][0, 0, j] = 1  # one spike into the output projection
    q, k, v = (spikes[f"block0.{x}"] for x in "qkv")
    q[0, 0, 0] = 1                      # head 0: q 1 bit; k 2 bits and v 1 bit on token 0
    k[0, 0, 0] = k[0, 0, 1] = 1
    v[0, 0, 0] = 1
    heads = _node(art, "block0.attn").heads
    d = _node(art, "block0.attn").dim // heads
    head = _node(art, "head")
    ops = bench.count_ops(art, spikes, image)
    L = ops["layers"]
    assert L["stem0"] == {"mac": 9 * stem0.out_channels, "ac": 0}       # pixel-fed: MACs
    assert L["stem1"] == {"mac": 0, "ac": 0}
    assert L["block0.o"] == {"mac": 0, "ac": int(col_nnz[j])}
    assert L["block0.attn"] == {"mac": 0, "ac": 2 * 1 + 1 * d}              # K^T V + Q (K^T V)
    assert L["head"] == {"mac": head.classes * head.in_features, "ac": 0}
    for name in ("block0.q", "block0.k", "block0.v", "block0.mlp1", "block0.mlp2"):
        assert L[name] == {"mac": 0, "ac": 0}
    assert ops["mac"] == 9 * stem0.out_channels + head.classes * head.in_features
    assert ops["ac"] == int(col_nnz[j]) + 2 + d
    assert ops["energy_uj"] == pytest.approx((4.6 * ops["mac"] + 0.9 * ops["ac"]) * 1e-6)


def test_count_ops_lowrank_a_stage_is_macs(root):
    art = tiny_artifact("dsp", root)
    spikes, image = _silent(art)
    man = art.model
    ops = bench.count_ops(art, spikes, image)
    lowrank = [n for n in art.nodes if isinstance(n, LowRankMatMul)]
    assert lowrank
    for n in lowrank:
        assert ops["layers"][n.name] == {
            "mac": man.timesteps * man.tokens * n.rank * n.out_features, "ac": 0}


def test_attention_acs():
    q = np.zeros((1, 2, 4), np.int64)
    k, v = q.copy(), q.copy()
    k[0, 0, :2] = 1; v[0, 0, :2] = 1       # head 0 (d = 2): 2 x 2 co-activations
    k[0, 1, 2] = 1; v[0, 1, 3] = 1         # head 1: 1 x 1
    q[0, 1, 3] = 1                         # one q bit in head 1: adds d = 2
    assert bench.attention_acs(q, k, v, heads=2) == 4 + 1 + 2


# ---- measured / modelled labelling ----------------------------------------------------------------

def _tiny_xs():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4)).eval(), {1: torch.randn(1, 8), 4: torch.randn(4, 8)}


def test_gpu_rows_modelled_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, xs = _tiny_xs()
    said = []
    rows = bench.gpu_rows(model, xs, "l1p", log=said.append)
    assert said == [bench.NO_CUDA_MESSAGE]
    assert "no CUDA device on this machine: GPU rows are modelled" in said
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert r["measured"] is False and r["label"] == "modelled" and r["model"] == "float"
        assert r["device"] == bench.GPU_SPEC["name"]
        assert r["kernels"] >= 1                        # addmm at least
        assert r["cycles"] == pytest.approx(r["latency_us"] * bench.GPU_SPEC["boost_clock_mhz"])
        assert REPORTS_BASELINE_KEYS <= set(r)
    assert rows[1]["flops"] > rows[0]["flops"]


def test_profile_counts_linear():
    model, xs = _tiny_xs()
    prof = bench.profile_float_model(model, xs[4])
    assert prof["matmul_flops"] == 2 * 4 * 8 * 4
    assert prof["kernels"] >= 1 and prof["bytes"] > 0


def test_gpu_rows_measured_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def fake_measure(model, xs, reps=50):
        return [{"device": "Fake GPU", "measured": True, "label": "measured", "model": "float",
                 "batch": b, "latency_us": 100.0 * b, "clock_mhz": 1500.0,
                 "cycles": 150_000.0 * b} for b in xs]

    monkeypatch.setattr(bench, "_measure_cuda", fake_measure)
    model, xs = _tiny_xs()
    said = []
    rows = bench.gpu_rows(model, xs, "l1p", log=said.append)
    assert said == []
    assert all(r["measured"] is True and r["label"] == "measured" for r in rows)
    assert all(r["variant"] == "l1p" for r in rows)


def test_ratios_label_measured_and_modelled():
    fpga = [{"variant": "l1p", "target": "ecp5-85f", "cycles": 100_000.0, "ideal_cycles": 80_000.0,
             "latency_us": 3000.0, "energy_uj_device": 750.0, "energy_uj_ops": 0.1},
            {"variant": "dense", "target": "ecp5-85f", "cycles": 200_000.0,
             "ideal_cycles": 200_000.0, "latency_us": 6000.0, "energy_uj_device": 1500.0,
             "energy_uj_ops": 0.2}]
    gpu = {"device": "NVIDIA A100 40GB PCIe", "measured": False, "model": "float", "batch": 1,
           "variant": "l1p", "latency_us": 1000.0, "energy_uj_device": 250_000.0,
           "energy_uj_ops": 5.0}
    r = bench.compute_ratios(fpga, [gpu], "l1p")
    g = r["fpga_vs_gpu_batch1"]
    assert g["latency_ratio_fpga_over_gpu"] == pytest.approx(3.0)
    assert g["energy_ratio_gpu_over_fpga"] == pytest.approx(250_000 / 750)
    assert g["ops_energy_ratio_gpu_over_fpga"] == pytest.approx(50.0)
    assert g["gpu_measured"] is False and "modelled" in g["what_is_measured"]
    d = r["l1p_vs_dense_cycles"]
    assert d["dense_over_l1p"] == pytest.approx(2.0) and d["meets_target"] is False
    assert d["ideal_dense_over_l1p"] == pytest.approx(2.5)
    gpu_m = dict(gpu, measured=True, device="Fake GPU")
    r2 = bench.compute_ratios(fpga, [gpu, gpu_m], "l1p")   # a measured row wins, never averaged
    assert r2["fpga_vs_gpu_batch1"]["gpu"] == "Fake GPU"
    assert r2["fpga_vs_gpu_batch1"]["gpu_measured"] is True


# ---- missing reports ------------------------------------------------------------------------------

def test_missing_sim_report_message(tmp_path):
    rep, msg = bench.load_sim_report(tmp_path, "dsp")
    assert rep is None
    assert "make sim MODEL=dsp" in msg and "sim-dsp.json" in msg
    assert "\n" not in msg


def test_missing_synth_report_gives_null_fmax(tmp_path):
    rep, msg = bench.load_synth_report(tmp_path, "ice40-up5k")
    assert rep is None
    assert "synth-ice40-up5k.json" in msg and "make bitstream TARGET=ice40-up5k" in msg
    sim = {"cycles_per_inference": {"mean": 1000.0, "min": 900, "max": 1100},
           "ideal_cycles_per_inference": 800.0}
    row = bench.fpga_row("l1p", "ice40-up5k", sim, rep, None, [msg])
    assert row["fmax_mhz"] is None and row["latency_us"] is None
    assert row["energy_uj_device"] is None and row["inferences_per_s"] is None
    assert row["cycles"] == 1000.0 and row["notes"] == [msg]


def test_present_reports_are_read(tmp_path):
    (tmp_path / "sim-l1p.json").write_text(json.dumps(
        {"cycles_per_inference": {"mean": 10.0, "min": 9, "max": 11},
         "ideal_cycles_per_inference": 8.0}))
    (tmp_path / "synth-ecp5-85f.json").write_text(json.dumps({"fmax_mhz": 34.0}))
    assert bench.load_sim_report(tmp_path, "l1p")[1] is None
    assert bench.load_synth_report(tmp_path, "ecp5-85f")[0]["fmax_mhz"] == 34.0


def _synth(reports, name, **record):
    reports.mkdir(parents=True, exist_ok=True)
    (reports / name).write_text(json.dumps(record))


def test_each_variant_uses_its_own_synth_report(tmp_path):
    _synth(tmp_path, "synth-ecp5-85f.json", fmax_mhz=60.0, model="l1p")
    _synth(tmp_path, "synth-ecp5-85f-dsp.json", fmax_mhz=55.0, model="dsp")
    sim = {"cycles_per_inference": {"mean": 1000.0, "min": 900, "max": 1100}}
    rows = {}
    for variant in ("l1p", "dsp", "dense"):
        rep, msg = bench.load_synth_report(tmp_path, "ecp5-85f", variant)
        assert msg is None
        rows[variant] = bench.fpga_row(variant, "ecp5-85f", sim, rep, None, [])
    assert [rows[v]["fmax_mhz"] for v in ("l1p", "dsp", "dense")] == [60.0, 55.0, 60.0]
    assert rows["dsp"]["fmax_source"] == str(tmp_path / "synth-ecp5-85f-dsp.json")
    assert rows["dsp"]["fmax_model"] == "dsp" and "fmax_note" not in rows["dsp"]
    assert rows["dsp"]["latency_us"] == pytest.approx(1000.0 / 55.0)
    assert rows["l1p"]["fmax_source"] == str(tmp_path / "synth-ecp5-85f.json")
    assert "fmax_note" not in rows["l1p"]
    # dense has no build of its own: the l1p fmax, flagged, with the command that would fix it
    assert rows["dense"]["fmax_model"] == "l1p"
    note = rows["dense"]["fmax_note"]
    assert "fmax of the l1p build on ecp5-85f" in note and "synth-ecp5-85f-dense.json" in note
    assert "make bitstream TARGET=ecp5-85f MODEL=dense" in note
    # the default report is only ever the default model's: bench does not read synth-*-l1p.json
    _synth(tmp_path, "synth-ecp5-85f-l1p.json", fmax_mhz=1.0, model="l1p")
    assert bench.load_synth_report(tmp_path, "ecp5-85f", "l1p")[0]["fmax_mhz"] == 60.0


def test_a_synth_report_written_before_per_model_reports_is_flagged(tmp_path):
    # `make bitstream MODEL=dsp` used to overwrite synth-<target>.json
    _synth(tmp_path, "synth-ice40-up5k.json", fmax_mhz=30.0, model="dsp")
    l1p = bench.fpga_row("l1p", "ice40-up5k", None,
                         bench.load_synth_report(tmp_path, "ice40-up5k", "l1p")[0], None, [])
    dsp = bench.fpga_row("dsp", "ice40-up5k", None,
                         bench.load_synth_report(tmp_path, "ice40-up5k", "dsp")[0], None, [])
    assert l1p["fmax_note"] == ("fmax of the dsp build on ice40-up5k: synth-ice40-up5k.json "
                                "holds that build, from before per-model reports (`make bitstream "
                                "TARGET=ice40-up5k MODEL=l1p`); same generator, assumed similar")
    assert "fmax_note" not in dsp and dsp["fmax_mhz"] == 30.0


def test_a_broken_variant_synth_report_is_reported_not_replaced(tmp_path):
    _synth(tmp_path, "synth-ecp5-85f.json", fmax_mhz=60.0, model="l1p")
    (tmp_path / "synth-ecp5-85f-dsp.json").write_text("{not json")
    rep, msg = bench.load_synth_report(tmp_path, "ecp5-85f", "dsp")
    assert rep is None and "synth-ecp5-85f-dsp.json" in msg
    assert "rerun `make bitstream TARGET=ecp5-85f MODEL=dsp`" in msg and "\n" not in msg
    _synth(tmp_path, "synth-ecp5-85f-dsp.json", fmax_mhz=None, model="dsp")
    rep, msg = bench.load_synth_report(tmp_path, "ecp5-85f", "dsp")
    assert rep is None and "has no fmax_mhz" in msg and "MODEL=dsp" in msg
    # neither report: the message names both ways to get an fmax
    rep, msg = bench.load_synth_report(tmp_path / "none", "ecp5-85f", "dense")
    assert rep is None and "synth-ecp5-85f.json" in msg
    assert "`make bitstream TARGET=ecp5-85f`" in msg and "MODEL=dense` for dense's own" in msg


def test_make_bitstream_of_another_model_keeps_the_default_report(root, tmp_path, monkeypatch):
    """hw.bitstream.build's default paths, then bench reading them: the dsp build goes to its own
    report and folder; synth-<target>.json and build/<target>/ stay the l1p build's."""
    import warnings
    from amaranth.hdl import UnusedElaboratable
    from hw import bitstream, synth
    from model.ir import save_artifact
    art = tiny_artifact("l1p", root)
    for name in ("l1p", "dsp"):                       # the name is the model, not the weights
        save_artifact(art, tmp_path / "artifacts" / name)
    built = []

    def fake_build(top, target, out_dir, clock_mhz, *, name):
        built.append(Path(out_dir))
        return {"target": target, "board": "ulx3s-85f", "lut": 1, "ff": 2, "bram": 3,
                "spram": 0, "dsp": 4, "fmax_mhz": 50.0 + len(built),
                "bitstream": f"{out_dir}/top.bit", "sha256": "0" * 64}

    monkeypatch.setattr(synth, "build_bitstream", fake_build)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)   # the fake never elaborates
        bitstream.build("ecp5-85f", tmp_path / "artifacts" / "l1p.json")
        bitstream.build("ecp5-85f", tmp_path / "artifacts" / "dsp.json")
    assert built == [Path("build/ecp5-85f"), Path("build/ecp5-85f-dsp")]
    reports = tmp_path / "build" / "reports"
    default = json.loads((reports / "synth-ecp5-85f.json").read_text())
    dsp = json.loads((reports / "synth-ecp5-85f-dsp.json").read_text())
    assert (default["model"], default["fmax_mhz"], default["bitstream"]) == \
        ("l1p", 51.0, "build/ecp5-85f/top.bit")
    assert (dsp["model"], dsp["fmax_mhz"], dsp["bitstream"]) == \
        ("dsp", 52.0, "build/ecp5-85f-dsp/top.bit")
    assert sorted(p.name for p in reports.iterdir()) == ["synth-ecp5-85f-dsp.json",
                                                         "synth-ecp5-85f.json"]
    assert bench.load_synth_report(reports, "ecp5-85f", "dsp")[0]["fmax_mhz"] == 52.0
    assert bench.load_synth_report(reports, "ecp5-85f", "l1p")[0]["fmax_mhz"] == 51.0


# ---- bench.json keys ------------------------------------------------------------------------------

def test_rows_carry_reports_md_keys(root):
    art = tiny_artifact("l1p", root)
    images = np.zeros((2,) + tuple(art.model.input_shape), np.int64)
    model, xs = _tiny_xs()

    class Wrap(nn.Module):                   # the CPU rows feed images; a tiny float stand-in
        def forward(self, x):
            return model(x.flatten(1)[:, :8])

    rows = bench.cpu_rows("l1p", Wrap(), art, images, 1.0, (1, 2), quick=True)
    assert {(r["model"], r["batch"]) for r in rows} == {("float", 1), ("float", 2),
                                                       ("int-golden", 1), ("int-golden", 2)}
    for r in rows:
        assert REPORTS_BASELINE_KEYS <= set(r)
        assert r["device"] == "cpu" and r["measured"] is True and r["threads"] >= 1
        assert r["latency_us"] > 0
    assert set(bench.REQUIRED_FPGA_KEYS) == REPORTS_FPGA_KEYS
    assert set(bench.REQUIRED_BASELINE_KEYS) == REPORTS_BASELINE_KEYS


def test_nothing_to_bench_is_one_line_and_writes_nothing(tmp_path):
    import subprocess
    import sys
    for args, want in ((["--variants", "foo"], "nothing to bench"),
                       (["--targets", "ice40-hx8k"], "invalid choice: 'ice40-hx8k'")):
        r = subprocess.run([sys.executable, "-m", "model.flows.cli", "bench", "--reports",
                            str(tmp_path / "r"),
                            "--artifacts", str(tmp_path), *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and want in r.stderr, r.stderr
        assert not (tmp_path / "r").exists()
