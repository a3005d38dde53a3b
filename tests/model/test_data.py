"""Tests for model/data.py: digits split, CIFAR pickles and CIFAR10-DVS event files.

CIFAR and CIFAR10-DVS fixtures are tiny files written in the real release formats to tmp_path.
"""

import pickle
import struct

import numpy as np
import pytest

from model.data import (
    CIFAR10DVS_CLASSES,
    DataSplit,
    events_to_frames,
    load_cifar,
    load_cifar10_dvs,
    load_dataset,
    load_digits,
    read_aedat2,
    write_aedat2,
    write_cifar_batch,
)
from model.errors import DataError

# --------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_split_shapes_and_range(digits):
    assert digits.name == "digits"
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.dtype == np.uint8 and digits.y_train.dtype == np.int64
    x = np.concatenate([digits.x_train, digits.x_test])
    assert x.min() == 0 and x.max() == 16 == digits.input_max
    assert digits.input_scale == 1 / 16 and digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8) and not digits.time_varying


def test_digits_deterministic_and_seeded(digits):
    again = load_digits()
    np.testing.assert_array_equal(digits.x_test, again.x_test)
    np.testing.assert_array_equal(digits.y_train, again.y_train)
    other = load_digits(seed=1)
    assert not np.array_equal(digits.x_test, other.x_test)


def test_digits_stratified(digits):
    train_counts = np.bincount(digits.y_train, minlength=10)
    test_counts = np.bincount(digits.y_test, minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37  # ~360/10 each
    np.testing.assert_allclose(test_counts / 360, (train_counts + test_counts) / 1797, atol=0.005)


def test_digits_bad_test_size():
    with pytest.raises(DataError, match="test_size"):
        load_digits(test_size=0)
    with pytest.raises(DataError, match="test_size must leave training data"):
        load_digits(test_size=1797)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------------------------


def _images(n, offset):
    """n distinct images as (n, 3072) uint8; image i's R, G, B planes differ."""
    rng = np.random.default_rng(offset)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.fixture
def cifar10_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = (_images(5, i), [(i + j) % 10 for j in range(5)])
    batches["test_batch"] = (_images(5, 99), [9, 8, 7, 6, 5])
    batches["test_batch"][0][0, [2 * 32 + 3, 1024 + 2 * 32 + 3, 2048 + 2 * 32 + 3]] = [10, 20, 30]
    for name, (data, labels) in batches.items():
        write_cifar_batch(root / name, data, labels)
    return root, batches


def test_cifar10_round_trip(cifar10_dir):
    root, batches = cifar10_dir
    split = load_cifar(root)
    assert split.name == "cifar10" and split.num_classes == 10
    assert split.x_train.shape == (25, 3, 32, 32) and split.x_train.dtype == np.uint8
    assert split.y_train.dtype == np.int64 and split.input_max == 255
    assert split.input_scale == 1 / 255 and split.input_shape == (3, 32, 32)
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    np.testing.assert_array_equal(split.x_train.reshape(25, 3072),
                                  np.concatenate([d for d, _ in train]))
    np.testing.assert_array_equal(split.y_train, np.concatenate([lab for _, lab in train]))
    np.testing.assert_array_equal(split.y_test, [9, 8, 7, 6, 5])
    # planes are R, G, B of 32x32 row-major: pixel (row 2, col 3) of test image 0
    assert split.x_test[0, :, 2, 3].tolist() == [10, 20, 30]


def test_cifar_batch_pickled_like_the_original(cifar10_dir):
    root, batches = cifar10_dir
    raw = (root / "test_batch").read_bytes()
    assert raw.startswith(b"\x80\x02") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    with open(root / "test_batch", "rb") as f:  # the loader published with the data set
        batch = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal(batch[b"data"], batches["test_batch"][0])
    assert batch[b"labels"] == [9, 8, 7, 6, 5]


def test_cifar10_parent_dir_and_limit(cifar10_dir):
    root, batches = cifar10_dir
    split = load_dataset("cifar10", root.parent, limit=7)
    assert len(split.x_train) == 7 and len(split.x_test) == 5
    np.testing.assert_array_equal(split.x_train[5].reshape(3072), batches["data_batch_2"][0][0])


def test_cifar100_round_trip_and_parent_dir(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    train, test = _images(6, 1), _images(4, 2)
    write_cifar_batch(root / "train", train, [0, 99, 50, 1, 2, 3], key=b"fine_labels")
    write_cifar_batch(root / "test", test, [98, 97, 0, 1], key=b"fine_labels")
    for path in (root, tmp_path):
        split = load_dataset("cifar100", path)
        assert split.name == "cifar100" and split.num_classes == 100
        np.testing.assert_array_equal(split.x_train.reshape(6, 3072), train)
        np.testing.assert_array_equal(split.y_test, [98, 97, 0, 1])


def test_cifar_errors(cifar10_dir, tmp_path):
    root, _ = cifar10_dir
    with pytest.raises(DataError, match="CIFAR-10 directory not found: .*nowhere"):
        load_cifar(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"files missing \(data_batch_1.*test_batch\).*empty"):
        load_cifar(empty)
    with pytest.raises(DataError, match="files missing.*cifar-100-python"):
        load_cifar(root, num_classes=100)
    with pytest.raises(DataError, match="num_classes must be 10 or 100"):
        load_cifar(root, num_classes=20)
    with pytest.raises(DataError, match="limit must be an integer >= 1"):
        load_cifar(root, limit=0)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[: len(raw) // 2], "corrupt or truncated"),
    (lambda raw: b"", "corrupt or truncated"),
    (lambda raw: b"not a pickle at all", "corrupt or truncated"),
    (lambda raw: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, 2),
     "lacks the key 'labels'"),
    (lambda raw: pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, 2),
     r"expected \(N, 3072\)"),
    (lambda raw: pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, 2),
     r"labels outside 0..9"),
    (lambda raw: pickle.dumps([1, 2], 2), "does not hold a dict"),
    (lambda raw: pickle.dumps({b"data": [["a"]], b"labels": [0]}, 2), "must be integers"),
])
def test_cifar_bad_batch_file(cifar10_dir, damage, message):
    root, _ = cifar10_dir
    file = root / "data_batch_3"
    file.write_bytes(damage(file.read_bytes()))
    with pytest.raises(DataError, match=f"{message}.*data_batch_3"):
        load_cifar(root)


