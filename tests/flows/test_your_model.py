"""docs/YOUR_MODEL.md does what it says: its config is valid and is the model it describes, its
commands parse, and they write where its tables say.

Cheap (default suite): a tiny untrained int4 model, saved where the pipeline would save the
deployed checkpoint, goes through the page's export command and `stforge hdl`; make's recipes
for `make hdl` and `make sim` with MODEL as a path are read with STFORGE=echo. Slow: every
command of the page on a tiny version of its config, training and Verilator included, in a
temporary folder (make's recipes are run as make prints them, so nothing lands in build/)."""

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from model.flows import cli

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "YOUR_MODEL.md"
ARTIFACT = "build/mine/artifacts/mine.json"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", PAGE.read_text(), re.S)


def page_config() -> dict:
    (text,) = blocks("toml")
    return tomllib.loads(text)


def page_commands() -> list[list[str]]:
    """The page's shell commands, in order, as argument lists."""
    return [shlex.split(line) for block in blocks("sh") for line in block.splitlines()
            if line.strip() and not line.startswith("#")]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def toml_text(values: dict, prefix: str = "") -> str:
    plain = {k: v for k, v in values.items() if not isinstance(v, dict)}
    text = (f"[{prefix}]\n" if prefix and plain else "") + "".join(
        f"{k} = {toml_value(v)}\n" for k, v in plain.items())
    return text + "".join(toml_text(v, f"{prefix}.{k}" if prefix else k)
                          for k, v in values.items() if isinstance(v, dict))


def tiny(values: dict) -> dict:
    """The page's config, shrunk: D = 12, T = 2, 80 images, one epoch per stage."""
    out = {k: dict(v) for k, v in values.items()}
    out["model"].update(stem_channels=[8, 12], dim=12, heads=2, mlp_ratio=2, timesteps=2)
    out["prune"]["rank"] = 2
    out["data"] = {"limit": 80}
    out["pipeline"]["sweep_ranks"] = [2]
    for stage in ("dense", "finetune", "qat"):
        out["pipeline"].setdefault(stage, {})["epochs"] = 1
    return out


def make_recipe(*args) -> list[list[str]]:
    """The commands make would run (STFORGE=echo prints them instead of running them)."""
    r = subprocess.run(["make", "--silent", "--no-print-directory", "-o", ".venv/.installed",
                        "STFORGE=echo", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [shlex.split(line) for line in r.stdout.splitlines()]


def test_the_config_is_the_model_the_page_describes():
    from model.config import config_from_dict
    from model.pipeline import pipeline_outputs, quantized_names
    config = config_from_dict(page_config())
    m, q, pl = config.model, config.quant, config.pipeline
    assert (m.depth, m.dim, q.weight_bits, pl.deploy_method) == (2, 48, 4, "l1p")
    deployed = f"{pl.deploy_method}-int{q.weight_bits}"
    assert deployed in quantized_names(config)
    assert f"build/mine/checkpoints/{deployed}.pt" in PAGE.read_text()
    written = {str(p) for p in pipeline_outputs(config)}
    for name in ("dense", "l1p-slif", "dsp-lif", "dense-int4", "l1p-int4", "dsp-int4"):
        assert f"build/mine/checkpoints/{name}.pt" in written
    assert {"build/mine/reports/model.json", "build/mine/reports/finetune_curves.png"} <= written


def test_the_page_commands_parse():
    commands = page_commands()
    assert [c[0] for c in commands] == [".venv/bin/stforge", ".venv/bin/stforge", "make", "make"]
    for argv in commands[:2]:
        cli.build_parser(argv[1:]).parse_args(argv[1:])     # exits on a malformed one


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The page's export command on a tiny untrained int4 model saved as the deployed
    checkpoint; returns the working folder."""
    import os
    import torch
    from model.config import config_from_dict
    from model.train import rebuild, save_checkpoint
    from model.transformer import SpikingTransformer
    work = tmp_path_factory.mktemp("mine")
    config = config_from_dict(tiny(page_config()))
    torch.manual_seed(0)
    model = rebuild(SpikingTransformer(config.model, "slif"), weight_bits=4, leak_bits=8)
    save_checkpoint(work / "build/mine/checkpoints/l1p-int4.pt", model, config, {})
    export = page_commands()[1]
    old = os.getcwd()
    os.chdir(work)
    try:
        assert cli.main(export[1:]) == 0
    finally:
        os.chdir(old)
    return work


def test_export_and_hdl_write_where_the_page_says(exported, capsys):
    import json
    assert (exported / ARTIFACT).is_file() and (exported / ARTIFACT).with_suffix(".npz").is_file()
    golden = json.loads((exported / "build/mine/reports/golden.json").read_text())
    assert golden["variants"]["mine"]["artifact"] == ARTIFACT
    manifest = json.loads((exported / ARTIFACT).read_text())
    assert manifest["fixed_point"]["weight_bits"] == 4 and manifest["model"]["depth"] == 2
    hdl = exported / "build/hdl/mine"
    assert cli.main(["hdl", str(exported / ARTIFACT), "--out", str(hdl)]) == 0
    assert {p.name for p in hdl.iterdir()} == {"stforge_top.v", "design.json",
                                              "memory_map.json"}


def test_make_with_a_path_writes_where_the_page_says(exported):
    artifact = str(exported / ARTIFACT)
    (hdl,) = make_recipe("hdl", f"MODEL={artifact}")
    assert hdl == ["hdl", artifact, "--out", "build/hdl/mine", "--lanes", "1"]
    hdl, golden, sim = make_recipe("sim", f"MODEL={artifact}", "IMAGES=20")
    assert golden == ["golden-data", artifact, "--images", "20", "--out",
                      "build/sim/mine-golden-20.npz"]
    assert sim[:5] == ["sim", "--hdl", "build/hdl/mine", "--golden", "build/sim/mine-golden-20.npz"]
    assert sim[-2:] == ["--model", "mine"]          # build/reports/sim-mine.json
    (hdl,) = make_recipe("hdl", f"MODEL={artifact}", "LANES=2")
    assert hdl[3] == "build/hdl/mine-x2"


@pytest.mark.slow
@pytest.mark.rtlsim
def test_the_page_end_to_end_on_a_tiny_config(tmp_path):
    """Every command of the page, in its order, on a tiny version of its config."""
    (tmp_path / "my.toml").write_text(toml_text(tiny(page_config())))
    import os
    env_python = [sys.executable, "-m", "model.flows.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(argv):
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=1800)
        assert r.returncode == 0, (argv, r.stdout[-2000:], r.stderr[-2000:])
        return r
    train, export, make_hdl, make_sim = page_commands()
    run([*env_python, *train[1:], "--quiet"])
    assert (tmp_path / "build/mine/checkpoints/l1p-int4.pt").is_file()
    run([*env_python, *export[1:]])
    artifact = dict(a.split("=", 1) for a in make_sim if "=" in a)["MODEL"]
    assert artifact == ARTIFACT
    for argv in make_recipe(*make_sim[1:-1], f"MODEL={tmp_path / artifact}", "IMAGES=2"):
        run([*env_python, *argv])
    import json
    report = json.loads((tmp_path / "build/reports/sim-mine.json").read_text())
    assert report["mismatches"] == 0 and report["model"] == "mine"
    assert (tmp_path / "build/hdl/mine/stforge_top.v").is_file()
    assert (tmp_path / "build/sim/mine-golden-2.npz").is_file()
