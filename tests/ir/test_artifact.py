"""Artifacts: round trip, checksums, and every kind of defect as one ArtifactError line."""

import json

import numpy as np
import pytest

from artifact_edits import node_of, read_files, write_files
from model.errors import ArtifactError
from model.ir import Conv, LowRankMatMul, MatMul, artifact_paths, load_artifact, save_artifact
from model.ir.artifact import manifest_of


@pytest.mark.parametrize("variant", ["dense", "l1p", "dsp"])
def test_round_trip(exported, variant, tmp_path):
    a = exported[variant]
    save_artifact(a, tmp_path / "x")
    b = load_artifact(tmp_path / "x.json")
    (ma, arrays_a), (mb, arrays_b) = manifest_of(a), manifest_of(b)
    assert ma == mb and set(arrays_a) == set(arrays_b)
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k])
    assert [n.widths for n in a] == [n.widths for n in b]


def test_formats_per_variant(exported):
    fmt = lambda v: {n.format for n in exported[v] if isinstance(n, (MatMul, LowRankMatMul))}
    assert fmt("dense") == {"dense"} and fmt("l1p") == {"sparse"} and fmt("dsp") == {"lowrank"}
    # L1P stores only non-zeros: about 10% of the dense entries.
    assert len(exported["l1p"].node("block0.q").values) <= 0.1 * 32 * 32 + 1
    assert len(exported["dense"].node("block0.q").values) == 32 * 32
    # these L1P masks cover the blocks only: every conv stays dense
    assert {n.format for v in exported for n in exported[v] if isinstance(n, Conv)} == {"dense"}


def test_shipped_l1p_prunes_the_spike_fed_stem_conv(shipped_l1p_path):
    """prune.stem: the shipped L1P's second stem conv exports as sparse (90 % zeros); the
    pixel-fed first conv is never pruned."""
    a = load_artifact(shipped_l1p_path)
    assert a.node("stem1").format == "sparse" and a.node("stem0").format == "dense"
    assert abs((a.node("stem1").weight == 0).mean() - 0.9) < 0.01


def test_conv_columns_store_every_weight_or_the_non_zeros(exported):
    """Column in_channel * 9 + tap: a dense conv stores every weight (zeros too), a sparse one
    its non-zeros, in row order."""
    w = np.zeros((3, 2, 3, 3), np.int64)
    w[0, 1, 2, 2], w[2, 1, 2, 2], w[1, 0, 0, 1] = 5, -7, 3
    stem = exported["l1p"].node("stem0")
    import dataclasses
    conv = dataclasses.replace(stem, in_channels=2, out_channels=3, weight=w)
    ptr, idx, val = conv.columns()
    assert list(np.diff(ptr)) == [3] * 18 and len(val) == 54
    ptr, idx, val = dataclasses.replace(conv, conv_format="sparse").columns()
    sizes = np.diff(ptr)
    assert sizes[1] == 1 and sizes[1 * 9 + 8] == 2 and sizes.sum() == 3
    assert list(idx) == [1, 0, 2] and list(val) == [3, 5, -7]


def edited(exported, tmp_path, edit, reseal=True, variant="l1p"):
    """Save `variant`, apply `edit(manifest, arrays)` to its files, return the path."""
    save_artifact(exported[variant], tmp_path / "t")
    manifest, arrays = read_files(tmp_path / "t")
    edit(manifest, arrays)
    write_files(tmp_path / "t", manifest, arrays, reseal=reseal)
    return tmp_path / "t.json"


