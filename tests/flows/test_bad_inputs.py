"""Bad inputs to every stage end in one line, exit status 2 (130 for Ctrl-C), no traceback and
no new or changed file (issue 16).

Each case runs `stforge` in this process (`model.flows.cli.main`) from an empty working folder
beside small real inputs: a float and a quantized checkpoint of a tiny untrained model, its
artifact, a valid config, a regular file (``afile``), a folder (``adir``) and a folder no one
may write to (``locked``; as root, who may write anywhere, `os.access` is told so). Before and
after each case the listing of both folders (names, sizes, modification times, folders' too, so
that a temporary file made and removed again shows) must be identical.

Three kinds of cases: commands x mistakes (parametrised), numeric arguments of every stage
(hypothesis, values outside each argument's range) and config values (hypothesis over
`model.config.LIMITS`, the one table of ranges). No training starts: only refusals are tested.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.config import LIMITS, TRAIN_STAGES, WEIGHT_BITS
from model.errors import MAX_SEED
from model.flows import cli

TINY = {
    "data": {"limit": 40},
    "model": {"stem_channels": [8, 8], "dim": 8, "heads": 2, "mlp_ratio": 2, "timesteps": 2},
    "prune": {"rank": 2},
    "quant": {"extra_bits": []},
    "pipeline": {"sweep_ranks": [2], "dense": {"epochs": 1}, "finetune": {"epochs": 1},
                 "qat": {"epochs": 1}},
}


def toml(values: dict, prefix: str = "") -> str:
    """A config dict as TOML (tables after plain keys; nan/inf as TOML spells them)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") \
                if math.isinf(v) else repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v) if isinstance(v, str) else str(v)
    plain = "".join(f"{k} = {value(v)}\n" for k, v in values.items() if not isinstance(v, dict))
    text = (f"[{prefix}]\n" if prefix and plain else "") + plain
    for k, v in values.items():
        if isinstance(v, dict):
            text += toml(v, f"{prefix}.{k}" if prefix else k)
    return text


def merged(base: dict, key: str, item) -> dict:
    """`base` with the setting at dotted `key` replaced by `item`."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    *tables, last = key.split(".")
    node = out
    for t in tables:
        node[t] = dict(node.get(t, {}))
        node = node[t]
    node[last] = item
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The folder of real inputs every case reads (and must leave as it was)."""
    from model.config import config_from_dict
    from model.export import export_model
    from model.pipeline import load_data
    from model.train import rebuild, save_checkpoint
    from model.transformer import SpikingTransformer
    import torch
    root = tmp_path_factory.mktemp("inputs")
    config = config_from_dict(TINY)
    torch.manual_seed(0)
    dense = SpikingTransformer(config.model, "lif")
    save_checkpoint(root / "dense.pt", dense, config, {"method": "dense", "seed": 0})
    q = rebuild(dense, neuron="slif", weight_bits=8, leak_bits=8)
    save_checkpoint(root / "q.pt", q, config, {"method": "dense", "seed": 0})
    # written by an older `stforge quantize --bits 1`, which let 1 bit through
    save_checkpoint(root / "q1.pt", rebuild(dense, weight_bits=1, leak_bits=8), config, {})
    export_model(q, config, load_data(config), root / "art")
    (root / "tiny.toml").write_text(toml(TINY))
    (root / "junk.pt").write_bytes(b"not a checkpoint")
    (root / "afile").write_text("a regular file\n")
    (root / "adir").mkdir()
    (root / "clash.json").mkdir()
    (root / "locked").mkdir()
    bad = {"epochs0": ("pipeline.dense.epochs", 0), "timesteps": ("model.timesteps", 10**11),
           "attn_inf": ("model.attn_scale", math.inf), "lr_nan": ("pipeline.qat.lr", math.nan),
           "seed_neg": ("data.seed", -1)}
    for name, (key, item) in bad.items():
        (root / f"{name}.toml").write_text(toml(merged(TINY, key, item)))
    (root / "malformed.toml").write_text("[model\ndim = 8\n")
    from hw.generate import generate_verilog
    generate_verilog(root / "art.json", root / "hdl")
    (root / "empty.npz").write_bytes(b"")
    (root / "locked").chmod(0o555)
    yield root
    (root / "locked").chmod(0o755)


