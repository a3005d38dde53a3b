"""The integer artifact: round trip, validation of every kind of defect, derived widths."""

import json

import numpy as np
import pytest

from model.artifact import Artifact, artifact_paths, conv_columns, load_artifact, save_artifact
from model.errors import ArtifactError


def copy_to(artifact, path):
    a = Artifact(json.loads(json.dumps(artifact.manifest)),
                 {k: v.copy() for k, v in artifact.arrays.items()})
    save_artifact(a, path)
    return a


@pytest.mark.parametrize("variant", ["dense", "l1p", "dsp"])
def test_round_trip(exported, variant, tmp_path):
    a = exported[variant]
    copy_to(a, tmp_path / "x")
    b = load_artifact(tmp_path / "x.json")
    assert b.manifest["nodes"] == a.manifest["nodes"]
    assert set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])


def test_formats_per_variant(exported):
    fmt = lambda v: {n["format"] for n in exported[v].nodes if n["op"] == "matmul"}
    assert fmt("dense") == {"dense"} and fmt("l1p") == {"sparse"} and fmt("dsp") == {"lowrank"}
    # L1P stores only non-zeros: about 10% of the dense entries.
    q = exported["l1p"].node("block0.q")
    assert len(exported["l1p"].arrays[q["values"]]) <= 0.1 * 32 * 32 + 1
    d = exported["dense"].node("block0.q")
    assert len(exported["dense"].arrays[d["values"]]) == 32 * 32
    # these L1P masks cover the blocks only: every conv stays dense
    assert {n["format"] for v in exported for n in exported[v].nodes
            if n["op"] == "conv"} == {"dense"}


def test_shipped_l1p_prunes_the_spike_fed_stem_conv(shipped_l1p_path):
    """prune.stem: the shipped L1P's second stem conv exports as sparse (90 % zeros); the
    pixel-fed first conv is never pruned."""
    a = load_artifact(shipped_l1p_path)
    assert a.node("stem1")["format"] == "sparse" and a.node("stem0")["format"] == "dense"
    w = a.arrays[a.node("stem1")["weight"]]
    assert abs((w == 0).mean() - 0.9) < 0.01


def test_conv_columns_store_every_weight_or_the_non_zeros():
    """Column in_channel * 9 + tap: a dense conv stores every weight (zeros too), a sparse one
    its non-zeros, in row order."""
    w = np.zeros((3, 2, 3, 3), np.int64)
    w[0, 1, 2, 2], w[2, 1, 2, 2], w[1, 0, 0, 1] = 5, -7, 3
    node = {"out_channels": 3, "format": "dense"}
    ptr, idx, val = conv_columns(node, w)
    assert list(np.diff(ptr)) == [3] * 18 and len(val) == 54
    ptr, idx, val = conv_columns({**node, "format": "sparse"}, w)
    sizes = np.diff(ptr)
    assert sizes[1] == 1 and sizes[1 * 9 + 8] == 2 and sizes.sum() == 3
    assert list(idx) == [1, 0, 2] and list(val) == [3, 5, -7]
    assert len(conv_columns({"out_channels": 3}, w)[2]) == 54     # no format: dense


def tampered(exported, tmp_path, edit):
    a = copy_to(exported["l1p"], tmp_path / "t")
    edit(a)
    save_artifact(a, tmp_path / "t")
    return tmp_path / "t.json"


def test_missing_files(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nothing")


def test_truncated_npz(exported, tmp_path):
    copy_to(exported["l1p"], tmp_path / "t")
    _, npz = artifact_paths(tmp_path / "t")
    npz.write_bytes(npz.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="truncated or was modified"):
        load_artifact(tmp_path / "t")


def test_tampered_bytes(exported, tmp_path):
    copy_to(exported["l1p"], tmp_path / "t")
    _, npz = artifact_paths(tmp_path / "t")
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(tmp_path / "t")


def test_wrong_version_and_format(exported, tmp_path):
    path = tampered(exported, tmp_path, lambda a: a.manifest.update(version=99))
    with pytest.raises(ArtifactError, match="schema version 99"):
        load_artifact(path)
    path = tampered(exported, tmp_path, lambda a: a.manifest.update(format="onnx"))
    with pytest.raises(ArtifactError, match="not an stforge artifact"):
        load_artifact(path)
    json_path, _ = artifact_paths(path)
    json_path.write_text("{ not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(path)


def test_weight_outside_declared_width(exported, tmp_path):
    def edit(a):
        a.arrays[a.node("block0.q")["values"]][0] = 128          # int8 holds -128..127
    with pytest.raises(ArtifactError, match=r"block0\.q: values .* outside its declared 8-bit"):
        load_artifact(tampered(exported, tmp_path, edit))


def test_mismatched_shapes(exported, tmp_path):
    def edit(a):
        name = a.node("block0.k")["col_ptr"]
        a.arrays[name] = a.arrays[name][:-1]
    with pytest.raises(ArtifactError, match=r"block0\.k: col_ptr has shape"):
        load_artifact(tampered(exported, tmp_path, edit))
    def edit_bias(a):
        a.arrays["stem0.bias"] = a.arrays["stem0.bias"][:3]
    with pytest.raises(ArtifactError, match=r"stem0: bias has shape"):
        load_artifact(tampered(exported, tmp_path, edit_bias))


def test_declared_width_too_small(exported, tmp_path):
    def edit(a):
        a.node("block0.mlp1")["widths"]["acc"] = 4
    with pytest.raises(ArtifactError, match=r"block0\.mlp1: declared width widths\.acc = 4"):
        load_artifact(tampered(exported, tmp_path, edit))


def test_unknown_op_and_dangling_input(exported, tmp_path):
    with pytest.raises(ArtifactError, match="unknown op 'softmax'"):
        load_artifact(tampered(exported, tmp_path,
                               lambda a: a.node("block0.attn").update(op="softmax")))
    with pytest.raises(ArtifactError, match="is not produced before it"):
        load_artifact(tampered(exported, tmp_path,
                               lambda a: a.node("block0.q").update(inputs=["block0.out"])))


def test_thresholds_and_leaks_in_range(exported, tmp_path):
    def edit(a):
        a.arrays[a.node("block0.v")["leak"]][0] = 257
    with pytest.raises(ArtifactError, match=r"leak must lie in 0\.\.2\^8"):
        load_artifact(tampered(exported, tmp_path, edit))
