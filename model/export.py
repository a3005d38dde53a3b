"""Export a quantized model to the integer artifact (docs/INTEGER.md, docs/ARTIFACT.md).

Every unit "weights -> BatchNorm -> neuron" becomes integer weights w, plus per channel an
integer bias, threshold and leak. With x_c = a_c I_c + b_c (weight scale and folded BN), dividing
by a_c keeps the membrane in accumulator units, scaled by 2^F:

    bias_c      = rint(b_c / a_c * 2^F)
    threshold_c = max(1, ceil(u_th,c / a_c * 2^F))      H >= u_th/a  <=>  H >= ceil(u_th/a) for
                                                        integer H
    leak_c      = rint(2^K / tau_c), in 0..2^K

A channel with a_c < 0 has its weight row negated first (so a_c > 0); a channel with a_c = 0
ignores its input (row zeroed, a_c := 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from model.ir.artifact import FORMAT, VERSION, build_graph, load_artifact, save_artifact
from model.ir.passes import remove_silent_channels
from model.ir.csc import csc_from_dense
from model.ir.golden import run_golden
from model.ir.graph import Graph
from model.config import Config, config_to_dict
from model.data import DataSplit
from model.errors import StforgeError
from model.transformer import SpikingTransformer

__all__ = ["export_model", "compare_with_model"]


DEAD_ROW_BITS = 14     # bias/threshold magnitude of a neuron without input (see _Builder.neuron)


def _int_weight(layer) -> tuple[np.ndarray, np.ndarray]:
    """(integer weights, float64 scale broadcast per output row) of a Brevitas layer."""
    qw = layer.quant_weight()
    w = qw.int().detach().to(torch.int64).numpy()
    scale = qw.scale.detach().double().numpy()
    scale = np.broadcast_to(scale.reshape(-1), (w.shape[0],)) if scale.size > 1 else \
        np.full(w.shape[0], float(scale))
    return w, scale.astype(np.float64)


def _conv_weight(conv) -> tuple[np.ndarray, np.ndarray, str]:
    """(integer weights with the L1P mask applied, scale per output channel, format): "sparse"
    when the conv was pruned (the hardware then stores and walks its non-zeros only), else
    "dense" (every weight stored, as the unpruned model's hardware does)."""
    w, s = _int_weight(conv)
    mask = getattr(conv, "mask", None)
    if mask is None or bool(mask.all()):
        return w, s, "dense"
    return w * mask.detach().numpy().astype(np.int64), s, "sparse"


def _bn(norm) -> tuple[np.ndarray, np.ndarray]:
    """(gain, offset) of an eval-mode BatchNorm: y = gain * x + offset."""
    std = torch.sqrt(norm.running_var.double() + norm.eps)
    gain = norm.weight.detach().double() / std
    offset = norm.bias.detach().double() - gain * norm.running_mean.double()
    return gain.numpy(), offset.numpy()


class _Builder:
    def __init__(self, frac_bits: int, leak_bits: int):
        self.F, self.K = frac_bits, leak_bits
        self.nodes: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, name: str, array) -> str:
        self.arrays[name] = np.ascontiguousarray(np.asarray(array, dtype=np.int64))
        return name

    def neuron(self, node: dict, neuron, a: np.ndarray, b: np.ndarray) -> None:
        """Integer bias/threshold/leak from the float x = a I + b and the neuron's u_th, tau."""
        name = node["name"]
        u_th = neuron.threshold().detach().double().numpy()
        k = neuron.leak().detach().double().numpy()
        scale = float(1 << self.F)
        # A row without input (orient's a == 0): x = b exactly whatever a > 0 is, so a is
        # chosen for precision: the larger of |b| and u_th becomes 2^DEAD_ROW_BITS. With a = 1
        # they resolved only 2^-F, and such a neuron, driven by its bias alone towards an
        # equilibrium next to its threshold, fired one step earlier or later than the float
        # model on a rounding.
        mag = np.broadcast_to(np.maximum(np.abs(b), u_th), a.shape)
        a = np.where(a > 0, a, np.where(mag > 0, mag * scale / (1 << DEAD_ROW_BITS), 1.0))
        bias = np.rint(b / a * scale)
        threshold = np.maximum(1, np.ceil(u_th / a * scale - 1e-9))
        leak = np.clip(np.rint(k * (1 << self.K)), 0, 1 << self.K)
        node["bias"] = self.put(f"{name}.bias", bias)
        node["threshold"] = self.put(f"{name}.threshold", threshold)
        node["leak"] = self.put(f"{name}.leak", leak)

    @staticmethod
    def orient(w: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Negate rows with a < 0 so that every a > 0. A row whose input cannot matter (all
        weights zero, e.g. fully pruned, or a == 0) gets a := 0 and zero weights: `neuron` then
        picks its scale (x = b exactly, whatever a is), instead of dividing bias and threshold
        by a vanishing one."""
        w = w.copy()
        sign = np.where(a < 0, -1, 1)
        w *= sign.reshape((-1,) + (1,) * (w.ndim - 1))
        a = np.abs(a)
        dead = (a == 0) | ~w.reshape(w.shape[0], -1).any(axis=1)
        w[dead] = 0
        a = np.where(dead, 0.0, a)
        return w, a


def export_model(model: SpikingTransformer, config: Config, split: DataSplit, path,
                 meta: dict | None = None) -> Graph:
    """Write the artifact for a quantized model; returns it (validated by a reload).

    F (membrane fraction bits) comes from quant.frac_bits; K (leak bits) is the grid the model's
    QAT already used for its leaks, so the exported leaks are exact."""
    if model.weight_bits is None:
        raise StforgeError("only a quantized model can be exported: run `stforge quantize` "
                           "(QAT) on it first")
    frac_bits = config.quant.frac_bits
    leak_bits = model.leak_bits if model.leak_bits is not None else config.quant.leak_bits
    model = model.eval()
    cfg = config.model
    bld = _Builder(frac_bits, leak_bits)
    # ---- stem
    prev, prev_max_scale = "input", float(split.input_scale)
    for i, (conv, norm, neuron) in enumerate(zip(model.stem_convs, model.stem_norms,
                                                 model.stem_neurons)):
        w, s, fmt = _conv_weight(conv)
        gain, offset = _bn(norm)
        w, a = bld.orient(w, s * prev_max_scale * gain)
        node = {"name": f"stem{i}", "op": "conv", "inputs": [prev],
                "in_channels": w.shape[1], "out_channels": w.shape[0],
                "height": cfg.image_size // 2 ** sum(cfg.stem_pool[:i]),
                "width": cfg.image_size // 2 ** sum(cfg.stem_pool[:i]),
                "pool": bool(cfg.stem_pool[i]), "format": fmt,
                "weight": bld.put(f"stem{i}.weight", w), "weight_bits": model.weight_bits}
        if cfg.stem_pool[i] and cfg.stem_pool_kernel != 2:
            node["pool_kernel"] = cfg.stem_pool_kernel
        bld.neuron(node, neuron, a, offset)
        bld.nodes.append(node)
        prev, prev_max_scale = node["name"], 1.0
    side = cfg.image_size // 2 ** sum(cfg.stem_pool)
    if cfg.rpe:
        w, s, fmt = _conv_weight(model.rpe_conv)
        gain, offset = _bn(model.rpe_norm)
        w, a = bld.orient(w, s * gain)
        node = {"name": "rpe", "op": "conv", "inputs": [prev], "in_channels": cfg.dim,
                "out_channels": cfg.dim, "height": side, "width": side, "pool": False,
                "format": fmt, "weight": bld.put("rpe.weight", w),
                "weight_bits": model.weight_bits}
        bld.neuron(node, model.rpe_neuron, a, offset)
        bld.nodes.append(node)
        bld.nodes.append({"name": "embed", "op": "add", "inputs": [prev, "rpe"]})
        prev = "embed"
    bld.nodes.append({"name": "tokens", "op": "to_tokens", "inputs": [prev]})
    prev = "tokens"
    # ---- encoder blocks
    for i, block in enumerate(model.blocks):
        p = f"block{i}."

        def unit(name, src):
            mat = block.matrices[name]
            gain, offset = _bn(block.norms[name])
            if mat.bias is not None:        # BN(W x + c) = gain W x + (gain c + offset)
                offset = offset + gain * mat.bias.detach().double().numpy()
            node = {"name": p + name, "op": "matmul", "inputs": [src],
                    "in_features": mat.in_features, "out_features": mat.out_features}
            if mat.low_rank:
                bw, bs = _int_weight(mat.b)             # one per-tensor scale
                aw, as_ = _int_weight(mat.a)
                raw = as_ * bs[0] * gain
                aw, a = bld.orient(aw, raw)
                ptr, idx, val = csc_from_dense(bw)
                node.update(format="lowrank", rank=mat.rank,
                            b_col_ptr=bld.put(p + name + ".b_col_ptr", ptr),
                            b_row_idx=bld.put(p + name + ".b_row_idx", idx),
                            b_values=bld.put(p + name + ".b_values", val),
                            a=bld.put(p + name + ".a", aw))
            else:
                w, s = _int_weight(mat.linear)
                w = w * mat.mask.detach().numpy().astype(np.int64)
                raw = s * gain
                w, a = bld.orient(w, raw)
                dense = bool(mat.mask.all())
                ptr, idx, val = csc_from_dense(w, keep_zeros=dense)
                node.update(format="dense" if dense else "sparse",
                            col_ptr=bld.put(p + name + ".col_ptr", ptr),
                            row_idx=bld.put(p + name + ".row_idx", idx),
                            values=bld.put(p + name + ".values", val))
            bld.neuron(node, block.neurons[name], a, offset)
            bld.nodes.append(node)
            return node["name"]

        x = prev
        q, k, v = unit("q", x), unit("k", x), unit("v", x)
        attn = {"name": p + "attn", "op": "attention", "inputs": [q, k, v],
                "heads": cfg.heads, "dim": cfg.dim, "scale": cfg.attn_scale}
        bld.neuron(attn, block.neurons["attn"], np.full(cfg.dim, cfg.attn_scale),
                   np.zeros(cfg.dim))
        bld.nodes.append(attn)
        o = unit("o", attn["name"])
        bld.nodes.append({"name": p + "res1", "op": "add", "inputs": [x, o]})
        h = unit("mlp1", p + "res1")
        y = unit("mlp2", h)
        bld.nodes.append({"name": p + "out", "op": "add", "inputs": [p + "res1", y]})
        prev = p + "out"
    # ---- head: logits = W (sum over t, n) + round(b * T * N / s)
    w, s = _int_weight(model.head)
    T, N = cfg.timesteps, cfg.tokens
    b = model.head.bias.detach().double().numpy()
    bld.nodes.append({"name": "head", "op": "head", "inputs": [prev], "classes": w.shape[0],
                      "in_features": w.shape[1], "weight": bld.put("head.weight", w),
                      "bias": bld.put("head.bias", np.rint(b * T * N / s[0]))})
    manifest = {
        "format": FORMAT, "version": VERSION,
        "model": {"timesteps": T, "tokens": N, "dim": cfg.dim, "heads": cfg.heads,
                  "depth": cfg.depth, "input_shape": [cfg.in_channels, cfg.image_size,
                                                      cfg.image_size],
                  "time_varying_input": split.time_varying, "input_scale": split.input_scale,
                  "input_max": int(split.input_max), "num_classes": cfg.num_classes,
                  "residual": "spike", "neuron": model.neuron_kind, "dataset": split.name},
        "fixed_point": {"frac_bits": frac_bits, "leak_bits": leak_bits,
                        "weight_bits": model.weight_bits,
                        "rounding": {"bias": "rint(b/a*2^F), half to even",
                                     "threshold": "max(1, ceil(u_th/a*2^F))",
                                     "leak": "clip(rint(2^K/tau), 0, 2^K)",
                                     "leak_product": "floor((leak*(x-V)) / 2^K), arithmetic shift",
                                     "head_bias": "rint(b*T*N/s_head)"}},
        "nodes": bld.nodes,
        "source": {"config": config_to_dict(config), **(meta or {})},
    }
    graph = build_graph(manifest, bld.arrays, derive=True)     # widths derived here
    graph, _ = remove_silent_channels(graph)        # logits identical; less work, fewer neurons
    save_artifact(graph, path)
    return load_artifact(path)


@torch.no_grad()
def compare_with_model(model, graph: Graph, images, labels, input_scale: float,
                       batch_size: int = 120) -> dict:
    """Golden (integer) against the quantized PyTorch model on the same images: class agreement,
    both accuracies and, per layer, the fraction of equal spikes (golden.json). Channels the
    export removed as silent are compared as what they must be: the model's spikes there are
    counted (``removed_channels_spikes``, 0 when the analysis and the model agree)."""
    model.eval()
    labels = np.asarray(labels)
    preds_q, preds_i, equal, total, fired = [], [], {}, {}, {}
    removed = graph.source.get("silent_channels", {}).get("removed", {})
    for i in range(0, len(images), batch_size):
        x_int = np.asarray(images[i:i + batch_size])
        trace: dict = {}
        logits = model(torch.from_numpy(x_int.astype(np.float32) * np.float32(input_scale)),
                       trace=trace)
        res = run_golden(graph, x_int)
        preds_q.append(logits.argmax(1).numpy())
        preds_i.append(res.prediction)
        for name, spikes in trace.items():
            spikes = spikes.to(torch.int64).numpy()
            if name in removed:       # removed silent channels: the model's must be 0 too
                axis = graph.node(name).channel_axis
                fired[name] = fired.get(name, 0) + int(
                    np.take(spikes, removed[name], axis=axis).sum())
                spikes = np.delete(spikes, removed[name], axis=axis)
            same = res.values[name] == spikes
            equal[name] = equal.get(name, 0) + int(same.sum())
            total[name] = total.get(name, 0) + same.size
    pq, pi = np.concatenate(preds_q), np.concatenate(preds_i)
    return {"images": len(labels),
            "accuracy_quant": float((pq == labels).mean()),
            "accuracy_int": float((pi == labels).mean()),
            "agreement": float((pq == pi).mean()),
            "layer_spike_agreement": {k: equal[k] / total[k] for k in equal},
            "silent_channels_removed": {k: len(v) for k, v in removed.items()},
            "removed_channels_spikes": fired}