@pytest.fixture
def workdir(inputs, tmp_path, monkeypatch):
    """An empty working folder; `locked` is unwritable for root too."""
    monkeypatch.chdir(tmp_path)
    locked = str(inputs / "locked")
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if str(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)
    monkeypatch.setattr(os, "access", access)
    return tmp_path


def listing(*roots: Path, folders: bool = True) -> dict:
    """Every file and folder under `roots`: kind, size (files) and modification time (of a
    folder only with `folders`: a file made and removed again changes it)."""
    seen = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            st_ = path.lstat()
            regular = stat.S_ISREG(st_.st_mode)
            seen[str(path)] = (stat.S_IFMT(st_.st_mode), st_.st_size if regular else None,
                               st_.st_mtime_ns if regular or folders else None)
    return seen


def refused(argv, capsys, roots, status=2, prefix="stforge: error:", folders=True):
    """Run `stforge ARGV`; assert one line on stderr, `status`, no traceback, nothing written
    (with `folders`, no folder touched either). Returns the line."""
    before = listing(*roots, folders=folders)
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == status, (argv, code, err)
    assert len(lines) == 1 and lines[0].startswith(prefix), (argv, err)
    assert "Traceback" not in err
    assert listing(*roots, folders=folders) == before, f"{argv} wrote or changed files"
    return lines[0]


# ---- commands x mistakes ------------------------------------------------------------------------
# {in} is the inputs folder. Each case: (stage and arguments, words its line must hold).

