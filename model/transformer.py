"""Spikformer-style spiking transformer, configurable, with prunable and quantizable matrices.

The equations (spike residual, Q(K^T V) attention, where each neuron sits) are written once in
docs/ARCHITECTURE.md; this module, the integer golden model and the hardware implement them alike.
Every block matrix (U_q, U_k, U_v, M_0, M_1, M_2) is a :class:`BlockMatrix`: dense with an L1P mask,
or rank-factored (DSP) as A·B, and optionally Brevitas-quantized. Its input is always spikes or a
small spike count, so hardware needs no general multiplier there.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig
from model.neurons import LIF, make_neuron

__all__ = ["BlockMatrix", "EncoderBlock", "SpikingTransformer", "BLOCK_MATRICES"]

# The matrices pruning targets, in each encoder block (DESIGN.md §1).
BLOCK_MATRICES = ("q", "k", "v", "o", "mlp1", "mlp2")


def _quant_linear(in_f: int, out_f: int, bits: int, per_channel: bool, bias: bool = False):
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerTensorFloat
    quant = Int8WeightPerChannelFloat if per_channel else Int8WeightPerTensorFloat
    return qnn.QuantLinear(in_f, out_f, bias=bias, weight_quant=quant, weight_bit_width=bits)


def make_linear(in_f: int, out_f: int, weight_bits: int | None, per_channel: bool = True,
                bias: bool = False) -> nn.Module:
    """A float Linear, or a Brevitas QuantLinear with symmetric narrow-range integer weights."""
    if weight_bits is None:
        return nn.Linear(in_f, out_f, bias=bias)
    return _quant_linear(in_f, out_f, weight_bits, per_channel, bias)


def make_conv(in_c: int, out_c: int, weight_bits: int | None) -> nn.Module:
    """3x3 same-padding conv without bias (BatchNorm follows); per-channel scales when quantized."""
    if weight_bits is None:
        return nn.Conv2d(in_c, out_c, 3, padding=1, bias=False)
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat
    return qnn.QuantConv2d(in_c, out_c, 3, padding=1, bias=False,
                           weight_quant=Int8WeightPerChannelFloat, weight_bit_width=weight_bits)


def _add_mask(conv: nn.Module) -> None:
    """A fixed 0/1 L1P mask beside a spike-fed conv's weight (all ones until pruned)."""
    conv.register_buffer("mask", torch.ones_like(conv.weight))


