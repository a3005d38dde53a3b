"""The command line: user mistakes give one line and exit 2 and write nothing; a tiny end-to-end
pipeline writes model.json as REPORTS.md defines."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def stforge(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "model.flows.cli", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=600)


def tiny_config(tmp_path, extra=""):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f"""
[data]
limit = 120
[pipeline]
out_dir = "{tmp_path / 'out'}"
sweep_sparsities = [0.9]
sweep_ranks = [4]
sweep_seeds = [0, 1]
[pipeline.dense]
epochs = 1
[pipeline.finetune]
epochs = 1
[pipeline.qat]
epochs = 1
{extra}
""")
    return cfg


@pytest.mark.parametrize("extra, message", [
    ("[model]\nheads = 5", "not divisible by model.heads"),
    ("[prune]\nsparsity = 1.5", "prune.sparsity must be a number in [0, 1)"),
    ("[prune]\nrank = 99", "rank 99 is impossible"),
    ("[bogus]\nx = 1", "unknown config key bogus"),
    ("[data]\nname = 'cifar10'\npath = '/nonexistent/cifar'", "/nonexistent/cifar"),
])
def test_bad_config_one_line_no_output(tmp_path, extra, message):
    # [data] appears twice when extra sets it; TOML forbids that, so rewrite instead.
    cfg = tiny_config(tmp_path)
    text = cfg.read_text()
    if extra.startswith("[data]"):
        text = text.replace("[data]\nlimit = 120", extra)
    else:
        text += extra
    cfg.write_text(text)
    r = stforge("pipeline", "--config", cfg, "--quiet")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stforge: error:") and message in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_and_bad_artifact(tmp_path):
    r = stforge("export", f"l1p={tmp_path / 'none.pt'}", "--out-dir", tmp_path / "a",
                "--report", tmp_path / "g.json")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "g.json").exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    r = stforge("evaluate", "--in", junk)
    assert r.returncode == 2 and "cannot be read" in r.stderr


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path):
    cfg = tiny_config(tmp_path)
    r = stforge("pipeline", "--config", cfg, "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "reports" / "model.json").read_text())
    assert report["dataset"] == "digits" and report["timesteps"] == 4
    assert {"accuracy", "params", "block_params"} <= set(report["dense"])
    kinds = {(v["method"], v["neuron"], v["weight_bits"]) for v in report["variants"]}
    assert {("l1p", "slif", None), ("l1p", "lif", None), ("dsp", "slif", None),
            ("dsp", "lif", None), ("l1p", "slif", 8), ("l1p", "slif", 4),
            ("dsp", "slif", 8)} <= kinds
    for v in report["variants"]:
        assert 0.0 <= v["accuracy"] <= 1.0 and v["nonzero_params"] <= v["params"]
        if v["method"] == "l1p":
            assert v["sparsity"] >= 0.9
    assert report["deployed"]["method"] == "l1p" and report["deployed"]["weight_bits"] == 8
    ckpt = tmp_path / "out" / "checkpoints" / "l1p-int8.pt"
    assert ckpt.exists()
    r = stforge("export", f"l1p={ckpt}", "--out-dir", tmp_path / "art", "--report",
                tmp_path / "golden.json")
    assert r.returncode == 0, r.stderr
    golden = json.loads((tmp_path / "golden.json").read_text())
    assert {"images", "accuracy_quant", "accuracy_int", "agreement"} <= set(golden)
    r = stforge("sweep", "--config", cfg, "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "reports" / "model.json").read_text())
    assert len(report["sweep"]["slif_vs_lif"]) == 2
    assert (tmp_path / "out" / "reports" / "accuracy_vs_sparsity.png").stat().st_size > 1000