CASES = {
    # output paths: a folder, a path under a regular file, an unwritable folder (item 2)
    "train out is a folder": (["train", "--config", "{in}/tiny.toml", "--out", "{in}/adir"],
                              "is a directory"),
    "train out under a file": (["train", "--config", "{in}/tiny.toml", "--out",
                                "{in}/afile/d.pt"], "is a file, not a folder"),
    "train out unwritable": (["train", "--config", "{in}/tiny.toml", "--out",
                              "{in}/locked/d.pt"], "is not writable"),
    "prune out is a folder": (["prune", "--in", "{in}/dense.pt", "--method", "l1p", "--out",
                               "{in}/adir"], "is a directory"),
    "finetune out under a file": (["finetune", "--in", "{in}/dense.pt", "--out",
                                   "{in}/afile/x/ft.pt"], "is a file, not a folder"),
    "quantize out unwritable": (["quantize", "--in", "{in}/dense.pt", "--out",
                                 "{in}/locked/q.pt"], "is not writable"),
    "pipeline out-dir is a file": (["pipeline", "--config", "{in}/tiny.toml", "--out-dir",
                                    "{in}/afile", "--quiet"], "is a file, not a folder"),
    "pipeline out-dir unwritable": (["pipeline", "--config", "{in}/tiny.toml", "--out-dir",
                                     "{in}/locked", "--quiet"], "is not writable"),
    "sweep out-dir under a file": (["sweep", "--config", "{in}/tiny.toml", "--out-dir",
                                    "{in}/afile/o", "--quiet"], "is a file, not a folder"),
    "export report under a file": (["export", "m={in}/q.pt", "--out-dir", "art", "--report",
                                    "{in}/afile/g.json"], "is a file, not a folder"),
    "export report is a folder": (["export", "m={in}/q.pt", "--out-dir", "art", "--report",
                                   "{in}/adir"], "is a directory"),
    "export out-dir is a file": (["export", "m={in}/q.pt", "--out-dir", "{in}/afile",
                                  "--report", "g.json"], "is a file, not a folder"),
    "export out-dir unwritable": (["export", "m={in}/q.pt", "--out-dir", "{in}/locked/a",
                                   "--report", "g.json"], "is not writable"),
    "export artifact is a folder": (["export", "clash={in}/q.pt", "--out-dir", "{in}",
                                     "--report", "g.json"], "clash.json is a directory"),
    "golden-data out is a folder": (["golden-data", "{in}/art.json", "--out", "{in}/adir"],
                                    "is a directory"),
    "golden-data out under a file": (["golden-data", "{in}/art.json", "--out",
                                      "{in}/afile/g.npz"], "is a file, not a folder"),
    "golden-data out unwritable": (["golden-data", "{in}/art.json", "--out",
                                    "{in}/locked/g.npz"], "is not writable"),
    "bench reports under a file": (["bench", "--reports", "{in}/afile/r"],
                                   "is a file, not a folder"),
    "bench reports is a file": (["bench", "--reports", "{in}/afile"], "is a file, not a folder"),
    "bench reports unwritable": (["bench", "--reports", "{in}/locked"], "is not writable"),
    "sweep-hw out-dir is a file": (["sweep-hw", "--config", "{in}/tiny.toml", "--out-dir",
                                    "{in}/afile", "--no-synth"], "is a file, not a folder"),
    # numbers (item 3)
    "quantize bits 0": (["quantize", "--in", "{in}/dense.pt", "--out", "q.pt", "--bits", "0"],
                        "--bits"),
    "quantize bits 1": (["quantize", "--in", "{in}/dense.pt", "--out", "q.pt", "--bits", "1"],
                        "--bits"),
    "quantize bits -3": (["quantize", "--in", "{in}/dense.pt", "--out", "q.pt", "--bits=-3"],
                         "--bits"),
    "quantize bits 17": (["quantize", "--in", "{in}/dense.pt", "--out", "q.pt", "--bits", "17"],
                         "--bits"),
    "quantize bits 64": (["quantize", "--in", "{in}/dense.pt", "--out", "q.pt", "--bits", "64"],
                         "--bits"),
    "export a 1-bit checkpoint": (["export", "m={in}/q1.pt", "--out-dir", "art", "--report",
                                   "g.json"], "1-bit weights"),
    "prune rank 0": (["prune", "--in", "{in}/dense.pt", "--method", "dsp", "--rank", "0",
                      "--out", "p.pt"], "--rank"),
    "prune rank above dim": (["prune", "--in", "{in}/dense.pt", "--method", "dsp", "--rank",
                              "9", "--out", "p.pt"], "rank 9 is impossible"),
    "prune energy 2": (["prune", "--in", "{in}/dense.pt", "--method", "dsp", "--energy", "2",
                        "--out", "p.pt"], "--energy"),
    "prune energy nan": (["prune", "--in", "{in}/dense.pt", "--method", "dsp", "--energy",
                          "nan", "--out", "p.pt"], "--energy"),
    "prune rank and energy": (["prune", "--in", "{in}/dense.pt", "--method", "dsp", "--rank",
                               "2", "--energy", "0.9", "--out", "p.pt"], "not allowed with"),
    "prune sparsity 1": (["prune", "--in", "{in}/dense.pt", "--method", "l1p", "--sparsity",
                          "1", "--out", "p.pt"], "--sparsity"),
    "export images 0": (["export", "m={in}/q.pt", "--images", "0"], "--images"),
    "export images -5": (["export", "m={in}/q.pt", "--images=-5"], "--images"),
    "golden-data images 0": (["golden-data", "{in}/art.json", "--images", "0", "--out",
                              "g.npz"], "--images"),
    "golden-data images -5": (["golden-data", "{in}/art.json", "--images=-5", "--out",
                               "g.npz"], "--images"),
    "bench images 0": (["bench", "--images", "0"], "--images"),
    "bench batch 0": (["bench", "--batch", "0"], "--batch"),
    "bench nothing to bench": (["bench", "--artifacts", "{in}/adir"], "nothing to bench"),
    "train threads -1": (["train", "--out", "d.pt", "--threads=-1"], "--threads"),
    "train seed -1": (["train", "--out", "d.pt", "--seed=-1"], "--seed"),
    "train seed 2**32": (["train", "--out", "d.pt", "--seed", str(MAX_SEED + 1)], "--seed"),
    "config epochs 0": (["train", "--config", "{in}/epochs0.toml", "--out", "d.pt"],
                        "pipeline.dense.epochs"),
    "config timesteps 1e11": (["train", "--config", "{in}/timesteps.toml", "--out", "d.pt"],
                              "model.timesteps"),
    "config attn_scale inf": (["pipeline", "--config", "{in}/attn_inf.toml", "--quiet"],
                              "model.attn_scale"),
    "config lr nan": (["sweep", "--config", "{in}/lr_nan.toml", "--quiet"], "pipeline.qat.lr"),
    "config seed -1": (["sweep-hw", "--config", "{in}/seed_neg.toml"], "data.seed"),
    "config malformed": (["train", "--config", "{in}/malformed.toml", "--out", "d.pt"],
                         "not valid TOML"),
    "config missing": (["train", "--config", "{in}/none.toml", "--out", "d.pt"],
                       "does not exist"),
    "bitstream clock nan": (["bitstream", "--target", "ice40-up5k", "--artifact",
                             "{in}/art.json", "--clock-mhz", "nan"], "--clock-mhz"),
    "bitstream clock 0": (["bitstream", "--target", "ice40-up5k", "--artifact",
                           "{in}/art.json", "--clock-mhz", "0"], "--clock-mhz"),
    "bitstream baud 0": (["bitstream", "--target", "ice40-up5k", "--artifact",
                          "{in}/art.json", "--baud", "0"], "--baud"),
    "sweep-hw lanes 3": (["sweep-hw", "--config", "{in}/tiny.toml", "--lanes", "3",
                          "--no-synth"], "--lanes 3"),
    "sweep-hw lanes 4": (["sweep-hw", "--config", "{in}/tiny.toml", "--lanes", "1", "4",
                          "--no-synth"], "--lanes 4"),
    "sweep-hw seeds -1": (["sweep-hw", "--config", "{in}/tiny.toml", "--seeds=-1"], "--seeds"),
    "sweep-hw workers 0": (["sweep-hw", "--workers", "0"], "--workers"),
    # export names (item 6)
    "export empty name": (["export", "={in}/q.pt"], "not a plain name"),
    "export name ../x": (["export", "../x={in}/q.pt"], "not a plain name"),
    "export name a/b": (["export", "a/b={in}/q.pt"], "not a plain name"),
    "export name with a space": (["export", "a b={in}/q.pt"], "not a plain name"),
    "export name starting with a digit": (["export", "1x={in}/q.pt"], "not a plain name"),
    "export name given twice": (["export", "m={in}/q.pt", "m={in}/q.pt"], "given twice"),
    # inputs that are not what they claim
    "export missing checkpoint": (["export", "m={in}/none.pt"], "does not exist"),
    "export junk checkpoint": (["export", "m={in}/junk.pt"], "cannot be read"),
    "export float checkpoint after a good one": (
        ["export", "good={in}/q.pt", "float={in}/dense.pt", "--out-dir", "art", "--report",
         "g.json", "--images", "2"], "only a quantized model"),
    "evaluate junk checkpoint": (["evaluate", "--in", "{in}/junk.pt"], "cannot be read"),
    "golden-data missing artifact": (["golden-data", "{in}/none.json", "--out", "g.npz"],
                                     "none"),
    # the simulation (item 4) and the generator
    "sim images 0": (["sim", "--hdl", "{in}/hdl", "--golden", "{in}/empty.npz", "--images",
                      "0"], "--images"),
    "sim images -5": (["sim", "--hdl", "{in}/hdl", "--golden", "{in}/empty.npz",
                       "--images=-5"], "--images"),
    "sim unknown simulator": (["sim", "--hdl", "{in}/hdl", "--golden", "{in}/empty.npz",
                               "--sim", "ghdl"], "invalid choice"),
    "sim report under a file": (["sim", "--hdl", "{in}/hdl", "--golden", "{in}/empty.npz",
                                 "--report", "{in}/afile/s.json"], "is a file, not a folder"),
    "sim golden empty": (["sim", "--hdl", "{in}/hdl", "--golden", "{in}/empty.npz"],
                         "cannot be read"),
    "sim golden is a folder": (["sim", "--hdl", "{in}/hdl", "--golden", "{in}/adir"],
                               "cannot be read"),
    "sim golden is an artifact's arrays": (["sim", "--hdl", "{in}/hdl", "--golden",
                                            "{in}/art.npz"], "cannot be read"),
    "sim hdl missing": (["sim", "--hdl", "{in}/none", "--golden", "{in}/art.npz"],
                        "does not exist"),
    "hdl out is a file": (["hdl", "{in}/art.json", "--out", "{in}/afile"],
                          "is a file, not a folder"),
    "hdl out under a file": (["hdl", "{in}/art.json", "--out", "{in}/afile/h"],
                             "is a file, not a folder"),
    "fuzz-hw models 0": (["fuzz-hw", "--models", "0"], "--models"),
    "fuzz-hw report under a file": (["fuzz-hw", "--report", "{in}/afile/f.json"],
                                    "is a file, not a folder"),
    "unknown stage": (["trian"], "invalid choice"),
    "prune unknown method": (["prune", "--in", "x", "--out", "y", "--method", "svd"],
                             "invalid choice"),
}


