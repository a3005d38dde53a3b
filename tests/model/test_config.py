"""Config validation: one clear line for every malformed or impossible setting."""

import pytest

from model.config import Config, config_from_dict, config_to_dict, load_config
from model.errors import ConfigError


def test_defaults_and_shipped_config_are_valid():
    Config().validate()
    cfg = load_config("configs/default.toml")
    assert cfg.model.dim == 32 and cfg.data.name == "digits"


def test_round_trip_through_plain_data():
    cfg = load_config("configs/default.toml")
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("values, message", [
    ({"modle": {}}, r"unknown config key modle"),
    ({"model": {"dimm": 3}}, r"unknown config key model\.dimm"),
    ({"model": {"dim": "32"}}, r"model\.dim must be int"),
    ({"model": {"dim": 30, "heads": 4, "stem_channels": [16, 30]}}, r"not divisible by"),
    ({"model": {"dim": 0}}, r"model\.dim must be an integer in 1\.\.4096, not 0"),
    ({"model": {"stem_pool": [True]}}, r"stem_pool has 1 entries"),
    ({"model": {"stem_channels": [16, 64]}}, r"must end with model\.dim"),
    ({"prune": {"sparsity": 1.0}}, r"prune\.sparsity must be a number in \[0, 1\)"),
    ({"prune": {"sparsity": -0.1}}, r"prune\.sparsity must be a number in \[0, 1\)"),
    ({"prune": {"rank": 33}}, r"rank 33 is impossible"),
    ({"prune": {"rank": 4, "energy": 0.9}}, r"exactly one of prune\.rank and prune\.energy"),
    ({"pipeline": {"sweep_sparsities": [0.5, 1.2]}}, r"sweep_sparsities\[1\] must be a number in"),
    ({"data": {"name": "mnist"}}, r"data\.name must be one of"),
    ({"quant": {"weight_bits": 1}}, r"quant\.weight_bits must be an integer in 2\.\.16"),
    ({"pipeline": {"dense": {"epochs": "many"}}}, r"pipeline\.dense\.epochs must be int"),
])
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\ndim = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
