"""model/sweep_hw.py: a two-configuration sweep through a real Dask LocalCluster (failing job
reported, cache reused), content keys, Pareto fronts, command-line mistakes.

A tiny config (80 digits, D = 8, one epoch per stage) keeps each job to a few seconds; the
default tests skip synthesis (--no-synth). The synthesis test is `synth` and `slow`.
"""

import json

import pytest

from model import sweep_hw
from model.config import load_config

TINY = """
[data]
name = "digits"
limit = 80

[model]
stem_channels = [4, 8]
stem_pool = [true, false]
dim = 8
heads = 2
mlp_ratio = 2
timesteps = 2

[prune]
rank = 2

[quant]
extra_bits = []

[pipeline]
sweep_ranks = [2]

[pipeline.dense]
epochs = 1

[pipeline.finetune]
epochs = 1

[pipeline.qat]
epochs = 1
"""


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(TINY)
    return path


def _sweep(config, out, *args):
    argv = ["--config", str(config), "--out-dir", str(out), "--no-synth", "--images", "2",
            "--workers", "2", "--quiet", "--rank", *args]
    assert sweep_hw.main(argv) == 0
    return json.loads((out / "reports" / "sweep_hw.json").read_text())


def test_two_configuration_sweep_on_a_local_cluster(tiny_config, tmp_path, capsys):
    # lanes 1 and 2 at one sparsity: the generator builds one lane, so lanes=2 must fail and be
    # reported with its configuration while lanes=1 succeeds.
    report = _sweep(tiny_config, tmp_path, "--sparsity", "0.5", "--lanes", "1", "2")
    ok, failed = report["rows"]
    assert (report["jobs"], report["cached"], report["computed"], report["failed"]) == (2, 0, 2, 1)
    assert report["stages_computed"] == {"dense": 1, "model": 1, "hw": 1}
    assert report["engine"].startswith("Dask LocalCluster")
    assert ok["status"] == "ok" and not ok["cached"]
    assert (ok["method"], ok["sparsity"], ok["lanes"], ok["target"]) == \
        ("l1p", 0.5, 1, "ice40-up5k")
    assert 0.0 <= ok["accuracy"] <= 1.0 and ok["test_images"] == 80
    assert ok["ideal_cycles"] <= ok["cycles_min"] <= ok["cycles"] <= ok["cycles_max"]
    assert ok["cycles_images"] == 2
    assert ok["cycles_source"].startswith("cycle model (unchecked")   # no sim report here
    assert ok["lut"] is None and "no-synth" in ok["fit_error"]
    assert ok["fmax_mhz"] is None and ok["fmax_reason"] and ok["latency_us"] is None
    assert failed["status"] == "failed"
    assert (failed["method"], failed["sparsity"], failed["lanes"], failed["target"],
            failed["seed"]) == ("l1p", 0.5, 2, "ice40-up5k", 0)
    assert failed["failed_stage"] == "hw" and "lanes" in failed["error"]
    assert "\n" not in failed["error"]
    out = capsys.readouterr().out
    assert "FAILED in hw stage" in out
    assert (tmp_path / "reports" / "sweep_hw_pareto.png").stat().st_size > 0

    # Second run, one configuration changed (sparsity 0.5 -> 0.8): the lanes=1 row at 0.5 comes
    # from the cache, the new point trains only its own model (the dense parent is cached too).
    report = _sweep(tiny_config, tmp_path, "--sparsity", "0.5", "0.8", "--lanes", "1")
    first, second = report["rows"]
    assert (report["cached"], report["computed"], report["failed"]) == (1, 1, 0)
    assert report["stages_computed"] == {"dense": 0, "model": 1, "hw": 1}
    assert first["cached"] and first["sparsity"] == 0.5 and first["key"] == ok["key"]
    assert not second["cached"] and second["sparsity"] == 0.8
    assert report["dense"][0]["seed"] == 0