class _Exploit:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_cifar_refuses_foreign_globals(cifar10_dir, capsys):
    root, _ = cifar10_dir
    (root / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit()}, protocol=2))
    with pytest.raises(DataError, match=r"calls __builtin__\.print.*refusing.*: .*test_batch"):
        load_cifar(root)
    assert "unpickling ran code" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# CIFAR10-DVS
# --------------------------------------------------------------------------------------------


def test_aedat_raw_bit_layout(tmp_path):
    """A hand-packed event lands where spikingjelly's CIFAR10-DVS reader puts it."""
    x_raw, y_raw, p_raw = 10, 100, 0
    addr = (y_raw << 8) | (x_raw << 1) | p_raw
    file = tmp_path / "one.aedat"
    file.write_bytes(b"#!AER-DAT2.0\r\n# comment\r\n" + struct.pack(">II", addr, 1234))
    t, x, y, p = read_aedat2(file)
    assert (t.tolist(), x.tolist(), y.tolist(), p.tolist()) == ([1234], [27], [117], [1])
    frames = events_to_frames(x, y, p, timesteps=1, size=128)
    assert frames[0, 1, 117, 27] == 1 and frames.sum() == 1


def test_aedat_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x, y, p = rng.integers(0, 128, 50), rng.integers(0, 128, 50), rng.integers(0, 2, 50)
    t = np.sort(rng.integers(0, 2**32, 50))
    write_aedat2(tmp_path / "r.aedat", x, y, p, t)
    assert (tmp_path / "r.aedat").read_bytes().startswith(b"#!AER-DAT2.0\r\n")
    for got, want in zip(read_aedat2(tmp_path / "r.aedat"), (t, x, y, p)):
        np.testing.assert_array_equal(got, want)