class BlockMatrix(nn.Module):
    """One prunable block matrix W (out x in), applied to spike inputs: y = W x.

    Dense form: `linear.weight` with a fixed 0/1 `mask` buffer (L1P zeros stay zero).
    Rank-factored form (rank r): y = A (B x), B (r x in) then A (out x r). B gets one per-tensor
    scale when quantized, so B x stays an integer accumulation that A's per-row scale multiplies.
    With `bias`, y = W x + b (b on A in the factored form).
    """

    def __init__(self, in_features: int, out_features: int, rank: int | None = None,
                 weight_bits: int | None = None, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        if rank is None:
            self.linear = make_linear(in_features, out_features, weight_bits, bias=bias)
            self.register_buffer("mask", torch.ones(out_features, in_features))
        else:
            self.b = make_linear(in_features, rank, weight_bits, per_channel=False)
            self.a = make_linear(rank, out_features, weight_bits, bias=bias)

    @property
    def bias(self) -> torch.Tensor | None:
        """The float bias added to W x (``model.linear_bias``; never pruned nor quantized: the
        export folds it with the BatchNorm after it into the neuron's integer bias), or None."""
        return (self.a if self.low_rank else self.linear).bias

    @property
    def low_rank(self) -> bool:
        return self.rank is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.low_rank:
            return self.a(self.b(x))
        return self.linear(x)

    def apply_mask(self) -> None:
        """Zero the pruned weights (after every optimiser step; masks never change there)."""
        if not self.low_rank:
            with torch.no_grad():
                self.linear.weight.mul_(self.mask)

    def dense_weight(self) -> torch.Tensor:
        """The float matrix this block computes (A·B for the factored form)."""
        if self.low_rank:
            return self.a.weight @ self.b.weight
        return self.linear.weight * self.mask

    def stored_params(self) -> int:
        if self.low_rank:
            return self.rank * (self.in_features + self.out_features)
        return self.in_features * self.out_features

    def nonzero_params(self) -> int:
        if self.low_rank:
            return int((self.a.weight != 0).sum() + (self.b.weight != 0).sum())
        return int(((self.linear.weight * self.mask) != 0).sum())


def _tokens_bn(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the channel (last) axis of (T, B, N, D)."""
    return bn(x.flatten(0, -2)).view_as(x)


class EncoderBlock(nn.Module):
    """Spikformer encoder block with spike residuals (see docs/ARCHITECTURE.md).

        Q, K, V = SN(BN(X U_q)), SN(BN(X U_k)), SN(BN(X U_v))
        A      = SN_attn(s · Q_h (K_h^T V_h))        per head, binary Q, K, V
        X'     = X + SN(BN(A M_0))
        X_next = X' + SN(BN(SN(BN(X' M_1)) M_2))
    """

    def __init__(self, cfg: ModelConfig, neuron: str, ranks: dict | None, weight_bits: int | None,
                 leak_bits: int | None = None):
        super().__init__()
        d, hidden = cfg.dim, cfg.dim * cfg.mlp_ratio
        ranks = ranks or {}
        shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "mlp1": (d, hidden),
                  "mlp2": (hidden, d)}
        self.heads, self.scale = cfg.heads, cfg.attn_scale
        self.matrices = nn.ModuleDict({
            name: BlockMatrix(i, o, ranks.get(name), weight_bits, bias=cfg.linear_bias)
            for name, (i, o) in shapes.items()})
        self.norms = nn.ModuleDict({name: nn.BatchNorm1d(o) for name, (i, o) in shapes.items()})
        self.neurons = nn.ModuleDict({name: make_neuron(neuron, o, leak_bits=leak_bits, cfg=cfg)
                                      for name, (i, o) in shapes.items()})
        self.neurons["attn"] = make_neuron(neuron, d, threshold=cfg.attn_threshold,
                                           leak_bits=leak_bits, cfg=cfg)

    def _unit(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.neurons[name](_tokens_bn(self.norms[name], self.matrices[name](x)))

    def forward(self, x: torch.Tensor, trace: dict | None = None, prefix: str = "") -> torch.Tensor:
        q, k, v = (self._unit(n, x) for n in ("q", "k", "v"))
        T, B, N, D = q.shape
        split = lambda t: t.view(T, B, N, self.heads, D // self.heads).transpose(2, 3)
        qh, kh, vh = split(q), split(k), split(v)
        kv = kh.transpose(-1, -2) @ vh                      # (T, B, H, d, d): K^T V per head
        a = (qh @ kv).transpose(2, 3).reshape(T, B, N, D)   # integer counts Q K^T V
        attn = self.neurons["attn"](a * self.scale)
        o = self._unit("o", attn)
        x1 = x + o
        h = self._unit("mlp1", x1)
        y = self._unit("mlp2", h)
        out = x1 + y
        if trace is not None:
            for name, val in (("q", q), ("k", k), ("v", v), ("attn", attn), ("o", o),
                              ("mlp1", h), ("mlp2", y)):
                trace[prefix + name] = val
        return out


class SpikingTransformer(nn.Module):
    """SPS conv stem -> tokens -> encoder blocks -> mean over tokens -> linear head, over T steps.

    Input: integer-valued pixels times `input_scale`, shaped (B, C, H, W) for static images
    (repeated over T: direct encoding) or (B, T, C, H, W) for event frames.
    Output: logits (B, classes), the head applied per step and averaged over T.
    """

    def __init__(self, cfg: ModelConfig, neuron: str = "lif", ranks: dict | None = None,
                 weight_bits: int | None = None, leak_bits: int | None = None):
        super().__init__()
        self.cfg, self.neuron_kind, self.weight_bits = cfg, neuron, weight_bits
        self.leak_bits = leak_bits  # quantized models: leak k on the hardware's 2^-K grid
        self.ranks = ranks  # {block index: {matrix name: rank}} or None
        chans = [cfg.in_channels] + list(cfg.stem_channels)
        self.stem_convs = nn.ModuleList(make_conv(chans[i], chans[i + 1], weight_bits)
                                        for i in range(len(cfg.stem_channels)))
        for conv in self.stem_convs[1:]:
            _add_mask(conv)
        self.stem_norms = nn.ModuleList(nn.BatchNorm2d(c) for c in cfg.stem_channels)
        self.stem_neurons = nn.ModuleList(make_neuron(neuron, c, 1, leak_bits=leak_bits, cfg=cfg)
                                          for c in cfg.stem_channels)
        if cfg.rpe:
            self.rpe_conv = make_conv(cfg.dim, cfg.dim, weight_bits)
            _add_mask(self.rpe_conv)
            self.rpe_norm = nn.BatchNorm2d(cfg.dim)
            self.rpe_neuron = make_neuron(neuron, cfg.dim, 1, leak_bits=leak_bits, cfg=cfg)
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg, neuron, (ranks or {}).get(i), weight_bits, leak_bits)
            for i in range(cfg.depth))
        # The head has one per-tensor scale so integer logits compare across classes.
        self.head = make_linear(cfg.dim, cfg.num_classes, weight_bits, per_channel=False,
                                bias=True)

    def block_matrices(self):
        """(name, BlockMatrix) for every pruning target, e.g. ('block0.q', ...)."""
        for i, block in enumerate(self.blocks):
            for name in BLOCK_MATRICES:
                yield f"block{i}.{name}", block.matrices[name]

    def stem_matrices(self):
        """(name, conv) for every spike-fed stem conv (the stem convs after the first, the rpe
        conv): L1P targets when `prune.stem` is set. The first conv sees pixels, not spikes, and
        its few weights are computed once per image, so pruning it would save no cycles."""
        for i, conv in enumerate(self.stem_convs):
            if i > 0:
                yield f"stem{i}", conv
        if self.cfg.rpe:
            yield "rpe", self.rpe_conv

    def prune_targets(self, stem: bool = False):
        """(name, weight, mask) of every L1P target: the dense block matrices and, with `stem`,
        the spike-fed stem convs."""
        for name, m in self.block_matrices():
            if not m.low_rank:
                yield name, m.linear.weight, m.mask
        if stem:
            for name, conv in self.stem_matrices():
                yield name, conv.weight, conv.mask

    def apply_masks(self) -> None:
        """Zero every pruned weight (after every optimiser step; masks never change there)."""
        with torch.no_grad():
            for _, weight, mask in self.prune_targets(stem=True):
                weight.mul_(mask)

    def neurons(self):
        return [m for m in self.modules() if isinstance(m, LIF)]

    def _conv_unit(self, conv, norm, neuron, x):
        T, B = x.shape[:2]
        y = norm(conv(x.flatten(0, 1)))
        return neuron(y.view(T, B, *y.shape[1:]))

    def forward(self, x: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        cfg = self.cfg
        if x.dim() == 4:
            x = x.unsqueeze(0).expand(cfg.timesteps, *x.shape)
        else:
            x = x.transpose(0, 1)
        T, B = x.shape[:2]
        for i, (conv, norm, neuron) in enumerate(zip(self.stem_convs, self.stem_norms,
                                                     self.stem_neurons)):
            x = self._conv_unit(conv, norm, neuron, x)
            if cfg.stem_pool[i]:
                # Max-pooling binary spikes is an OR over each window (2x2, or 3x3 padded by
                # one: padding never fires)
                flat = x.flatten(0, 1)
                x = nn.functional.max_pool2d(flat, 2) if cfg.stem_pool_kernel == 2 else \
                    nn.functional.max_pool2d(flat, 3, 2, 1)
                x = x.view(T, B, *x.shape[1:])
            if trace is not None:
                trace[f"stem{i}"] = x
        if cfg.rpe:
            r = self._conv_unit(self.rpe_conv, self.rpe_norm, self.rpe_neuron, x)
            if trace is not None:
                trace["rpe"] = r
            x = x + r
        x = x.flatten(3).transpose(2, 3)                   # (T, B, N, D), raster token order
        for i, block in enumerate(self.blocks):
            x = block(x, trace, prefix=f"block{i}.")
        features = x.mean(2)                               # (T, B, D)
        return self.head(features).mean(0)

    def param_counts(self) -> dict:
        """Stored parameters (weights, BN, neuron and head), block-matrix and non-zero counts."""
        total = sum(p.numel() for p in self.parameters())
        block = sum(m.stored_params() for _, m in self.block_matrices())
        pruned = sum(m.stored_params() - m.nonzero_params() for _, m in self.block_matrices())
        pruned += sum(int((conv.mask == 0).sum()) for _, conv in self.stem_matrices())
        return {"params": int(total), "block_params": int(block),
                "nonzero_params": int(total - pruned)}