@pytest.mark.parametrize("case", CASES)
def test_mistake_is_one_line_exit_2_and_writes_nothing(case, inputs, workdir, capsys):
    argv, words = CASES[case]
    line = refused([a.replace("{in}", str(inputs)) for a in argv], capsys, [workdir, inputs])
    assert words in line, line


# ---- Ctrl-C -------------------------------------------------------------------------------------

def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("stage, target", [
    ("train", "model.pipeline.train_dense"),                # during training
    ("export", "model.export.compare_with_model"),          # one artifact built, not yet copied
    ("golden-data", "os.replace"),                          # the golden file's final rename
])
def test_ctrl_c_is_one_line_exit_130_and_writes_nothing(stage, target, inputs, workdir, capsys,
                                                       monkeypatch):
    argv = {"train": ["train", "--config", f"{inputs}/tiny.toml", "--out", "out/d.pt",
                      "--quiet"],
            "export": ["export", f"m={inputs}/q.pt", "--out-dir", "art", "--report", "g.json"],
            "golden-data": ["golden-data", f"{inputs}/art.json", "--images", "2", "--out",
                            "g/g.npz"]}[stage]
    monkeypatch.setattr(target, _interrupt)
    # a write interrupted at its rename made (and removed) its folder: files are compared
    refused(argv, capsys, [workdir, inputs], status=130, prefix="stforge: interrupted",
            folders=stage != "golden-data")