def test_frames_equal_count_bins_downsample_and_clip():
    # 10 events, 3 frames: bins of 10 // 3 = 3 events, the last also takes the remainder
    n = 10
    frames = events_to_frames(np.arange(n), np.zeros(n), np.zeros(n), timesteps=3, size=32)
    assert frames.shape == (3, 2, 32, 32) and frames.dtype == np.uint8
    assert frames.sum(axis=(1, 2, 3)).tolist() == [3, 3, 4]
    assert frames[0, 0, 0, :2].tolist() == [3, 0]  # columns 0..2 share the 4x4 block 0
    # the 4x4 block of (row 5..7 | 4..7, col 8..11) sums, polarity picks the channel
    frames = events_to_frames([8, 9, 11, 12], [4, 5, 7, 7], [1, 1, 1, 0], timesteps=1, size=32)
    assert frames[0, 1, 1, 2] == 3 and frames[0, 0, 1, 3] == 1 and frames.sum() == 4
    # counts saturate at clip; fewer events than frames all land in the last frame
    frames = events_to_frames(np.full(40, 5), np.full(40, 6), np.ones(40), 1, size=128, clip=15)
    assert frames[0, 1, 6, 5] == 15
    frames = events_to_frames([1, 2], [3, 4], [0, 1], timesteps=4, size=64)
    assert frames[:3].sum() == 0 and frames[3].sum() == 2


def _write_dvs_fixture(root, per_class=3):
    """Class c, recording j: 8 + j events, event 0 at (x=4c, y=9, p=1), the rest at x=y=127."""
    for c, name in enumerate(CIFAR10DVS_CLASSES):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            n = 8 + j
            x, y, p = np.full(n, 127), np.full(n, 127), np.zeros(n, int)
            x[0], y[0], p[0] = 4 * c, 9, 1
            write_aedat2(root / name / f"cifar10_{name}_{j}.aedat", x, y, p, np.arange(n) * 10)


@pytest.fixture
def dvs_dir(tmp_path):
    root = tmp_path / "CIFAR10-DVS"
    _write_dvs_fixture(root)
    return root


def test_cifar10_dvs_load(dvs_dir):
    split = load_dataset("cifar10-dvs", dvs_dir, timesteps=4, size=32, clip=15,
                         test_fraction=0.34)
    assert isinstance(split, DataSplit) and split.name == "cifar10-dvs"
    assert split.x_train.shape == (20, 4, 2, 32, 32) and split.x_test.shape == (10, 4, 2, 32, 32)
    assert split.x_train.dtype == np.uint8 and split.y_train.dtype == np.int64
    assert split.time_varying and split.input_shape == (2, 32, 32)
    assert split.input_scale == 1.0 and split.input_max == 15 and split.num_classes == 10
    assert np.bincount(split.y_train).tolist() == [2] * 10  # stratified: 1 of 3 per class
    assert np.bincount(split.y_test).tolist() == [1] * 10
    for x, label in zip(split.x_test, split.y_test):
        # event 0 (x=4*label, y=9, polarity 1) is in frame 0, block (9 // 4, 4*label // 4)
        assert x[0, 1, 2, label] == 1 and x[0, 1].sum() == 1
        assert x[:, 0, 31, 31].sum() == x.sum() - 1  # all others in the corner block


