"""model/sweep_hw.py: a two-configuration sweep through a real Dask LocalCluster (failing job
reported, cache reused), content keys, Pareto fronts, command-line mistakes.

A tiny config (80 digits, D = 8, one epoch per stage) keeps each job to a few seconds; the
default tests skip synthesis (--no-synth). The synthesis test is `synth` and `slow`.
"""

import json
from pathlib import Path
import os
import shutil
import time

import pytest

from model import sources
from model.flows import cli, sweep_hw
from model.config import load_config

TINY = """
[data]
name = "digits"
limit = 80

[model]
stem_channels = [8, 8]
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


def sweep_main(argv):
    """`stforge sweep-hw ARGV` in this process."""
    return cli.main(["sweep-hw", *argv])


def _sweep(config, out, *args):
    argv = ["--config", str(config), "--out-dir", str(out), "--no-synth", "--images", "2",
            "--workers", "2", "--quiet", "--rank", *args]
    assert sweep_main(argv) == 0
    return json.loads((out / "reports" / "sweep_hw.json").read_text())


def test_two_configuration_sweep_on_a_local_cluster(tiny_config, tmp_path, capsys):
    # lanes 1, 2 and 4 at one sparsity: 4 lanes leave the 8-channel layers 2 groups, fewer than
    # the generator takes. `stforge sweep-hw` refuses them before any job starts (below); given
    # them anyway, run_sweep_hw must report that job failed, with its configuration, while the
    # others succeed; 2 lanes need fewer cycles than 1 on the same model.
    plan = sweep_hw.build_plan(load_config(tiny_config), config_path=str(tiny_config),
                               sparsities=[0.5], ranks=[], lanes=[1, 2, 4], images=2,
                               synth=False, out_dir=tmp_path)
    engine = sweep_hw._Engine(None, 2, 10.0)
    try:
        report = sweep_hw.run_sweep_hw(plan, engine, progress=False)
    finally:
        engine.close()
    ok, two, failed = report["rows"]
    assert (report["jobs"], report["cached"], report["computed"], report["failed"]) == (3, 0, 3, 1)
    assert report["stages_computed"] == {"dense": 1, "model": 1, "hw": 2}
    assert two["status"] == "ok" and two["lanes"] == 2 and two["model_key"] == ok["model_key"]
    assert two["ideal_cycles"] <= two["cycles"] < ok["cycles"]
    assert two["accuracy"] == ok["accuracy"]
    assert two["cycles_source"] == "cycle model (unchecked: no simulation report with " \
        "model_error for 2 lanes)"
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
            failed["seed"]) == ("l1p", 0.5, 4, "ice40-up5k", 0)
    assert failed["failed_stage"] == "hw" and "2 groups of 4 lanes" in failed["error"]
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
    keys = lambda c, j=job: (sweep_hw.dense_key(c, j.seed), sweep_hw.model_key(c, j),
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
    assert sweep_hw.row_key(config, job, 40, True, False) != base[2]    # --images: the row only


def test_code_version_covers_what_a_stage_imports():
    names = lambda stage: {p.relative_to(sweep_hw.ROOT).as_posix()
                           for p in sources.declared_sources(sweep_hw.STAGE_SOURCES[stage])}
    dense, model, hw = names("dense"), names("model"), names("hw")
    assert {"model/pipeline.py", "model/train.py", "model/transformer.py"} <= dense
    assert "hw/cycles.py" not in dense and "hw/synth.py" not in model
    assert {"model/export.py", "model/ir/golden.py", "model/ir/intops.py"} <= model
    assert "hw/cycles.py" not in model      # the hw stage runs the cycle model, on its lanes
    assert {"hw/accelerator/top.py", "hw/components/sparse.py", "hw/synth.py", "hw/board.py",
            "hw/cycles.py", "hw/plan.py", "model/ir/golden.py"} <= hw
    assert len(sweep_hw.code_version("hw")) == 64
    # declared, and complete: every project module a stage's code imports (statically, function
    # level too) is among its sources, so no edit it runs can leave its cache key unchanged
    entry = {"dense": ["model.pipeline"],
             "model": ["model.pipeline", "model.export", "model.ir.golden"],
             "hw": ["hw.accelerator", "hw.synth", "hw.bitstream", "hw.cycles", "model.ir.golden",
                    "model.pipeline", "model.flows.bench"]}
    for stage, modules in entry.items():
        missing = _import_closure(modules) - names(stage)
        assert not missing, (stage, sorted(missing))


def _import_closure(modules) -> set[str]:
    """The project files `modules` import, transitively (an ast walk, function level too)."""
    import ast
    root, seen, todo = sweep_hw.ROOT, set(), list(modules)
    while todo:
        name = todo.pop()
        if name.split(".")[0] not in ("model", "hw", "sim", "firmware"):
            continue
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        base = root / Path(*parts)
        path = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()),
                    None)
        if path is None or path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return {p.relative_to(root).as_posix() for p in seen}


def _copy_tree(root):
    """The project's Python sources in a new folder with new modification dates: a fresh clone."""
    for package in ("model", "hw", "sim", "firmware"):
        shutil.copytree(sources.ROOT / package, root / package, copy_function=shutil.copy,
                        ignore=lambda folder, names: [n for n in names if n == "__pycache__"
                                                      or n.endswith((".pt", ".npz"))])
    return root


