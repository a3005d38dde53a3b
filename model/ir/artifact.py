"""Reading and writing artifacts: the one contract between model/ and hw/, sim/, firmware/.

An artifact is two files side by side: ``<stem>.json``, the manifest (model facts, fixed-point
parameters, the nodes with their declared widths, an index of the arrays with their checksums,
and a checksum of the manifest itself), and ``<stem>.npz``, every integer array. Loading checks
everything (the files' checksums, then the graph: model.ir.graph) and returns a
:class:`~model.ir.graph.Graph`; any defect is one ArtifactError line. docs/ARTIFACT.md is the
schema.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from model.errors import ArtifactError
from model.ir import files
from model.ir.fields import Fields, declare
from model.ir.graph import Graph, ModelInfo
from model.ir.nodes import FixedPoint, node_type

__all__ = ["FORMAT", "VERSION", "artifact_paths", "load_artifact", "save_artifact",
           "read_manifest", "graph_from_manifest", "build_graph", "manifest_of", "seal"]

FORMAT = "stforge-integer-model"
#: 2: the manifest's own checksum, typed nodes (version 1 artifacts: export again)
VERSION = 2
MAX_NODES = 4096

declare("artifact", {
    "format": f'"{FORMAT}"',
    "version": f"{VERSION}",
    "model": "object: the network's facts (see model)",
    "fixed_point": "object: the integer parameters (see fixed_point)",
    "nodes": "list of node objects in execution order (see the ops)",
    "source": "object: how the artifact was made (training config, checkpoint; "
              "\"silent_channels\": the export's removed and kept silent channels); free form",
    "arrays": "object: {array name: {dtype, shape, sha256}}, every array of the npz",
    "npz_sha256": "sha256 of the .npz file's bytes",
    "manifest_sha256": "sha256 of the manifest's canonical JSON without this field",
})
declare("array", {"dtype": "NumPy dtype of the stored array (integer)",
                  "shape": "its shape", "sha256": "sha256 of its C-order bytes"})


def artifact_paths(path) -> tuple[Path, Path]:
    """`x`, `x.json` or `x.npz` -> (x.json, x.npz)."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".npz") else path
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def seal(manifest: dict) -> dict:
    """`manifest` with its own checksum (``manifest_sha256``) set."""
    return {**manifest, "manifest_sha256": _sha(_canonical(manifest))}