# ---- hypothesis: numeric arguments --------------------------------------------------------------

def _outside_int(low, high):
    """Integers outside low..high (within TOML's 64 bits)."""
    below = st.integers(min_value=-2**63, max_value=low - 1)
    return below if high is None else \
        st.one_of(below, st.integers(min_value=high + 1, max_value=2**63 - 1))


def _bad_float(low, high, low_open=False, high_open=False):
    """Finite numbers outside the range, and the non-finite ones."""
    parts = [st.sampled_from([math.nan, math.inf, -math.inf])]
    parts.append(st.floats(max_value=low, exclude_max=not low_open, allow_nan=False,
                           allow_infinity=False))
    if high is not None:
        parts.append(st.floats(min_value=high, exclude_min=not high_open, allow_nan=False,
                               allow_infinity=False))
    return st.one_of(parts)


NOT_A_NUMBER = st.sampled_from(["", "x", "1.5.2", "0x", "one"])

# (stage arguments before the option, option, bad values)
NUMERIC = [
    (["quantize", "--in", "q.pt", "--out", "o.pt"], "--bits", _outside_int(*WEIGHT_BITS)),
    (["prune", "--in", "d.pt", "--out", "o.pt", "--method", "dsp"], "--rank",
     _outside_int(1, None)),
    (["prune", "--in", "d.pt", "--out", "o.pt", "--method", "dsp"], "--energy",
     _bad_float(0, 1, low_open=True)),
    (["prune", "--in", "d.pt", "--out", "o.pt", "--method", "l1p"], "--sparsity",
     _bad_float(0, 1, high_open=True)),
    (["train", "--out", "o.pt"], "--seed", _outside_int(0, MAX_SEED)),
    (["train", "--out", "o.pt"], "--threads", _outside_int(1, None)),
    (["export", "m=q.pt"], "--images", _outside_int(1, None)),
    (["golden-data", "a.json", "--out", "g.npz"], "--images", _outside_int(1, None)),
    (["bench"], "--images", _outside_int(1, None)),
    (["bench"], "--batch", _outside_int(1, None)),
    (["bitstream", "--target", "ice40-up5k", "--artifact", "a.json"], "--clock-mhz",
     _bad_float(0, None, low_open=True)),
    (["bitstream", "--target", "ice40-up5k", "--artifact", "a.json"], "--baud",
     _outside_int(1, None)),
    (["sweep-hw"], "--lanes", _outside_int(1, None)),
    (["sweep-hw"], "--images", _outside_int(1, None)),
    (["sweep-hw"], "--connect-timeout", _bad_float(0, None, low_open=True)),
    (["hdl", "a.json", "--out", "h"], "--lanes", _outside_int(1, None)),
]


