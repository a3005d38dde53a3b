"""The integer model artifact: the one contract between model/ and hw/, sim/, firmware/.

An artifact is two files side by side: ``<stem>.json`` (the manifest: topology, fixed-point
parameters, bit widths, array index with checksums) and ``<stem>.npz`` (every integer array).
NumPy only, no torch: the torch-free downstream loads artifacts through this module.

Nodes run in manifest order; each produces a value named after it. Values are non-negative
integer spike counts, shaped (C, H, W) before ``to_tokens`` and (N, D) after it, per time step.

    conv       3x3 same-padding conv of a value (or the input image) + neuron (+ optional OR pool);
               weight (out, in, 3, 3); format "dense" (default) or "sparse" (L1P-pruned: the
               hardware stores and walks its non-zeros only)
    to_tokens  (D, h, w) -> (N = h*w, D), raster order
    add        sum of values (spike residuals)
    matmul     y = W x (format "dense"/"sparse": W as CSC; "lowrank": A (B x), B as CSC) + neuron
    attention  Q_h (K_h^T V_h) per head over 0/1 Q, K, V + neuron
    head       logits = W (sum over t and tokens of the input) + bias

docs/INTEGER.md defines the arithmetic; model/intops.py implements it.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.errors import ArtifactError
from model.intops import acc_range, signed_bits

__all__ = ["FORMAT", "VERSION", "NEURON_OPS", "value_sources", "Artifact", "save_artifact", "load_artifact", "derive_widths",
           "artifact_paths", "conv_columns", "csc_from_dense", "dense_from_csc"]

FORMAT = "stforge-integer-model"
VERSION = 1
OPS = ("conv", "to_tokens", "add", "matmul", "attention", "head")
NEURON_OPS = ("conv", "matmul", "attention")      # nodes that end in a neuron: traced spikes


@dataclass
class Artifact:
    manifest: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nodes(self) -> list[dict]:
        return self.manifest["nodes"]

    def node(self, name: str) -> dict:
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise KeyError(name)

    def array(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def frac_bits(self) -> int:
        return self.manifest["fixed_point"]["frac_bits"]

    @property
    def leak_bits(self) -> int:
        return self.manifest["fixed_point"]["leak_bits"]

    @property
    def timesteps(self) -> int:
        return self.manifest["model"]["timesteps"]

    def weight_matrix(self, node: dict) -> np.ndarray:
        """The dense integer matrix (out x in) a matmul node computes (A·B for low rank)."""
        if node["format"] == "lowrank":
            b = dense_from_csc(self.arrays[node["b_col_ptr"]], self.arrays[node["b_row_idx"]],
                               self.arrays[node["b_values"]], node["rank"], node["in_features"])
            return self.arrays[node["a"]] @ b
        return dense_from_csc(self.arrays[node["col_ptr"]], self.arrays[node["row_idx"]],
                              self.arrays[node["values"]], node["out_features"],
                              node["in_features"])


def value_sources(artifact: "Artifact") -> dict[str, list[str]]:
    """Each value as the multiset (list) of neuron nodes whose spikes it sums: `add` and
    `to_tokens` cost nothing, a residual is its sources' spikes added up."""
    sources: dict[str, list[str]] = {}
    for node in artifact.nodes:
        if node["op"] in NEURON_OPS:
            sources[node["name"]] = [node["name"]]
        elif node["op"] in ("add", "to_tokens"):
            sources[node["name"]] = [s for src in node["inputs"] for s in sources[src]]
    return sources


def conv_columns(node: dict, weight: np.ndarray):
    """The conv's weights as CSC over columns ``in_channel * 9 + tap`` (rows: out channels):
    every weight for format "dense", the non-zeros for "sparse". The one column layout of the
    engine (hw/accelerator.py) and the cycle model (hw/cycles.py)."""
    w = np.asarray(weight).reshape(node["out_channels"], -1)
    return csc_from_dense(w, keep_zeros=node.get("format", "dense") == "dense")


