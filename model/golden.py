"""The integer golden model: executes an artifact exactly, in PyTorch int64 tensors.

It applies model/intops.py (the one integer semantics, shared with the hardware tests) node by
node over all time steps, for a batch of images at once, checks every intermediate against the
width the artifact declares, and returns on request every node's spikes at every time step, the
membranes and the logits. Everything downstream is compared against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from model import intops
from model.artifact import Artifact, derive_widths
from model.errors import ArtifactError

__all__ = ["GoldenModel", "GoldenResult", "compare_with_model", "write_golden_data",
           "TRACED_OPS"]


@dataclass
class GoldenResult:
    logits: torch.Tensor                                   # (B, classes) int64
    values: dict[str, torch.Tensor] = field(default_factory=dict)     # name -> (T, B, ...)
    membranes: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (T, B, ...) V_next

    @property
    def prediction(self) -> torch.Tensor:
        return self.logits.argmax(1)      # first maximum on ties, as the hardware does


class GoldenModel:
    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.t = {k: torch.from_numpy(np.asarray(v, dtype=np.int64))
                  for k, v in artifact.arrays.items()}
        self.dense = {n["name"]: torch.from_numpy(artifact.weight_matrix(n))
                      for n in artifact.nodes if n["op"] == "matmul" and n["format"] != "lowrank"}
        self.lowrank = {}
        for n in artifact.nodes:
            if n["op"] == "matmul" and n["format"] == "lowrank":
                from model.artifact import dense_from_csc
                b = dense_from_csc(artifact.arrays[n["b_col_ptr"]], artifact.arrays[n["b_row_idx"]],
                                   artifact.arrays[n["b_values"]], n["rank"], n["in_features"])
                self.lowrank[n["name"]] = (torch.from_numpy(b), self.t[n["a"]])

    def _check(self, node: dict, key: str, value: torch.Tensor) -> None:
        bits = node["widths"][key]
        lo, hi = intops.range_of_signed_bits(bits)
        if value.numel() and (int(value.min()) < lo or int(value.max()) > hi):
            raise ArtifactError(f"node {node['name']}: {key} reached [{int(value.min())}, "
                                f"{int(value.max())}], outside its declared {bits}-bit width")

    def _neuron(self, node: dict, accs: list[torch.Tensor], channel_axis: int, result):
        """Run the integer neuron over T accumulators; returns spikes (T, ...)."""
        shape = [1] * accs[0].dim()
        shape[channel_axis] = -1
        p = lambda key: self.t[node[key]].view(shape)
        bias, th, leak = p("bias"), p("threshold"), p("leak")
        v = torch.zeros_like(accs[0])
        spikes, membranes = [], []
        for acc in accs:
            self._check(node, "acc", acc)
            s, v, h, x, product = intops.neuron_step(v, acc, bias, th, leak,
                                                     self.artifact.frac_bits,
                                                     self.artifact.leak_bits)
            for key, val in (("x", x), ("membrane", h), ("product", product)):
                self._check(node, key, val)
            spikes.append(s)
            membranes.append(v)
        if result is not None:
            result.membranes[node["name"]] = torch.stack(membranes)
        return torch.stack(spikes)

    @torch.no_grad()
    def run(self, images, record: bool = True, saturate: bool = False) -> GoldenResult:
        """`images`: integer pixels (B, C, H, W), or (B, T, C, H, W) for event data.

        `saturate` replaces every value a node produces by its largest possible count (every
        spike active at every step): the adversarial case for the declared widths."""
        a = self.artifact
        bounds = derive_widths(a)["_bounds"] if saturate else None
        x = torch.as_tensor(np.asarray(images), dtype=torch.int64)
        T = a.timesteps
        if a.manifest["model"]["time_varying_input"]:
            inputs = x.transpose(0, 1)                       # (T, B, C, H, W)
        else:
            inputs = x.unsqueeze(0).expand(T, *x.shape)
        result = GoldenResult(logits=torch.empty(0))
        values = {"input": inputs}
        for node in a.nodes:
            op, name = node["op"], node["name"]
            ins = [values[s] for s in node.get("inputs", [])]
            if op == "conv":
                w = self.t[node["weight"]]
                src = ins[0]
                if name == a.nodes[0]["name"] and not a.manifest["model"]["time_varying_input"]:
                    acc0 = intops.conv3x3(src[0], w)         # static image: same every step
                    accs = [acc0] * T
                else:
                    accs = [intops.conv3x3(src[t], w) for t in range(T)]
                out = self._neuron(node, accs, 1, result if record else None)
                if node["pool"]:
                    out = intops.pool2x2_or(out)
            elif op == "to_tokens":
                src = ins[0]
                out = src.flatten(3).transpose(2, 3)         # (T, B, N, D)
            elif op == "add":
                out = sum(ins[1:], ins[0])
                self._check(node, "value", out)
            elif op == "matmul":
                src = ins[0]
                if name in self.lowrank:
                    b, amat = self.lowrank[name]
                    zs = [src[t] @ b.mT for t in range(T)]
                    for z in zs:
                        self._check(node, "z", z)
                    accs = [z @ amat.mT for z in zs]
                else:
                    w = self.dense[name]
                    accs = [src[t] @ w.mT for t in range(T)]
                out = self._neuron(node, accs, -1, result if record else None)
            elif op == "attention":
                q, k, v = ins
                accs = [intops.attention_counts(q[t], k[t], v[t], node["heads"])
                        for t in range(T)]
                out = self._neuron(node, accs, -1, result if record else None)
            elif op == "head":
                feature = ins[0].sum(dim=(0, 2))             # over time steps and tokens
                self._check(node, "feature", feature)
                logits = intops.head_logits(feature, self.t[node["weight"]],
                                            self.t[node["bias"]])
                self._check(node, "logit", logits)
                result.logits = logits
                out = logits
            else:  # validated at load time; unreachable for a loaded artifact
                raise ArtifactError(f"node {name}: unknown op {op!r}")
            if saturate and op != "head":
                out = torch.full_like(out, bounds[name])
            values[name] = out
        if record:
            result.values = {k: v for k, v in values.items() if k not in ("input", "head")}
        return result


@torch.no_grad()
def compare_with_model(model, golden: GoldenModel, images, labels, input_scale: float,
                       batch_size: int = 120) -> dict:
    """Golden (integer) against the quantized PyTorch model on the same images: class agreement,
    both accuracies and, per layer, the fraction of equal spikes (golden.json)."""
    model.eval()
    labels = torch.as_tensor(np.asarray(labels))
    preds_q, preds_i, equal, total = [], [], {}, {}
    for i in range(0, len(images), batch_size):
        x_int = np.asarray(images[i:i + batch_size])
        trace: dict = {}
        logits = model(torch.from_numpy(x_int.astype(np.float32) * np.float32(input_scale)),
                       trace=trace)
        res = golden.run(x_int)
        preds_q.append(logits.argmax(1))
        preds_i.append(res.prediction)
        for name, spikes in trace.items():
            same = (res.values[name] == spikes.to(torch.int64))
            equal[name] = equal.get(name, 0) + int(same.sum())
            total[name] = total.get(name, 0) + same.numel()
    pq, pi = torch.cat(preds_q), torch.cat(preds_i)
    return {"images": len(labels),
            "accuracy_quant": float((pq == labels).float().mean()),
            "accuracy_int": float((pi == labels).float().mean()),
            "agreement": float((pq == pi).float().mean()),
            "layer_spike_agreement": {k: equal[k] / total[k] for k in equal}}


TRACED_OPS = ("conv", "matmul", "attention")


def write_golden_data(golden: GoldenModel, images, labels, path) -> dict:
    """Golden data for the simulator process (.npz, read with NumPy only; see sim/).

    Holds the input images, labels, integer logits and predicted classes, and for every node
    ending in a neuron its spikes as (T, B, tokens, channels) uint8, tokens in the order
    docs/HARDWARE.md's trace port uses (conv: position y * W + x after pooling)."""
    from pathlib import Path
    images = np.asarray(images)
    res = golden.run(images)
    arrays = {"images": images.astype(np.int64), "labels": np.asarray(labels, dtype=np.int64),
              "logits": res.logits.numpy(), "prediction": res.prediction.numpy()}
    traced = []
    for index, node in enumerate(golden.artifact.nodes):
        if node["op"] not in TRACED_OPS:
            continue
        v = res.values[node["name"]]
        if v.dim() == 5:                                   # (T, B, C, H, W) -> tokens
            v = v.flatten(3).transpose(2, 3)
        arrays[f"spikes/{node['name']}"] = v.numpy().astype(np.uint8)
        traced.append((index, node["name"]))
    arrays["traced_index"] = np.array([i for i, _ in traced], dtype=np.int64)
    arrays["traced_names"] = np.array([n for _, n in traced])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return {"images": len(images), "traced": [n for _, n in traced]}
