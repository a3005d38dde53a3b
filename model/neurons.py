"""Multi-step spiking neurons: LIF and sLIF (learned per-channel threshold and time constant).

Both run the same dynamics over T time steps (input shaped (T, B, ...)):

    H[t] = V[t-1] + (X[t] - V[t-1]) * k        k = 1/tau
    S[t] = Theta(H[t] - u_th)
    V[t] = H[t] * (1 - S[t])                   hard reset to 0

LIF keeps tau = 2 and u_th fixed. sLIF learns u_th and w_tau per channel, with k = sigmoid(w_tau),
initialised to the LIF values, so a LIF model swapped to sLIF computes the same function until
fine-tuning moves them. The Heaviside step's surrogate gradient is, by default (model.surrogate
"atan"), dS/dx = (alpha/2) / (1 + (pi*alpha*x/2)^2), alpha = 2; the official Spikformer's
("sigmoid") is dS/dx = alpha sigma(alpha x) (1 - sigma(alpha x)), alpha = 4, the derivative of
sigma(alpha x). With ``detach_reset`` (the official code's) the reset V = H (1 - S) takes no
gradient through S. Neither option changes a forward value: the integer model is the same.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ArctanSpike", "SigmoidSpike", "SURROGATES", "LIF", "SLIF", "make_neuron"]


class _HeavisideSpike(torch.autograd.Function):
    """Heaviside forward (x >= 0 spikes); a subclass gives the surrogate backward."""

    @staticmethod
    def forward(ctx, x, alpha: float):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)


class ArctanSpike(_HeavisideSpike):
    """Arctan surrogate: dS/dx = (alpha/2) / (1 + (pi alpha x / 2)^2)."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        return grad * (a / 2) / (1 + (math.pi * a * x / 2) ** 2), None


class SigmoidSpike(_HeavisideSpike):
    """Sigmoid surrogate, dS/dx = alpha s (1 - s), s = sigmoid(alpha x): SpikingJelly's, which
    the official Spikformer trains with."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(ctx.alpha * x)
        return grad * ctx.alpha * s * (1 - s), None


#: model.surrogate -> (the spike function, its default alpha)
SURROGATES = {"atan": (ArctanSpike, 2.0), "sigmoid": (SigmoidSpike, 4.0)}


class LIF(nn.Module):
    """Leaky integrate-and-fire over T steps, fixed tau and threshold.

    `channels` and `channel_axis` (of the per-step tensor, e.g. 1 for (B, C, H, W), -1 for
    (B, N, D)) say which axis carries per-channel parameters; LIF shares one value but keeps
    the same interface as sLIF, so the two are swapped without touching the model.
    `surrogate` and `alpha` choose the backward of the spike (:data:`SURROGATES`; alpha None:
    the surrogate's default), `detach_reset` cuts the gradient through the reset.
    """

    learnable = False

    def __init__(self, channels: int, channel_axis: int = -1, tau: float = 2.0,
                 threshold: float = 1.0, alpha: float | None = None, leak_bits: int | None = None,
                 surrogate: str = "atan", detach_reset: bool = False):
        super().__init__()
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {', '.join(SURROGATES)}, not "
                             f"{surrogate!r}")
        self._spike, default_alpha = SURROGATES[surrogate]
        self.channels, self.channel_axis = channels, channel_axis
        self.surrogate, self.detach_reset = surrogate, detach_reset
        self.alpha = default_alpha if alpha is None else alpha
        # Quantized models use a leak k on a 2^-leak_bits grid, exactly what the hardware holds.
        self.leak_bits = leak_bits
        self.register_buffer("_k", torch.full((channels,), 1.0 / tau))
        self.register_buffer("_u_th", torch.full((channels,), float(threshold)))

    def leak(self) -> torch.Tensor:
        """Per-channel k = 1/tau."""
        return self._k

    def threshold(self) -> torch.Tensor:
        return self._u_th

    def _view(self, p: torch.Tensor, ndim: int) -> torch.Tensor:
        axis = self.channel_axis % ndim
        shape = [1] * ndim
        shape[axis] = self.channels
        return p.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step_ndim = x.dim() - 1
        k = self._view(self.leak(), step_ndim)
        u_th = self._view(self.threshold(), step_ndim)
        v = torch.zeros_like(x[0])
        spikes = []
        for t in range(x.shape[0]):
            h = v + (x[t] - v) * k
            s = self._spike.apply(h - u_th, self.alpha)
            v = h * (1 - (s.detach() if self.detach_reset else s))
            spikes.append(s)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, channel_axis={self.channel_axis}"


class SLIF(LIF):
    """LIF with per-channel learned threshold u_th and time constant (1/tau = sigmoid(w_tau))."""

    learnable = True

    def __init__(self, channels: int, channel_axis: int = -1, tau: float = 2.0,
                 threshold: float = 1.0, alpha: float | None = None, leak_bits: int | None = None,
                 surrogate: str = "atan", detach_reset: bool = False):
        super().__init__(channels, channel_axis, tau, threshold, alpha, leak_bits, surrogate,
                         detach_reset)
        k0 = 1.0 / tau
        self.w_tau = nn.Parameter(torch.full((channels,), math.log(k0 / (1 - k0))))
        self.u_th = nn.Parameter(torch.full((channels,), float(threshold)))

    def leak(self) -> torch.Tensor:
        k = torch.sigmoid(self.w_tau)
        if self.leak_bits is None:
            return k
        # Round to the integer grid with a straight-through gradient.
        scale = float(1 << self.leak_bits)
        return k + (torch.round(k * scale) / scale - k).detach()

    def threshold(self) -> torch.Tensor:
        # A threshold at or below zero would fire on silence; keep it positive.
        return self.u_th.clamp(min=1e-3)


def make_neuron(kind: str, channels: int, channel_axis: int = -1, threshold: float = 1.0,
                leak_bits: int | None = None, cfg=None) -> LIF:
    """A `kind` ("lif", "slif") neuron; `cfg` (a ModelConfig) gives its surrogate gradient
    (``surrogate``, ``surrogate_alpha``) and ``detach_reset``, else the defaults."""
    options = {} if cfg is None else {"surrogate": cfg.surrogate, "alpha": cfg.surrogate_alpha,
                                      "detach_reset": cfg.detach_reset}
    if kind == "lif":
        return LIF(channels, channel_axis, threshold=threshold, leak_bits=leak_bits, **options)
    if kind == "slif":
        return SLIF(channels, channel_axis, threshold=threshold, leak_bits=leak_bits, **options)
    raise ValueError(f"neuron must be 'lif' or 'slif', not {kind!r}")