def test_cache_key_follows_the_config(tiny_config):
    config = load_config(tiny_config)
    job = sweep_hw.Job(seed=0, method="l1p", sparsity=0.9, rank=None, lanes=1,
                       target="ice40-up5k")
    keys = lambda c, j=job: (sweep_hw.dense_key(c, j.seed), sweep_hw.model_key(c, j, 20),
                             sweep_hw.row_key(c, j, 20, True, False))
    base = keys(config)
    assert keys(load_config(tiny_config)) == base                  # same content, same keys
    config.pipeline.out_dir = "elsewhere"                           # not an input of any job
    config.pipeline.sweep_seeds = [5, 6]
    config.prune.sparsity = 0.3                                     # the axis replaces it
    config.quant.extra_bits = [2]                                   # not used by the sweep
    assert keys(config) == base
    config.pipeline.qat.epochs = 2                                  # model changes, parent not
    changed = keys(config)
    assert changed[0] == base[0] and changed[1] != base[1] and changed[2] != base[2]
    config.model.timesteps = 3                                      # everything changes
    assert all(a != b for a, b in zip(keys(config), changed))
    config = load_config(tiny_config)
    other = sweep_hw.Job(0, "l1p", 0.9, None, 1, "ecp5-85f")       # only the hw stage differs
    assert keys(config, other)[:2] == base[:2] and keys(config, other)[2] != base[2]
    assert sweep_hw.row_key(config, job, 20, True, True) != base[2]     # --fmax


def test_code_version_covers_what_a_stage_imports():
    names = lambda stage: {p.relative_to(sweep_hw.ROOT).as_posix()
                           for p in sweep_hw.source_closure(sweep_hw.STAGE_MODULES[stage])}
    dense, model, hw = names("dense"), names("model"), names("hw")
    assert {"model/pipeline.py", "model/train.py", "model/transformer.py"} <= dense
    assert "hw/cycles.py" not in dense and "hw/synth.py" not in model
    assert {"model/export.py", "model/golden.py", "hw/cycles.py", "model/intops.py"} <= model
    assert {"hw/accelerator.py", "hw/components/sparse.py", "hw/synth.py", "hw/board.py"} <= hw
    assert len(sweep_hw.code_version("hw")) == 64


def test_pareto_front():
    # (−accuracy, cycles): minimize both
    points = [(-0.90, 100), (-0.95, 200), (-0.93, 300), (-0.95, 200), (-0.80, 100),
              (-0.99, 500), None, (-0.5, None)]
    assert sweep_hw.pareto_front(points) == [True, True, False, True, False, True, False, False]
    assert sweep_hw.pareto_front([]) == []
    assert sweep_hw.pareto_front([(1, 2, 3)]) == [True]

    rows = [{"status": "ok", "target": "a", "accuracy": 0.9, "cycles": 100, "lut": 50},
            {"status": "ok", "target": "a", "accuracy": 0.95, "cycles": 90, "lut": 60},
            {"status": "ok", "target": "b", "accuracy": 0.9, "cycles": 100, "lut": 10},
            {"status": "failed", "target": "a"}]
    sweep_hw.mark_pareto(rows)
    assert [r.get("pareto_cycles") for r in rows] == [False, True, False, None]
    assert [r.get("pareto_lut") for r in rows] == [True, True, True, None]


@pytest.mark.parametrize("args", [
    ["--target", "xc7a35t"],
    ["--sparsity", "1.0"],
    ["--sparsity", "0"],
    ["--rank", "0"],
    ["--rank", "9"],                 # above the tiny model's dim 8
    ["--lanes", "0"],
    ["--lanes", "two"],
    ["--sparsity", "--rank"],        # nothing to sweep
    ["--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1", "--lanes", "1"],
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_config, tmp_path, capsys, args):
    out = tmp_path / "out"
    assert sweep_hw.main(["--config", str(tiny_config), "--out-dir", str(out), "--no-synth",
                          "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stforge: error: "), err
    assert not out.exists()


def test_missing_config_is_an_error(tmp_path, capsys):
    assert sweep_hw.main(["--config", str(tmp_path / "none.toml"),
                          "--out-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("stforge: error: config file")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.synth
def test_sweep_with_synthesis_on_ecp5(tiny_config, tmp_path):
    argv = ["--config", str(tiny_config), "--out-dir", str(tmp_path), "--images", "2",
            "--workers", "1", "--quiet", "--rank", "--sparsity", "0.9", "--lanes", "1",
            "--target", "ecp5-85f"]
    assert sweep_hw.main(argv) == 0
    report = json.loads((tmp_path / "reports" / "sweep_hw.json").read_text())
    (row,) = report["rows"]
    assert row["status"] == "ok" and row["fits_resources"] is True
    assert row["fits"] is not None and (row["fits"] or "block RAM" in row["fit_error"])
    assert row["lut"] > 0 and row["ff"] > 0 and row["bram"] >= 1
    assert row["utilization"]["lut"] == pytest.approx(row["lut"] / 83640, abs=1e-4)
    assert row["fmax_mhz"] is None and "--fmax" in row["fmax_reason"]