def csc_from_dense(w: np.ndarray, keep_zeros: bool = False):
    """(col_ptr, row_idx, values) of a matrix, per input column; `keep_zeros` stores every entry
    (the dense format: work counts every stored weight)."""
    w = np.asarray(w, dtype=np.int64)
    col_ptr, rows, vals = [0], [], []
    for j in range(w.shape[1]):
        idx = np.arange(w.shape[0]) if keep_zeros else np.flatnonzero(w[:, j])
        rows.append(idx)
        vals.append(w[idx, j])
        col_ptr.append(col_ptr[-1] + len(idx))
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)
    return np.asarray(col_ptr, dtype=np.int64), cat(rows), cat(vals)


def dense_from_csc(col_ptr, row_idx, values, rows: int, cols: int) -> np.ndarray:
    w = np.zeros((rows, cols), dtype=np.int64)
    for j in range(cols):
        sl = slice(col_ptr[j], col_ptr[j + 1])
        w[row_idx[sl], j] += values[sl]
    return w


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    """`x`, `x.json` or `x.npz` -> (x.json, x.npz)."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".npz") else path
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_artifact(artifact: Artifact, path: str | Path) -> tuple[Path, Path]:
    """Write manifest and arrays atomically, indexing every array with shape, dtype and sha256."""
    json_path, npz_path = artifact_paths(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **artifact.arrays)
    data = buf.getvalue()
    manifest = dict(artifact.manifest)
    manifest["arrays"] = {name: {"dtype": str(a.dtype), "shape": list(a.shape),
                                 "sha256": _sha(np.ascontiguousarray(a).tobytes())}
                          for name, a in sorted(artifact.arrays.items())}
    manifest["npz_sha256"] = _sha(data)
    tmp_npz, tmp_json = npz_path.with_suffix(".npz.tmp"), json_path.with_suffix(".json.tmp")
    tmp_npz.write_bytes(data)
    tmp_json.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp_npz.replace(npz_path)
    tmp_json.replace(json_path)
    artifact.manifest = manifest
    return json_path, npz_path


def load_artifact(path: str | Path) -> Artifact:
    """Read and validate an artifact; any defect raises ArtifactError naming the field."""
    json_path, npz_path = artifact_paths(path)
    for p in (json_path, npz_path):
        if not p.is_file():
            raise ArtifactError(f"artifact file {p} does not exist (run `make export`?)")
    try:
        manifest = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"artifact manifest {json_path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{json_path} is not an stforge artifact (format "
                            f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("version") != VERSION:
        raise ArtifactError(f"{json_path}: schema version {manifest.get('version')!r} is not "
                            f"supported (this stforge reads version {VERSION})")
    data = npz_path.read_bytes()
    if _sha(data) != manifest.get("npz_sha256"):
        raise ArtifactError(f"{npz_path} does not match its manifest (sha256 differs): the "
                            f"artifact is truncated or was modified")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise ArtifactError(f"{npz_path} cannot be read: {exc}") from None
    artifact = Artifact(manifest, arrays)
    validate(artifact)
    return artifact


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ArtifactError(message)


def validate(artifact: Artifact) -> None:
    """Schema, shapes, dtypes, value ranges and bit widths, node by node."""
    m, arrays = artifact.manifest, artifact.arrays
    for key in ("model", "fixed_point", "nodes", "arrays"):
        _need(key in m, f"artifact manifest lacks the field {key!r}")
    index = m["arrays"]
    _need(set(index) == set(arrays),
          f"arrays in the npz ({sorted(set(arrays) ^ set(index))}) differ from the manifest index")
    for name, meta in index.items():
        a = arrays[name]
        _need(np.issubdtype(a.dtype, np.integer), f"array {name} must be integer, not {a.dtype}")
        _need(list(a.shape) == meta["shape"], f"array {name} has shape {list(a.shape)}, the "
                                              f"manifest says {meta['shape']}")
        _need(_sha(np.ascontiguousarray(a).tobytes()) == meta["sha256"],
              f"array {name} does not match its manifest checksum")
    fp = m["fixed_point"]
    for key in ("frac_bits", "leak_bits", "weight_bits"):
        _need(isinstance(fp.get(key), int) and 0 <= fp[key] <= 32,
              f"fixed_point.{key} must be an integer in 0..32, not {fp.get(key)!r}")
    values = {"input": None}
    for node in m["nodes"]:
        name, op = node.get("name"), node.get("op")
        _need(op in OPS, f"node {name!r}: unknown op {op!r} (known: {', '.join(OPS)})")
        for src in node.get("inputs", []):
            _need(src in values, f"node {name}: input {src!r} is not produced before it")
        _check_node(artifact, node)
        values[name] = node
    derived = derive_widths(artifact)
    for node in m["nodes"]:
        for key, bits in derived.get(node["name"], {}).items():
            declared = node.get("widths", {}).get(key)
            _need(isinstance(declared, int) and declared >= bits,
                  f"node {node['name']}: declared width widths.{key} = {declared!r} is below the "
                  f"{bits} bits its weights and inputs can need")


def _arr(artifact: Artifact, node: dict, key: str, shape=None) -> np.ndarray:
    ref = node.get(key)
    _need(isinstance(ref, str) and ref in artifact.arrays,
          f"node {node.get('name')}: field {key!r} names no array ({ref!r})")
    a = artifact.arrays[ref]
    if shape is not None:
        _need(tuple(a.shape) == tuple(shape),
              f"node {node['name']}: {key} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    return a


def _in_bits(a: np.ndarray, bits: int, what: str) -> None:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if a.size:
        _need(lo <= a.min() and a.max() <= hi,
              f"{what} holds values in [{a.min()}, {a.max()}], outside its declared "
              f"{bits}-bit signed range [{lo}, {hi}]")


def _check_csc(artifact, node, prefix, rows, cols):
    ptr = _arr(artifact, node, prefix + "col_ptr", (cols + 1,))
    idx = _arr(artifact, node, prefix + "row_idx")
    val = _arr(artifact, node, prefix + "values", idx.shape)
    _need(ptr[0] == 0 and np.all(np.diff(ptr) >= 0) and ptr[-1] == len(idx),
          f"node {node['name']}: {prefix}col_ptr is not a valid CSC column pointer")
    _need(len(idx) == 0 or (idx.min() >= 0 and idx.max() < rows),
          f"node {node['name']}: {prefix}row_idx has rows outside 0..{rows - 1}")
    _in_bits(val, artifact.manifest["fixed_point"]["weight_bits"],
             f"node {node['name']}: {prefix}values")


def _check_neuron(artifact: Artifact, node: dict, channels: int) -> None:
    fp = artifact.manifest["fixed_point"]
    leak = _arr(artifact, node, "leak", (channels,))
    _arr(artifact, node, "bias", (channels,))
    th = _arr(artifact, node, "threshold", (channels,))
    _need(leak.min() >= 0 and leak.max() <= (1 << fp["leak_bits"]),
          f"node {node['name']}: leak must lie in 0..2^{fp['leak_bits']}")
    _need(th.min() >= 1, f"node {node['name']}: thresholds must be >= 1 (a neuron at rest "
                         f"must not fire)")


def _check_node(artifact: Artifact, node: dict) -> None:
    op, wb = node["op"], artifact.manifest["fixed_point"]["weight_bits"]
    if op == "conv":
        w = _arr(artifact, node, "weight",
                 (node["out_channels"], node["in_channels"], 3, 3))
        bits = node.get("weight_bits", wb)
        _in_bits(w, bits, f"node {node['name']}: weight")
        _need(node.get("format", "dense") in ("dense", "sparse"),
              f"node {node['name']}: unknown conv format {node.get('format')!r}")
        _check_neuron(artifact, node, node["out_channels"])
    elif op == "matmul":
        m_, n_ = node["out_features"], node["in_features"]
        if node["format"] in ("dense", "sparse"):
            _check_csc(artifact, node, "", m_, n_)
        elif node["format"] == "lowrank":
            _check_csc(artifact, node, "b_", node["rank"], n_)
            _in_bits(_arr(artifact, node, "a", (m_, node["rank"])), wb,
                     f"node {node['name']}: a")
        else:
            raise ArtifactError(f"node {node['name']}: unknown matmul format {node['format']!r}")
        _check_neuron(artifact, node, m_)
    elif op == "attention":
        _check_neuron(artifact, node, node["dim"])
        _need(node["dim"] % node["heads"] == 0,
              f"node {node['name']}: dim {node['dim']} not divisible by heads {node['heads']}")
    elif op == "head":
        w = _arr(artifact, node, "weight", (node["classes"], node["in_features"]))
        _in_bits(w, wb, f"node {node['name']}: weight")
        _arr(artifact, node, "bias", (node["classes"],))


# ---- static bit widths -----------------------------------------------------------------------

def _neuron_widths(artifact: Artifact, node: dict, acc_lo: int, acc_hi: int) -> dict:
    """Worst-case widths of x = (I << F) + bias, V, x - V and leak * (x - V).

    V starts at 0 and H lies between V and x (floor never undershoots min(V, x)), so V and H
    stay within hull(0, x range): overflow is impossible by construction."""
    F, K = artifact.frac_bits, artifact.leak_bits
    bias = artifact.arrays[node["bias"]]
    th = artifact.arrays[node["threshold"]]
    x_lo = acc_lo * (1 << F) + int(bias.min())
    x_hi = acc_hi * (1 << F) + int(bias.max())
    v_lo, v_hi = min(0, x_lo), max(0, x_hi, int(th.max()))
    d = max(x_hi - v_lo, v_hi - x_lo)
    return {"acc": signed_bits(acc_lo, acc_hi), "x": signed_bits(x_lo, x_hi),
            "membrane": signed_bits(v_lo, v_hi), "threshold": signed_bits(0, int(th.max())),
            "diff": signed_bits(-d, d), "product": signed_bits(-d << K, d << K)}


def derive_widths(artifact: Artifact) -> dict:
    """{node: {width name: bits}}, the minimum each node needs, and each value's max count."""
    T = artifact.timesteps
    bounds = {"input": artifact.manifest["model"]["input_max"]}
    out: dict = {}
    for node in artifact.nodes:
        name, op = node["name"], node["op"]
        ins = [bounds[s] for s in node.get("inputs", [])]
        if op == "conv":
            w = artifact.arrays[node["weight"]].reshape(node["out_channels"], -1)
            lo, hi = acc_range(w, ins[0])
            out[name] = _neuron_widths(artifact, node, lo, hi)
            bounds[name] = 1
        elif op == "to_tokens":
            bounds[name] = ins[0]
        elif op == "add":
            bounds[name] = sum(ins)
            out[name] = {"value": signed_bits(0, bounds[name])}
        elif op == "matmul":
            if node["format"] == "lowrank":
                b = dense_from_csc(artifact.arrays[node["b_col_ptr"]],
                                   artifact.arrays[node["b_row_idx"]],
                                   artifact.arrays[node["b_values"]], node["rank"],
                                   node["in_features"])
                z_lo, z_hi = acc_range(b, ins[0])
                a = artifact.arrays[node["a"]]
                zmax = max(-z_lo, z_hi)
                lo, hi = acc_range(np.abs(a), zmax)
                lo, hi = -hi, hi     # z has either sign: |A| |z| bounds both ends
                widths = _neuron_widths(artifact, node, lo, hi)
                widths["z"] = signed_bits(z_lo, z_hi)
            else:
                lo, hi = acc_range(artifact.weight_matrix(node), ins[0])
                widths = _neuron_widths(artifact, node, lo, hi)
            out[name] = widths
            bounds[name] = 1
        elif op == "attention":
            d = node["dim"] // node["heads"]
            n = artifact.manifest["model"]["tokens"]
            out[name] = _neuron_widths(artifact, node, 0, n * d)
            out[name]["kv"] = signed_bits(0, n)
            bounds[name] = 1
        elif op == "head":
            n = artifact.manifest["model"]["tokens"]
            w = artifact.arrays[node["weight"]]
            lo, hi = acc_range(w, ins[0] * n * T)
            bias = artifact.arrays[node["bias"]]
            out[name] = {"feature": signed_bits(0, ins[0] * n * T),
                         "logit": signed_bits(lo + int(bias.min(initial=0)),
                                              hi + int(bias.max(initial=0)))}
            bounds[name] = None
    out["_bounds"] = bounds
    return out