def test_cifar10_dvs_split_is_seeded(dvs_dir):
    def test_ids(seed):  # recording j has 8 + j events: the frame sum identifies it
        split = load_cifar10_dvs(dvs_dir, timesteps=2, size=8, test_fraction=0.34, seed=seed)
        return split.x_test.reshape(10, -1).sum(axis=1).tolist()

    first = test_ids(0)
    assert test_ids(0) == first
    assert any(test_ids(seed) != first for seed in (1, 2, 3))


def test_cifar10_dvs_limit_per_class(dvs_dir):
    split = load_cifar10_dvs(dvs_dir, timesteps=1, size=4, limit_per_class=2)
    assert len(split.x_train) == 10 and len(split.x_test) == 10
    sums = np.concatenate([split.x_train, split.x_test]).reshape(20, -1).sum(axis=1)
    assert sorted(set(sums.tolist())) == [8, 9]  # recordings 0 and 1 only


def test_cifar10_dvs_option_errors(dvs_dir):
    with pytest.raises(DataError, match="size must divide the 128-pixel sensor, got 24"):
        load_cifar10_dvs(dvs_dir, size=24)
    with pytest.raises(DataError, match="timesteps must be an integer >= 1, got 0"):
        load_cifar10_dvs(dvs_dir, timesteps=0)
    with pytest.raises(DataError, match="clip must be at most 255"):
        load_cifar10_dvs(dvs_dir, clip=300)
    with pytest.raises(DataError, match="test_fraction must lie strictly between 0 and 1"):
        load_cifar10_dvs(dvs_dir, test_fraction=1.0)


def test_cifar10_dvs_folder_errors(dvs_dir, tmp_path):
    with pytest.raises(DataError, match="no CIFAR10-DVS class folders .*airplane.* in .*tmp"):
        load_cifar10_dvs(tmp_path)
    for f in (dvs_dir / "cat").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"at least 2 \.aedat files to split, found 0: .*cat"):
        load_cifar10_dvs(dvs_dir)
    (dvs_dir / "cat").rmdir()
    with pytest.raises(DataError, match=r"class folders missing \(cat\) in .*CIFAR10-DVS"):
        load_cifar10_dvs(dvs_dir)
    with pytest.raises(DataError, match="CIFAR10-DVS directory not found"):
        load_cifar10_dvs(tmp_path / "nowhere")


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-3], "truncated .* not a multiple of 8"),
    (lambda raw: raw[: raw.index(b"\r\n") + 2], "holds no events"),
    (lambda raw: raw[:20], "truncated inside its header"),
    (lambda raw: b"\x00\x01" + raw, "not an AER-DAT 2.0 file"),
])
def test_cifar10_dvs_bad_event_file(dvs_dir, damage, message):
    file = dvs_dir / "frog" / "cifar10_frog_1.aedat"
    file.write_bytes(damage(file.read_bytes()))
    with pytest.raises(DataError, match=f"{message}.*cifar10_frog_1.aedat"):
        load_cifar10_dvs(dvs_dir, timesteps=2, size=8)


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def test_load_dataset_dispatch_and_errors(tmp_path):
    split = load_dataset("digits", path="ignored", seed=0)
    assert split.name == "digits" and len(split.x_test) == 360
    with pytest.raises(DataError, match="unknown data set 'mnist'; known: digits, cifar10, "
                                        "cifar100, cifar10-dvs"):
        load_dataset("mnist")
    for name in ("cifar10", "cifar100", "cifar10-dvs"):
        with pytest.raises(DataError, match="must be given as a local path"):
            load_dataset(name)
    with pytest.raises(DataError, match="unknown option.*num_classes.*'cifar10'; known: limit"):
        load_dataset("cifar10", tmp_path, num_classes=100)
    with pytest.raises(DataError, match="unknown option.*frames.*'cifar10-dvs'"):
        load_dataset("cifar10-dvs", tmp_path, frames=4)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"")
    with pytest.raises(DataError, match="not a directory.*tar.gz; extract the archive"):
        load_dataset("cifar10", archive)