@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_numeric_arguments_out_of_range_are_refused(data, inputs, workdir, capsys):
    head, option, values = data.draw(st.sampled_from(NUMERIC), label="argument")
    value = data.draw(st.one_of(values, NOT_A_NUMBER), label="value")
    line = refused([*head, f"{option}={value}"], capsys, [workdir, inputs])
    assert option in line, line


# ---- hypothesis: config values ------------------------------------------------------------------

def _config_key(key: str) -> str:
    return key.replace("*", TRAIN_STAGES[0]).removesuffix("[]")


def _bad_setting(key: str):
    limit = LIMITS[key]
    integer = key.split(".")[-1].removesuffix("[]") in _INTEGER_KEYS
    values = _outside_int(limit.low, limit.high) if integer else \
        _bad_float(limit.low, limit.high, limit.low_open, limit.high_open)
    return values.map(lambda v: [v] if key.endswith("[]") else v)


def _integer_keys() -> set[str]:
    import dataclasses
    import typing
    from model.config import Config
    names = set()

    def walk(cls):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp)
            elif int in (typing.get_args(tp) or (tp,)) or tp == list[int]:
                names.add(f.name)
    walk(Config)
    return names


_INTEGER_KEYS = _integer_keys()


@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_config_values_out_of_range_are_refused(data, inputs, workdir, capsys,
                                                tmp_path_factory):
    key = data.draw(st.sampled_from(sorted(LIMITS)), label="key")
    value = data.draw(_bad_setting(key), label="value")
    where = _config_key(key)
    config = tmp_path_factory.mktemp("config") / "bad.toml"   # outside the checked folders
    config.write_text(toml(merged(TINY, where, value)))
    stage = data.draw(st.sampled_from([["train", "--out", "d.pt"], ["pipeline", "--quiet"],
                                       ["sweep", "--quiet"], ["sweep-hw", "--no-synth"]]),
                      label="stage")
    line = refused([*stage, "--config", config], capsys, [workdir, inputs])
    assert where in line, line


def test_every_limit_is_exercised_and_names_a_setting():
    """LIMITS keys resolve to real settings (a renamed field would make the table lie)."""
    from model.config import Config, _values
    config = Config()
    for key in LIMITS:
        if key not in ("data.limit", "prune.energy", "model.surrogate_alpha"):  # None by default
            assert list(_values(config, key)), key