def test_missing_files(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nothing")


def test_truncated_npz(exported, tmp_path):
    save_artifact(exported["l1p"], tmp_path / "t")
    _, npz = artifact_paths(tmp_path / "t")
    npz.write_bytes(npz.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="truncated or was modified"):
        load_artifact(tmp_path / "t")


def test_tampered_bytes(exported, tmp_path):
    save_artifact(exported["l1p"], tmp_path / "t")
    _, npz = artifact_paths(tmp_path / "t")
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(tmp_path / "t")


@pytest.mark.parametrize("key, value", [("tokens", 4), ("timesteps", 5), ("input_max", 15),
                                        ("input_shape", [1, 8, 9])])
def test_an_edited_manifest_fails_its_own_checksum(exported, tmp_path, key, value):
    """Today's defect: an edited tokens, timesteps, input_max or input_shape gave different
    Verilog with exit 0. The manifest's own checksum refuses every edit."""
    path = edited(exported, tmp_path, lambda m, a: m["model"].update({key: value}),
                  reseal=False)
    with pytest.raises(ArtifactError, match="does not match its own checksum"):
        load_artifact(path)


@pytest.mark.parametrize("key, value, message", [
    ("tokens", 4, "model.tokens = 4, but a value has 16 tokens"),
    ("input_shape", [1, 8, 10], r"input is 1x8x10, but the conv declares 1x8x8"),
    ("depth", 2, "model.depth = 2, but the graph has 1 attention"),
    ("num_classes", 9, "model.num_classes = 9, but the head has 10"),
    ("timesteps", 0, r"'timesteps' must be an integer in 1\.\.4096, not 0"),
])
def test_model_facts_are_cross_checked_with_the_nodes(exported, tmp_path, key, value, message):
    """Even with a valid checksum (a generator's bug, not an edit), the model's facts must
    agree with the nodes."""
    path = edited(exported, tmp_path, lambda m, a: m["model"].update({key: value}))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(path)


def test_wrong_version_and_format(exported, tmp_path):
    path = edited(exported, tmp_path, lambda m, a: m.update(version=99))
    with pytest.raises(ArtifactError, match="schema version 99"):
        load_artifact(path)
    path = edited(exported, tmp_path, lambda m, a: m.update(format="onnx"))
    with pytest.raises(ArtifactError, match="not an stforge artifact"):
        load_artifact(path)
    json_path, _ = artifact_paths(path)
    json_path.write_text("{ not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(path)


def test_weight_outside_declared_width(exported, tmp_path):
    def edit(m, a):
        a[node_of(m, "block0.q")["values"]][0] = 128          # int8 holds -128..127
    with pytest.raises(ArtifactError, match=r"block0\.q: values .* outside its declared 8-bit"):
        load_artifact(edited(exported, tmp_path, edit))


def test_mismatched_shapes(exported, tmp_path):
    def edit(m, a):
        name = node_of(m, "block0.k")["col_ptr"]
        a[name] = a[name][:-1]
    with pytest.raises(ArtifactError, match=r"block0\.k: col_ptr has shape"):
        load_artifact(edited(exported, tmp_path, edit))

    def edit_bias(m, a):
        a["stem0.bias"] = a["stem0.bias"][:3]
    with pytest.raises(ArtifactError, match=r"stem0: bias has shape"):
        load_artifact(edited(exported, tmp_path, edit_bias))


def test_declared_width_too_small(exported, tmp_path):
    def edit(m, a):
        node_of(m, "block0.mlp1")["widths"]["acc"] = 4
    with pytest.raises(ArtifactError, match=r"block0\.mlp1: declared width widths\.acc = 4"):
        load_artifact(edited(exported, tmp_path, edit))


def test_unknown_op_and_dangling_input(exported, tmp_path):
    with pytest.raises(ArtifactError, match="unknown op 'softmax'"):
        load_artifact(edited(exported, tmp_path,
                             lambda m, a: node_of(m, "block0.attn").update(op="softmax")))
    with pytest.raises(ArtifactError, match="is not produced before it"):
        load_artifact(edited(exported, tmp_path,
                             lambda m, a: node_of(m, "block0.q").update(inputs=["block0.out"])))


def test_thresholds_and_leaks_in_range(exported, tmp_path):
    def edit(m, a):
        a[node_of(m, "block0.v")["leak"]][0] = 257
    with pytest.raises(ArtifactError, match=r"leak must lie in 0\.\.2\^8"):
        load_artifact(edited(exported, tmp_path, edit))


def test_version_1_artifacts_say_export_again(exported, tmp_path):
    path = edited(exported, tmp_path, lambda m, a: m.update(version=1))
    with pytest.raises(ArtifactError, match="version 1 is not supported.*export again"):
        load_artifact(path)


def test_nothing_is_half_written(exported, tmp_path):
    """save_artifact goes through temporary files: none are left behind."""
    save_artifact(exported["dsp"], tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.npz"]
    assert json.loads((tmp_path / "d.json").read_text())["version"] == 2
