"""The spike-activity penalty (TrainConfig.spike_penalty): it loads from a config like every
training setting, 0 leaves the loss exactly the cross-entropy, and a positive one lowers the
firing rate."""

import copy

import pytest
import torch
from torch import nn

from model.config import ModelConfig, TrainConfig, config_from_dict, load_config
from model.errors import ConfigError
from model.train import Tensors, _loss, spike_rate, train
from model.transformer import SpikingTransformer

TINY = ModelConfig(stem_channels=[8, 16], dim=16, heads=2, mlp_ratio=2, timesteps=2)


def tiny_model(neuron="slif"):
    torch.manual_seed(0)
    return SpikingTransformer(TINY, neuron)


def tiny_data(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 17, (n, 1, 8, 8), generator=g).float() / 4
    y = torch.randint(0, 10, (n,), generator=g)
    return Tensors(x, y, x[:16], y[:16])


def rate(model, x):
    model.eval()
    trace = {}
    with torch.no_grad():
        model(x, trace)
    return float(spike_rate(trace))


def test_spike_penalty_loads_from_the_finetune_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[pipeline.finetune]\nspike_penalty = 0.25\n[pipeline.qat]\nspike_penalty = 1\n")
    cfg = load_config(path)
    assert cfg.pipeline.finetune.spike_penalty == 0.25
    assert cfg.pipeline.qat.spike_penalty == 1.0 and isinstance(cfg.pipeline.qat.spike_penalty,
                                                                 float)
    assert cfg.pipeline.dense.spike_penalty == 0.0          # off unless asked for
    assert TrainConfig().spike_penalty == 0.0
    assert load_config("configs/default.toml").pipeline.dense.spike_penalty == 0.0


@pytest.mark.parametrize("value, message", [
    (-0.1, r"pipeline\.finetune\.spike_penalty must be a finite number >= 0, not -0\.1"),
    (float("inf"), r"pipeline\.finetune\.spike_penalty must be a finite number >= 0"),
    ("high", r"pipeline\.finetune\.spike_penalty must be float, not 'high'"),
])
def test_bad_spike_penalty_names_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"pipeline": {"finetune": {"spike_penalty": value}}})


def test_zero_penalty_is_the_plain_cross_entropy():
    model, data = tiny_model(), tiny_data()
    model.train()
    x, y = data.x_train[:32], data.y_train[:32]
    torch.manual_seed(1)
    plain = nn.functional.cross_entropy(model(x), y)
    torch.manual_seed(1)
    assert torch.equal(_loss(model, x, y, 0.0), plain)
    # Tracing the spikes does not change the forward pass: the penalised loss is the same
    # cross-entropy plus lambda x rate.
    trace = {}
    logits = model(x, trace)
    assert torch.equal(nn.functional.cross_entropy(logits, y), plain)
    assert set(trace) == {"stem0", "stem1", "block0.q", "block0.k", "block0.v", "block0.attn",
                          "block0.o", "block0.mlp1", "block0.mlp2"}
    r = spike_rate(trace)
    assert 0 < r.item() < 1
    assert torch.allclose(_loss(model, x, y, 0.5), plain + 0.5 * r)


def test_positive_penalty_lowers_the_firing_rate_and_zero_changes_nothing():
    data = tiny_data()
    base = tiny_model()
    with torch.no_grad():       # low thresholds, as a compensated model's: ~18 % of neurons fire
        for n in base.neurons():
            n.u_th.fill_(0.15)
    runs = {}
    for penalty in (0.0, 0.0, 2.0):
        m = copy.deepcopy(base)
        train(m, data, TrainConfig(epochs=3, batch_size=32, spike_penalty=penalty),
              progress=False)
        runs.setdefault(penalty, []).append(m)
    a, b = runs[0.0]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values()))
    free, penalised = rate(a, data.x_train), rate(runs[2.0][0], data.x_train)
    assert penalised < 0.7 * free, (free, penalised)     # measured: 0.26 -> 0.12
