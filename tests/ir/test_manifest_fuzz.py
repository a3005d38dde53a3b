"""Hypothesis-driven manifest fuzzing: any malformed manifest is one ArtifactError line.

Starting from a valid artifact, each example deletes a key, puts a value of the wrong type,
an out-of-range or non-finite number, or an edited size somewhere in the manifest, writes it
(with every checksum re-sealed, so the edit reaches the graph's checks, or as a plain edit that
the manifest's own checksum must catch) and loads it: the outcome is a loaded, fully checked
graph or one ArtifactError of one line; never another exception. `make hdl` on a refused
artifact exits 2 and writes nothing.
"""

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from artifact_edits import read_files, write_files
from model.errors import ArtifactError
from model.ir import load_artifact, save_artifact


def _paths(value, prefix=()):
    """Every (path) to an entry of the manifest, except the free-form ``source``."""
    if isinstance(value, dict):
        for k, v in value.items():
            if prefix == () and k == "source":
                continue
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _parent(manifest, path):
    node = manifest
    for key in path[:-1]:
        node = node[key]
    return node


WRONG_VALUES = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.just([]), st.just({}),
    st.just([1, 2]), st.just({"x": 1}),
    st.sampled_from([0, -1, -3, 1 << 70, -(1 << 70), 1.5, 1e308, -0.0,
                     math.nan, math.inf, -math.inf]))


@pytest.fixture(scope="module")
def valid(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    save_artifact(exported["dsp"], root / "a")
    manifest, arrays = read_files(root / "a")
    return _Valid(manifest, arrays, sorted(_paths(manifest), key=repr))


class _Valid(tuple):
    def __new__(cls, *items):
        return super().__new__(cls, items)

    def __repr__(self):
        return "<valid dsp artifact>"


def _load_outcome(manifest, arrays, reseal):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f"
        write_files(path, manifest, arrays, reseal=reseal)
        try:
            load_artifact(path)
        except ArtifactError as exc:
            assert "\n" not in str(exc), str(exc)
            return "refused"
    return "loaded"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), action=st.sampled_from(["delete", "wrong", "size"]),
       reseal=st.booleans())
def test_a_malformed_manifest_is_one_artifact_error(valid, data, action, reseal):
    manifest, arrays, paths = valid
    manifest = json.loads(json.dumps(manifest))
    path = data.draw(st.sampled_from(paths))
    parent, key = _parent(manifest, path), path[-1]
    if action == "delete":
        if isinstance(parent, list):
            parent.pop(key)
        else:
            del parent[key]
    elif action == "wrong":
        parent[key] = data.draw(WRONG_VALUES)
    else:
        old = parent[key]
        if isinstance(old, bool) or not isinstance(old, int):
            parent[key] = data.draw(WRONG_VALUES)
        else:
            parent[key] = old + data.draw(st.sampled_from([-old, -1, 1, old, 1 << 40]))
    # a "wrong" value may happen to be the value already there (pool = true, 0 + -0): no edit
    assume(json.dumps(manifest, sort_keys=True) != json.dumps(valid[0], sort_keys=True))
    outcome = _load_outcome(manifest, arrays, reseal)
    if not reseal:
        assert outcome == "refused"          # the manifest's own checksum


ALLOWED = ("input_max", "weight_bits", "timesteps")


def test_sizes_edited_everywhere_are_refused(valid):
    """Every integer in the manifest (sizes, widths, facts) changed by one: refused, each by a
    check of its own (checksums re-sealed)."""
    manifest0, arrays, paths = valid
    loaded = []
    for path in paths:
        if path[0] == "arrays":         # re-sealing rewrites the array index
            continue
        manifest = json.loads(json.dumps(manifest0))
        parent, key = _parent(manifest, path), path[-1]
        value = parent[key]
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        parent[key] = value + 1
        if _load_outcome(manifest, arrays, True) == "loaded":
            loaded.append(path)
    # a wider declared width is allowed (the hardware gets wider); so are a larger input range,
    # weight width or number of steps as long as every width derived from them still holds
    # (consistent facts: only the manifest's checksum tells such an edit from a real model);
    # nothing else may pass unnoticed
    assert all(p[-2] == "widths" or p[-1] in ALLOWED for p in loaded), \
        loaded


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    '{"format": "stforge-integer-model", "version": 2, "model": ' + "[" * 50_000 +
    "]" * 50_000 + "}",
    '{"format": "stforge-integer-model", "version": 2, "x": NaN}',
    '{"format": "stforge-integer-model", "version": 2, "x": Infinity}',
    "", "null", "[]", '"text"', "\xff\xfe",
])
def test_unreadable_manifests(tmp_path, valid, text):
    _, arrays, _ = valid
    (tmp_path / "f.json").write_text(text, errors="surrogateescape")
    write_files(tmp_path / "g", {}, arrays, reseal=False)
    (tmp_path / "g.npz").rename(tmp_path / "f.npz")
    with pytest.raises(ArtifactError) as exc:
        load_artifact(tmp_path / "f")
    assert "\n" not in str(exc.value)


def test_make_hdl_on_a_refused_artifact_exits_2_and_writes_nothing(valid, tmp_path, capsys):
    from model.flows.cli import main
    manifest, arrays, _ = valid
    manifest = json.loads(json.dumps(manifest))
    manifest["model"]["heads"] = 0
    write_files(tmp_path / "bad", manifest, arrays)
    out = tmp_path / "hdl"
    assert main(["hdl", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "heads" in err[0], err
    assert not out.exists()
