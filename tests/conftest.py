"""Shared fixtures: small quantized models of every variant, built without training."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "model" / "shipped"


@pytest.fixture(scope="session")
def digits():
    from model.data import load_digits
    return load_digits()


@pytest.fixture(scope="session")
def quantized_variants():
    """{"dense", "l1p", "dsp"} -> (quantized sLIF model, Config); random weights, default BN."""
    import torch
    from model.config import Config
    from model.pruning import l1p_prune, to_low_rank
    from model.train import rebuild
    from model.transformer import SpikingTransformer
    config = Config().validate()
    torch.manual_seed(0)
    dense = SpikingTransformer(config.model, "slif")
    with torch.no_grad():      # make the neurons differ per channel, as trained ones do
        for n in dense.neurons():
            n.u_th.uniform_(0.3, 1.5)
            n.w_tau.uniform_(-1.5, 1.5)
    l1p = rebuild(dense)
    l1p_prune(l1p, 0.9)
    dsp = to_low_rank(dense, rank=4)
    out = {}
    for name, m in (("dense", dense), ("l1p", l1p), ("dsp", dsp)):
        q = rebuild(m, weight_bits=8, leak_bits=8).eval()
        out[name] = (q, config)
    return out


@pytest.fixture(scope="session")
def exported(quantized_variants, digits, tmp_path_factory):
    """{"dense", "l1p", "dsp"} -> the exported model.ir.Graph (written to a temp folder)."""
    from model.export import export_model
    root = tmp_path_factory.mktemp("artifacts")
    return {name: export_model(m, cfg, digits, root / name)
            for name, (m, cfg) in quantized_variants.items()}


def export_shipped(variant, out_dir):
    """A shipped checkpoint exported as `make export` does -> (Artifact, data split)."""
    from model.export import export_model
    from model.pipeline import load_data
    from model.train import load_checkpoint
    model, config, _ = load_checkpoint(SHIPPED / f"{variant}-int8.pt")
    split = load_data(config)
    return export_model(model, config, split, out_dir / variant), split


@pytest.fixture(scope="session")
def shipped_l1p_path(tmp_path_factory):
    """The deployed L1P model's artifact (.json path): the committed export of the shipped
    checkpoint (tests/artifacts/shipped-l1p, checked against a fresh export by
    test_committed_artifacts.py), copied so that a test may write beside it. A fresh clone
    needs no `make export` and no torch for it."""
    import shutil
    root = tmp_path_factory.mktemp("shipped")
    for ext in ("json", "npz"):
        shutil.copy(ROOT / "tests" / "artifacts" / f"shipped-l1p.{ext}", root / f"l1p.{ext}")
    return root / "l1p.json"