def test_hw_source_hash_follows_content_not_dates(tmp_path):
    clone = _copy_tree(tmp_path / "clone")
    base = sources.hw_source_sha256(clone)
    assert base == sources.hw_source_sha256() and len(base) == 64   # a clone: same hash
    names = {p.relative_to(clone).as_posix() for p in sources.hw_sources(clone)}
    assert {"hw/accelerator/top.py", "hw/cycles.py", "hw/components/sparse.py", "hw/synth.py",
            "model/ir/artifact.py", "model/ir/intops.py"} <= names       # and what hw/ imports
    assert not any("__pycache__" in n or n.startswith(("sim/", "model/flows")) for n in names)
    assert "model/train.py" not in names and "firmware/protocol.py" in names

    future = time.time() + 86400
    os.utime(clone / "hw" / "cycles.py", (future, future))          # a date alone: same hash
    (clone / "hw" / "__pycache__").mkdir(exist_ok=True)
    (clone / "hw" / "__pycache__" / "cycles.py").write_text("# bytecode folder: ignored\n")
    (clone / "model" / "train.py").write_text("# not imported by hw/\n")
    assert sources.hw_source_sha256(clone) == base
    for changed in ("hw/cycles.py", "hw/components/neuron.py", "model/ir/artifact.py"):
        path = clone / changed
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert sources.hw_source_sha256(clone) != base, changed
        path.write_bytes(original)
    (clone / "hw" / "new_block.py").write_text("X = 1\n")              # a new hw file counts
    assert sources.hw_source_sha256(clone) != base


def _simulated(tmp_path, monkeypatch, model="l1p", model_error=0.0):
    """`stforge sim` with the simulation replaced by fixed results -> reports folder."""
    from sim import runner
    monkeypatch.setattr(runner, "run_simulation", lambda *args, **kwargs: {})
    monkeypatch.setattr(runner, "summarize", lambda raw, sim, name, golden: {
        "simulator": sim, "model": name, "images": 2, "bitexact": 2, "mismatches": 0,
        "accuracy": 1.0, "cycles_per_inference": {"mean": 10.0, "min": 9.0, "max": 11.0},
        "layers": [], "simulated_cycles_per_second": 1.0, "model_error": model_error})
    monkeypatch.setattr(runner, "print_table", lambda report: None)
    reports = tmp_path / "reports"
    assert cli.main(["sim", "--hdl", str(tmp_path / "hdl"), "--golden", str(tmp_path / "g.npz"),
                        "--model", model, "--report", str(reports / "sim.json")]) == 0
    return reports


