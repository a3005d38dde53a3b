"""Neuron dynamics against hand-computed traces, surrogate gradients, learnable parameters."""

import math

import pytest
import torch

from model.neurons import LIF, SLIF, SURROGATES, ArctanSpike, SigmoidSpike


def run(neuron, values):
    x = torch.tensor(values, dtype=torch.float32).view(len(values), 1, 1)
    return neuron(x).view(-1).tolist()


def test_lif_hand_trace():
    # tau = 2, u_th = 1, constant input 1.5: H = 0.75, then 0.75 + 0.375 = 1.125 (fires, reset),
    # then 0.75 again.
    assert run(LIF(1), [1.5, 1.5, 1.5, 1.5]) == [0, 1, 0, 1]
    # H = 1.0 reaches the threshold exactly: fires (S = H >= u_th) every step.
    assert run(LIF(1), [2.0, 2.0, 2.0]) == [1, 1, 1]
    # Leak: 1.0 then 0: H = 0.5, 0.25, 0.125 -- never fires.
    assert run(LIF(1), [1.0, 0.0, 0.0]) == [0, 0, 0]


def test_lif_hard_reset_to_zero():
    lif = LIF(1)
    # 4.0 fires at once and resets to 0; then 1.0 gives H = 0.5 (no carry-over from 2.0).
    assert run(lif, [4.0, 1.0]) == [1, 0]


def test_slif_starts_as_lif_and_uses_its_parameters():
    slif = SLIF(1)
    assert torch.allclose(slif.leak(), torch.tensor([0.5]))
    assert run(slif, [1.5, 1.5, 1.5, 1.5]) == [0, 1, 0, 1]
    with torch.no_grad():
        slif.u_th.fill_(0.7)                      # lower threshold: 0.75 now fires
        slif.w_tau.fill_(math.log(0.25 / 0.75))   # k = 1/tau = 0.25
    # H = 1.5 * 0.25 = 0.375; 0.375 + 0.28125 = 0.65625; + 0.2109 = 0.8672 -> fires.
    assert run(slif, [1.5, 1.5, 1.5, 1.5]) == [0, 0, 1, 0]


def test_per_channel_parameters_follow_channel_axis():
    slif = SLIF(3, channel_axis=1)
    with torch.no_grad():
        slif.u_th.copy_(torch.tensor([0.5, 1.0, 2.0]))
    x = torch.full((1, 1, 3, 2, 2), 1.9)          # (T, B, C, H, W); H = 0.95
    s = slif(x)
    assert s[0, 0, :, 0, 0].tolist() == [1, 0, 0]


def test_arctan_surrogate_gradient():
    x = torch.tensor([0.0, 1.0, -0.5], requires_grad=True)
    ArctanSpike.apply(x, 2.0).sum().backward()
    expected = [1 / (1 + (math.pi * 2 * v / 2) ** 2) for v in (0.0, 1.0, -0.5)]
    assert x.grad.tolist() == pytest.approx(expected)


def test_slif_threshold_and_tau_receive_gradients():
    torch.manual_seed(0)
    slif = SLIF(4)
    x = torch.rand(4, 8, 4) * 2
    slif(x).sum().backward()
    assert slif.u_th.grad is not None and slif.u_th.grad.abs().sum() > 0
    assert slif.w_tau.grad is not None and slif.w_tau.grad.abs().sum() > 0


def test_quantized_leak_is_on_the_integer_grid_with_straight_through_gradient():
    slif = SLIF(2, leak_bits=8)
    with torch.no_grad():
        slif.w_tau.copy_(torch.tensor([0.3, -1.1]))
    k = slif.leak()
    assert torch.equal(k * 256, torch.round(k * 256))
    k.sum().backward()
    assert slif.w_tau.grad.abs().sum() > 0


def test_sigmoid_surrogate_is_the_derivative_of_sigmoid_alpha_x():
    """The official Spikformer's surrogate (SpikingJelly's Sigmoid, alpha 4): d/dx sigma(a x),
    here taken by autograd from the sigmoid itself."""
    x = torch.tensor([0.0, 0.3, -0.5, 2.0], requires_grad=True)
    SigmoidSpike.apply(x, 4.0).sum().backward()
    ref = torch.tensor([0.0, 0.3, -0.5, 2.0], requires_grad=True)
    torch.sigmoid(4.0 * ref).sum().backward()
    assert torch.allclose(x.grad, ref.grad)
    assert SigmoidSpike.apply(x.detach(), 4.0).tolist() == [1, 1, 0, 1]


@pytest.mark.parametrize("cls", [LIF, SLIF])
def test_surrogate_and_detach_reset_change_gradients_not_spikes(cls):
    """Every option spikes alike; the gradients follow the chosen surrogate, and detach_reset
    equals a hand-written loop that detaches S in the reset."""
    torch.manual_seed(1)
    x = torch.rand(6, 3, 5) * 2.5
    runs = {}
    for surrogate, detach in [("atan", False), ("sigmoid", False), ("sigmoid", True)]:
        xi = x.clone().requires_grad_(True)
        neuron = cls(5, surrogate=surrogate, detach_reset=detach)
        s = neuron(xi)
        (s * torch.arange(1.0, 6.0)).sum().backward()
        runs[surrogate, detach] = (s.detach(), xi.grad)
        if detach:                                  # the reference loop
            xr = x.clone().requires_grad_(True)
            k, u_th = neuron.leak().detach(), neuron.threshold().detach()
            v, out = torch.zeros_like(xr[0]), []
            for t in range(len(xr)):
                h = v + (xr[t] - v) * k
                spike = SigmoidSpike.apply(h - u_th, 4.0)
                v = h * (1 - spike.detach())
                out.append(spike)
            (torch.stack(out) * torch.arange(1.0, 6.0)).sum().backward()
            assert torch.allclose(xi.grad, xr.grad)
    spikes = [s for s, _ in runs.values()]
    assert all(torch.equal(spikes[0], s) for s in spikes) and spikes[0].sum() > 0
    grads = [g for _, g in runs.values()]
    assert not torch.allclose(grads[0], grads[1]) and not torch.allclose(grads[1], grads[2])


def test_the_config_names_the_surrogates_the_neurons_have():
    from model.config import SURROGATES as CONFIG_SURROGATES, Config, config_from_dict
    from model.errors import ConfigError
    from model.transformer import SpikingTransformer
    assert tuple(SURROGATES) == CONFIG_SURROGATES
    config = config_from_dict({"model": {"surrogate": "sigmoid", "detach_reset": True}})
    model = SpikingTransformer(config.model, "slif")
    neurons = [m for m in model.modules() if isinstance(m, LIF)]
    assert neurons and all(n.surrogate == "sigmoid" and n.alpha == 4.0 and n.detach_reset
                           for n in neurons)
    assert all(n.surrogate == "atan" and n.alpha == 2.0 and not n.detach_reset
               for n in SpikingTransformer(Config().validate().model, "slif").modules()
               if isinstance(n, LIF))
    for bad, message in [({"surrogate": "relu"}, "model.surrogate must be one of atan, sigmoid"),
                         ({"surrogate_alpha": 0}, "model.surrogate_alpha must be")]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"model": bad})