def manifest_of(graph: Graph) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest without the array index and checksums, {npz name: array}) of a graph."""
    nodes, arrays = [], {}
    for node in graph.nodes:
        obj, node_arrays = node.write()
        nodes.append(obj)
        arrays.update(node_arrays)
    return ({"format": FORMAT, "version": VERSION, "model": graph.model.write(),
             "fixed_point": graph.fixed.write(), "nodes": nodes, "source": graph.source},
            arrays)


def save_artifact(graph: Graph, path) -> tuple[Path, Path]:
    """Write manifest and arrays atomically: every array indexed with shape, dtype and sha256,
    the npz and the manifest with checksums of their own."""
    json_path, npz_path = artifact_paths(path)
    manifest, arrays = manifest_of(graph)
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.int64)) for k, v in arrays.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    manifest["arrays"] = {name: {"dtype": str(a.dtype), "shape": list(a.shape),
                                 "sha256": _sha(a.tobytes())}
                          for name, a in sorted(arrays.items())}
    manifest["npz_sha256"] = _sha(data)
    text = json.dumps(seal(manifest), indent=1, allow_nan=False) + "\n"
    files.write_bytes(npz_path, data)
    files.write_text(json_path, text)
    return json_path, npz_path


def _no_constants(name: str):
    raise ArtifactError(f"the manifest holds {name}, which is not a JSON number")


def read_manifest(json_path: Path) -> dict:
    """The manifest as checked JSON: format, version and its own checksum."""
    try:
        manifest = json.loads(json_path.read_bytes(), parse_constant=_no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"artifact manifest {json_path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ArtifactError(f"artifact manifest {json_path} is nested too deeply") from None
    except ArtifactError as exc:
        raise ArtifactError(f"{json_path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{json_path} is not an stforge artifact (format {got!r})")
    if manifest.get("version") != VERSION:
        raise ArtifactError(f"{json_path}: schema version {manifest.get('version')!r} is not "
                            f"supported (this stforge reads version {VERSION}: export again)")
    try:
        canonical = _canonical(manifest)
    except (ValueError, RecursionError):
        raise ArtifactError(f"{json_path}: the manifest cannot be checked (nested too deeply)") \
            from None
    if manifest.get("manifest_sha256") != _sha(canonical):
        raise ArtifactError(f"{json_path} does not match its own checksum (manifest_sha256): "
                            f"it was edited or truncated; export it again")
    return manifest


def _read_arrays(m: Fields, npz_path: Path) -> dict[str, np.ndarray]:
    data = npz_path.read_bytes()
    if _sha(data) != m.get("npz_sha256"):
        raise ArtifactError(f"{npz_path} does not match its manifest (sha256 differs): the "
                            f"artifact is truncated or was modified")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:          # any defect of a file that passed its checksum
        raise ArtifactError(f"{npz_path} cannot be read: {exc}") from None
    return arrays


def _checked_arrays(m: Fields, arrays: dict) -> dict[str, np.ndarray]:
    index = m.get("arrays")
    if not isinstance(index, dict):
        m.fail("field 'arrays' must be an object")
    if set(index) != set(arrays):
        raise ArtifactError(f"arrays in the npz and the manifest index differ: "
                            f"{sorted(map(str, set(arrays) ^ set(index)))[:3]}")
    out = {}
    for name, a in arrays.items():
        meta = Fields(index[name], f"array {name}", "array")
        if a.dtype.kind not in "iu":
            meta.fail(f"must be an integer array, not {a.dtype}")
        if list(a.shape) != meta.get("shape"):
            meta.fail(f"has shape {list(a.shape)}, the manifest says {meta.get('shape')!r}")
        if _sha(np.ascontiguousarray(a).tobytes()) != meta.get("sha256"):
            meta.fail("does not match its checksum")
        if a.dtype.kind == "u" and a.size and a.max() >= 1 << 62:
            meta.fail("holds values beyond 2^62")
        fixed = np.ascontiguousarray(a, dtype=np.int64)
        fixed.flags.writeable = False
        out[name] = fixed
    return out


def graph_from_manifest(manifest: dict, arrays: dict) -> Graph:
    """The checked graph of a manifest (already read: read_manifest) and its npz arrays."""
    m = Fields(manifest, "artifact", "artifact")
    return build_graph(manifest, _checked_arrays(m, arrays))


def build_graph(manifest: dict, arrays: dict, *, derive: bool = False) -> Graph:
    """The graph of manifest objects `model`, `fixed_point`, `nodes`, `source` over `arrays`
    ({name: int64 array}); with `derive` (the export) the nodes' widths are derived."""
    m = Fields(manifest, "artifact", "artifact")
    model = ModelInfo.read(m.obj("model", "model"))
    fixed = FixedPoint.read(m.obj("fixed_point", "fixed_point"))
    nodes_data = m.get("nodes")
    if not isinstance(nodes_data, list) or not 1 <= len(nodes_data) <= MAX_NODES:
        m.fail(f"field 'nodes' must be a list of 1..{MAX_NODES} node objects")
    nodes, used = [], set()
    for i, data in enumerate(nodes_data):
        name = data.get("name") if isinstance(data, dict) else None
        where = f"node {name if isinstance(name, str) else i}"
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} must be a JSON object")
        cls = node_type(data, where)
        nodes.append(cls.read(Fields(data, where, cls.section()), arrays, fixed))
        used.update(data[k] for k in cls.ARRAYS if k in data)
    unused = sorted(set(arrays) - used)
    if unused:
        raise ArtifactError(f"array {unused[0]} belongs to no node")
    source = m.get("source", {})
    if not isinstance(source, dict):
        m.fail("field 'source' must be an object")
    return Graph.build(model, fixed, nodes, source, derive=derive)


def load_artifact(path) -> Graph:
    """Read and check an artifact; any defect raises one ArtifactError naming the field."""
    json_path, npz_path = artifact_paths(path)
    for p in (json_path, npz_path):
        if not p.is_file():
            raise ArtifactError(f"artifact file {p} does not exist (run `make export`?)")
    manifest = read_manifest(json_path)
    m = Fields(manifest, "artifact", "artifact")
    return graph_from_manifest(manifest, _read_arrays(m, npz_path))