def test_sim_report_records_the_hw_sources_and_the_sweep_trusts_only_those(tmp_path,
                                                                         monkeypatch):
    reports = _simulated(tmp_path, monkeypatch)
    current = sources.hw_source_sha256()
    for name in ("sim.json", "sim-l1p.json"):
        assert json.loads((reports / name).read_text())["hw_source_sha256"] == current
    text, checked, used = sweep_hw.cycles_source(reports)
    assert checked and text == "cycle model (checked against simulation: max error 0.00%)"
    assert len(used) == 2 and all("these hw sources" in u for u in used)

    # Dates do not matter: reports a year older than every source still vouch for them.
    year_ago = time.time() - 365 * 86400
    for path in reports.iterdir():
        os.utime(path, (year_ago, year_ago))
    assert sweep_hw.cycles_source(reports)[1] is True

    # Other sources than the simulated ones: stale, and the row says how to re-check.
    monkeypatch.setattr(sweep_hw, "hw_source_sha256", lambda: "0" * 64)
    text, checked, used = sweep_hw.cycles_source(reports)
    assert not checked and "max error 0.00%; stale: sim-l1p.json (and 1 more) simulated other " \
        "hw sources than this checkout's, re-run `make sim MODEL=l1p` to re-check)" in text
    assert all("other hw sources" in u for u in used)
    monkeypatch.undo()

    # A report from before the key: it cannot say what it checked, so it vouches for nothing.
    legacy = json.loads((reports / "sim-l1p.json").read_text())
    del legacy["hw_source_sha256"]
    legacy["model"] = "dsp"
    (reports / "sim-dsp.json").write_text(json.dumps(legacy))
    text, checked, _ = sweep_hw.cycles_source(reports)
    assert not checked
    assert "stale: sim-dsp.json records no hw_source_sha256, re-run `make sim MODEL=dsp`" in text

    # Lanes: a design of 2 lanes is checked only by reports that simulated 2 lanes.
    assert sweep_hw.cycles_source(reports, 2)[:2] == (
        "cycle model (unchecked: no simulation report with model_error for 2 lanes)", False)
    two = json.loads((reports / "sim-l1p.json").read_text())
    two.update(model="l1p-x2", lanes=2, model_error=0.0)
    (reports / "sim-l1p-x2.json").write_text(json.dumps(two))
    text, checked, used = sweep_hw.cycles_source(reports, 2)
    assert checked and used == [u for u in used if u.startswith("sim-l1p-x2.json")] and used
    monkeypatch.setattr(sweep_hw, "hw_source_sha256", lambda: "0" * 64)
    assert "re-run `make sim MODEL=l1p LANES=2`" in sweep_hw.cycles_source(reports, 2)[0]


def test_sources_changed_during_a_simulation_are_not_vouched_for(tmp_path, monkeypatch, capsys):
    from sim import runner
    hashes = iter(["a" * 64, "b" * 64])
    monkeypatch.setattr(runner, "hw_source_sha256", lambda: next(hashes))
    reports = _simulated(tmp_path, monkeypatch)
    assert json.loads((reports / "sim.json").read_text())["hw_source_sha256"] is None
    assert "hw sources changed during the simulation" in capsys.readouterr().err
    text, checked, _ = sweep_hw.cycles_source(reports)
    assert not checked and "records no hw_source_sha256" in text


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
    ["--lanes", "1", "4"],           # the tiny model's 8-channel layers: 2 groups of 4 lanes
    ["--lanes", "3"],                # does not divide the heads' 4 channels
    ["--seeds", "-1"],
    ["--images", "0"],
    ["--workers", "0"],
    ["--threads", "-1"],
    ["--connect-timeout", "nan"],
    ["--sparsity", "--rank"],        # nothing to sweep
    ["--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1", "--lanes", "1"],
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_config, tmp_path, capsys, args):
    out = tmp_path / "out"
    assert sweep_main(["--config", str(tiny_config), "--out-dir", str(out), "--no-synth",
                          "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stforge: error: "), err
    assert not out.exists()


def test_missing_config_is_an_error(tmp_path, capsys):
    assert sweep_main(["--config", str(tmp_path / "none.toml"),
                          "--out-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("stforge: error: config file")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.synth
def test_sweep_with_synthesis_on_ecp5(tiny_config, tmp_path):
    argv = ["--config", str(tiny_config), "--out-dir", str(tmp_path), "--images", "2",
            "--workers", "1", "--quiet", "--rank", "--sparsity", "0.9", "--lanes", "1",
            "--target", "ecp5-85f"]
    assert sweep_main(argv) == 0
    report = json.loads((tmp_path / "reports" / "sweep_hw.json").read_text())
    (row,) = report["rows"]
    assert row["status"] == "ok" and row["fits_resources"] is True
    assert row["fits"] is not None and (row["fits"] or "block RAM" in row["fit_error"])
    assert row["lut"] > 0 and row["ff"] > 0 and row["bram"] >= 1
    assert row["utilization"]["lut"] == pytest.approx(row["lut"] / 83640, abs=1e-4)
    assert row["fmax_mhz"] is None and "--fmax" in row["fmax_reason"]
