"""Checkpoints go through the one atomic writer (model.ir.files): a failed or interrupted write
leaves neither a temporary file nor a folder it created, and the old checkpoint untouched."""

import errno
import os

import pytest

from model.ir import files


@pytest.fixture(scope="module")
def tiny():
    from model.transformer import SpikingTransformer
    from model.config import config_from_dict
    config = config_from_dict({"model": {"stem_channels": [8, 8], "dim": 8, "heads": 2,
                                         "mlp_ratio": 2}, "prune": {"rank": 2},
                               "pipeline": {"sweep_ranks": [2]}})
    return SpikingTransformer(config.model, "lif"), config


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_checkpoint_round_trips(tiny, tmp_path):
    from model.train import load_checkpoint, save_checkpoint
    model, config = tiny
    save_checkpoint(tmp_path / "a" / "b" / "d.pt", model, config, {"seed": 3})
    assert _tree(tmp_path) == ["a", "a/b", "a/b/d.pt"]
    _, loaded, meta = load_checkpoint(tmp_path / "a" / "b" / "d.pt")
    assert loaded == config and meta == {"seed": 3}


@pytest.mark.parametrize("failure", [
    KeyboardInterrupt(),                                    # Ctrl-C at the final rename
    OSError(errno.ENOSPC, "No space left on device"),       # the disk fills up
])
def test_a_failed_write_leaves_nothing_behind(tiny, tmp_path, monkeypatch, failure):
    from model.train import save_checkpoint
    model, config = tiny

    def fail(*args):
        raise failure
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(type(failure)):
        save_checkpoint(tmp_path / "new" / "deeper" / "d.pt", model, config, {})
    assert _tree(tmp_path) == []                             # nor the folders it made


def test_a_target_that_is_a_folder_keeps_the_old_files(tiny, tmp_path):
    from model.train import save_checkpoint
    model, config = tiny
    (tmp_path / "d.pt").mkdir()
    (tmp_path / "old.pt").write_bytes(b"old")
    with pytest.raises(IsADirectoryError):
        save_checkpoint(tmp_path / "d.pt", model, config, {})
    assert _tree(tmp_path) == ["d.pt", "old.pt"]
    assert (tmp_path / "old.pt").read_bytes() == b"old"


def test_a_write_under_a_regular_file_creates_nothing(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError):
        files.write_json(tmp_path / "afile" / "sub" / "r.json", {})
    assert _tree(tmp_path) == ["afile"]
