"""Data sets as integer arrays: 8x8 digits, CIFAR-10/100 and CIFAR10-DVS.

Every loader returns a :class:`DataSplit` whose inputs are small integers (``x_float = x_int *
input_scale``) so the same arrays feed float training, integer export and the torch-free golden
model. Nothing is ever downloaded: CIFAR and CIFAR10-DVS are read from a local copy in their
original release formats, and every user mistake raises a one-line :class:`DataError`.

The module imports only NumPy, scikit-learn and the standard library on purpose: torch-free
downstream packages (hardware generator, simulation, firmware) load data through it too.
"""

from __future__ import annotations

import codecs
import inspect
import io
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import DataError

__all__ = [
    "CIFAR10DVS_CLASSES",
    "DataSplit",
    "events_to_frames",
    "load_cifar",
    "load_cifar10_dvs",
    "load_dataset",
    "load_digits",
    "read_aedat2",
    "write_aedat2",
    "write_cifar_batch",
]

#: Class folders of the original CIFAR10-DVS release, in CIFAR-10 label order.
CIFAR10DVS_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
DVS_SENSOR = 128  # the DVS128 sensor behind CIFAR10-DVS is 128x128


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarray fields with == is ambiguous
class DataSplit:
    """A train/test split of integer inputs and int64 labels.

    ``x_*`` is ``(N, C, H, W)`` for static images and ``(N, T, C, H, W)`` for event frames;
    ``x_float = x_int * input_scale`` and every input lies in ``0..input_max``, which is what
    the integer export needs to size the first layer's accumulators.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_scale: float
    input_max: int

    @property
    def time_varying(self) -> bool:
        """True for event data, whose inputs carry their own time axis."""
        return self.x_train.ndim == 5

    @property
    def input_shape(self) -> tuple:
        """``(C, H, W)`` of one input frame."""
        return tuple(self.x_train.shape[-3:])


# --------------------------------------------------------------------------------------------
# Option checks shared by the loaders
# --------------------------------------------------------------------------------------------

def _positive_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise a one-line DataError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _existing_dir(path, what: str) -> Path:
    """Resolve a user-given data set directory or say clearly why it is unusable."""
    if path is None:
        raise DataError(f"the {what} data set must be given as a local path (no downloads are "
                        "possible)")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{what} directory not found: {path}")
    if not path.is_dir():
        hint = "; extract the archive and pass the directory" if _is_archive(path) else ""
        raise DataError(f"{what} path is not a directory: {path}{hint}")
    return path


def _is_archive(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar", ".zip"))


# --------------------------------------------------------------------------------------------
# Digits (embedded in scikit-learn)
# --------------------------------------------------------------------------------------------

def load_digits(seed: int = 0, test_size: int = 360) -> DataSplit:
    """Load scikit-learn's 1797 8x8 digits as uint8 ``(N, 1, 8, 8)`` with values 0..16.

    The split is stratified and seeded, so every run (and every machine) sees the same test set.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # pixel values are the integers 0..16
    y = bunch.target.astype(np.int64)
    test_size = _positive_int("test_size", test_size, minimum=10)  # >= 1 digit of each class
    if test_size > len(y) - 10:
        raise DataError(f"test_size must leave training data, got {test_size} of {len(y)} digits")
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=seed)
    return DataSplit("digits", x_tr, y_tr, x_te, y_te, num_classes=10,
                     input_scale=1.0 / 16, input_max=16)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 ("python version": pickled dicts of numpy arrays)
# --------------------------------------------------------------------------------------------

_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_NP_ALLOWED = {  # the only globals a CIFAR batch needs, under NumPy 1.x and 2.x module names
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): np.int64(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.int64(0).__reduce__()[0],
    ("numpy.core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],
    ("numpy._core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at protocol 2
}


class _ForeignGlobal(pickle.UnpicklingError):
    """The pickle names a callable that no CIFAR batch needs."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickle only NumPy arrays and plain containers.

    A CIFAR batch is a pickle, and unpickling runs whatever callables the file names; restricting
    them to NumPy's array constructors makes loading a downloaded file safe.
    """

    def find_class(self, module, name):
        try:
            return _NP_ALLOWED[(module, name)]
        except KeyError:
            raise _ForeignGlobal(f"{module}.{name}") from None


def _read_batch(file: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch into uint8 ``(N, 3, 32, 32)`` images and int64 labels."""
    if not file.is_file():
        raise DataError(f"CIFAR batch file missing: {file}")
    try:
        with open(file, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except _ForeignGlobal as exc:
        raise DataError(f"CIFAR batch file calls {exc}, which no CIFAR batch does; refusing to "
                        f"unpickle it: {file}") from None
    except Exception as exc:  # corrupt pickles raise nearly anything; all mean "bad file"
        raise DataError(f"CIFAR batch file is corrupt or truncated ({exc}): {file}") from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR batch file does not hold a dict: {file}")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    for key in (b"data", label_key):
        if key not in batch:
            raise DataError(f"CIFAR batch file lacks the key {key.decode()!r}: {file}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype.kind not in "ui" or labels.dtype.kind not in "ui":
        raise DataError(f"CIFAR batch data and labels must be integers, got {data.dtype} and "
                        f"{labels.dtype}: {file}")
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise DataError(f"CIFAR batch has data {data.shape} and labels {labels.shape}, expected "
                        f"(N, 3072) and (N,): {file}")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise DataError(f"CIFAR batch pixel values outside 0..255: {file}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"CIFAR batch labels outside 0..{num_classes - 1}: {file}")
    # each row is the R, then G, then B plane of a 32x32 image, each plane row-major
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar(path, num_classes: int = 10, limit: int | None = None) -> DataSplit:
    """Load CIFAR-10 or CIFAR-100 from the original pickled python batches.

    ``path`` is the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` directory or the
    directory holding it. ``limit`` keeps the first ``limit`` images of each split for quick runs.
    Images are uint8 ``(N, 3, 32, 32)`` in RGB plane order.
    """
    if num_classes not in (10, 100):
        raise DataError(f"CIFAR num_classes must be 10 or 100, got {num_classes!r}")
    what = f"CIFAR-{num_classes}"
    root = _existing_dir(path, what)
    if num_classes == 10:
        subdir, train_files, test_file, label_key = (
            "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
            b"labels")
    else:
        subdir, train_files, test_file, label_key = (
            "cifar-100-python", ["train"], "test", b"fine_labels")
    if not (root / test_file).exists() and (root / subdir).is_dir():
        root = root / subdir
    missing = [f for f in [*train_files, test_file] if not (root / f).is_file()]
    if missing:
        raise DataError(f"{what} files missing ({', '.join(missing)}): {root} should be the "
                        f"extracted {subdir} directory or its parent")
    if limit is not None:
        limit = _positive_int("limit", limit)

    xs, ys = [], []
    for name in train_files:
        x, y = _read_batch(root / name, label_key, num_classes)
        xs.append(x)
        ys.append(y)
        if limit is not None and sum(len(y) for y in ys) >= limit:
            break  # quick runs need not unpickle the remaining batches
    x_test, y_test = _read_batch(root / test_file, label_key, num_classes)
    return DataSplit(
        f"cifar{num_classes}", np.concatenate(xs)[:limit], np.concatenate(ys)[:limit],
        x_test[:limit], y_test[:limit], num_classes=num_classes, input_scale=1.0 / 255,
        input_max=255)


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table is editable
    """Pickle like Python 2's cPickle did for the original CIFAR release.

    ``bytes``/``str`` become Python 2 ``str`` opcodes (read back as bytes under
    ``encoding="bytes"``) and the array constructor keeps its historic module name, so fixtures
    exercise exactly the decoding path of the real files.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        if isinstance(obj, str):
            obj = obj.encode("latin-1")
        n = len(obj)
        head = (pickle.SHORT_BINSTRING + bytes([n]) if n < 256
                else pickle.BINSTRING + struct.pack("<i", n))
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        if obj is _NP_RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def write_cifar_batch(path, data, labels, key: bytes = b"labels") -> None:
    """Write one CIFAR batch file exactly as the original release pickled it (for fixtures).

    ``data`` is uint8 ``(N, 3072)`` (R, G, B planes of 32x32), ``labels`` N ints; use
    ``key=b"fine_labels"`` for CIFAR-100.
    """
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"need data (N, 3072) and N labels, got {data.shape} and {len(labels)}")
    batch = {
        b"batch_label": b"written by stforge",
        key: [int(v) for v in labels],
        b"data": data,
        b"filenames": [f"image_{i}.png".encode() for i in range(len(data))],
    }
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(batch)
    Path(path).write_bytes(buf.getvalue())


# --------------------------------------------------------------------------------------------
# CIFAR10-DVS (original release: AER-DAT 2.0 files, one folder per class)
# --------------------------------------------------------------------------------------------
#
# Address layout and orientation follow spikingjelly's reader (fangwei123456/spikingjelly,
# spikingjelly/datasets/cifar10_dvs.py, _load_origin_data): on the raw big-endian uint32 address,
# x_raw = (addr & 0xFE) >> 1, y_raw = (addr & 0x7F00) >> 8, p_raw = addr & 1, and the returned
# events are x = 127 - y_raw, y = 127 - x_raw, p = 1 - p_raw (a transpose plus flips, matching
# the MNIST-DVS reference dat2mat.m). Frames are indexed [p, y, x] as in spikingjelly's
# integrate_events_segment_to_frame. Header: every leading line starting with b"#" (_skip_header).

_AEDAT_MAGIC = b"#!AER-DAT2"


def read_aedat2(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a CIFAR10-DVS ``.aedat`` file into ``(t, x, y, p)`` in spikingjelly's orientation.

    ``x`` is the frame column, ``y`` the row (both 0..127) and ``p`` the polarity channel (0/1).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read event file ({exc.strerror}): {path}") from None
    if not raw.startswith(_AEDAT_MAGIC):
        raise DataError(f"not an AER-DAT 2.0 file (no '#!AER-DAT2' header line): {path}")
    pos = 0
    while raw.startswith(b"#", pos):  # ASCII header lines, each ending in \r\n
        end = raw.find(b"\n", pos)
        if end < 0:
            raise DataError(f"event file is truncated inside its header: {path}")
        pos = end + 1
    body = memoryview(raw)[pos:]
    if len(body) % 8:
        raise DataError(f"event file is truncated ({len(body)} bytes of events is not a "
                        f"multiple of 8): {path}")
    if not len(body):
        raise DataError(f"event file holds no events: {path}")
    words = np.frombuffer(body, dtype=">u4")
    addr, t = words[0::2].astype(np.int64), words[1::2].astype(np.int64)
    x_raw, y_raw, p_raw = (addr & 0xFE) >> 1, (addr & 0x7F00) >> 8, addr & 1
    return t, 127 - y_raw, 127 - x_raw, 1 - p_raw


def write_aedat2(path, x, y, polarity, timestamps) -> None:
    """Write events to an AER-DAT 2.0 file that :func:`read_aedat2` reads back unchanged.

    ``x``, ``y``, ``polarity`` use the reader's orientation (column, row, channel), so fixtures
    can be written in frame coordinates; the writer applies the inverse address mapping.
    """
    x, y, p, t = (np.asarray(a, dtype=np.int64).ravel() for a in (x, y, polarity, timestamps))
    if not len(x) == len(y) == len(p) == len(t):
        raise ValueError("x, y, polarity and timestamps must have the same length")
    if ((x < 0) | (x > 127) | (y < 0) | (y > 127)).any() or not np.isin(p, (0, 1)).all():
        raise ValueError("x and y must lie in 0..127 and polarity in {0, 1}")
    if ((t < 0) | (t > 0xFFFFFFFF)).any():
        raise ValueError("timestamps must fit in uint32")
    addr = ((127 - x) << 8) | ((127 - y) << 1) | (1 - p)
    header = (b"#!AER-DAT2.0\r\n"
              b"# This is a raw AE data file created by stforge - do not edit\r\n"
              b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for "
              b"each event\r\n"
              b"# Timestamps tick is 1 us\r\n")
    words = np.stack([addr, t], axis=1).astype(">u4")
    Path(path).write_bytes(header + words.tobytes())


def _frame_options(timesteps, size, clip) -> tuple[int, int, int]:
    """Check the frame options before any file is read."""
    timesteps = _positive_int("timesteps", timesteps)
    size = _positive_int("size", size)
    if DVS_SENSOR % size:
        raise DataError(f"size must divide the {DVS_SENSOR}-pixel sensor, got {size}")
    clip = _positive_int("clip", clip)
    if clip > 255:
        raise DataError(f"clip must be at most 255 to fit uint8 frames, got {clip}")
    return timesteps, size, clip


def events_to_frames(x, y, p, timesteps: int, size: int = 32, clip: int = 15) -> np.ndarray:
    """Integrate one event stream into uint8 frames ``(timesteps, 2, size, size)``.

    Like spikingjelly's ``split_by='number'``: with ``N`` events and ``d = N // timesteps``,
    frame ``i`` holds events ``[i*d, (i+1)*d)`` and the last frame also takes the remainder (so
    with fewer events than frames, all land in the last one). Each ``128 / size`` block of
    sensor pixels is summed, then counts are clipped to ``clip`` to bound the integer inputs.
    """
    timesteps, size, clip = _frame_options(timesteps, size, clip)
    x, y, p = (np.asarray(a, dtype=np.int64) for a in (x, y, p))
    n, factor = len(x), DVS_SENSOR // size
    per_frame = n // timesteps
    frame = (np.minimum(np.arange(n) // per_frame, timesteps - 1) if per_frame
             else np.full(n, timesteps - 1))
    index = ((frame * 2 + p) * size + y // factor) * size + x // factor
    counts = np.bincount(index, minlength=timesteps * 2 * size * size)
    return np.minimum(counts, clip).astype(np.uint8).reshape(timesteps, 2, size, size)


def _natural_key(path: Path):
    """Sort cifar10_cat_2 before cifar10_cat_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def load_cifar10_dvs(path, timesteps: int = 10, size: int = 32, clip: int = 15,
                     test_fraction: float = 0.1, seed: int = 0,
                     limit_per_class: int | None = None) -> DataSplit:
    """Load the original CIFAR10-DVS release as uint8 frames ``(N, timesteps, 2, size, size)``.

    ``path`` holds one folder per class (airplane ... truck) of ``.aedat`` recordings. Each
    recording is binned by equal event counts (see :func:`events_to_frames`). The release has no
    official split, so each class is split with a seeded shuffle, ``test_fraction`` to test.
    ``limit_per_class`` keeps the first recordings of each class (natural file order).
    """
    root = _existing_dir(path, "CIFAR10-DVS")
    timesteps, size, clip = _frame_options(timesteps, size, clip)
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    if limit_per_class is not None:
        limit_per_class = _positive_int("limit_per_class", limit_per_class)

    present = [c for c in CIFAR10DVS_CLASSES if (root / c).is_dir()]
    if not present:
        raise DataError(f"no CIFAR10-DVS class folders ({', '.join(CIFAR10DVS_CLASSES)}) in "
                        f"{root}")
    missing = [c for c in CIFAR10DVS_CLASSES if c not in present]
    if missing:
        raise DataError(f"CIFAR10-DVS class folders missing ({', '.join(missing)}) in {root}")

    rng = np.random.default_rng(seed)
    train, test = [], []  # (file, label)
    for label, name in enumerate(CIFAR10DVS_CLASSES):
        files = sorted((f for f in (root / name).iterdir()
                        if f.is_file() and f.suffix.lower() == ".aedat"), key=_natural_key)
        files = files[:limit_per_class]
        if len(files) < 2:
            raise DataError(f"CIFAR10-DVS class folder needs at least 2 .aedat files to split, "
                            f"found {len(files)}: {root / name}")
        n_test = min(max(1, round(len(files) * test_fraction)), len(files) - 1)
        is_test = np.zeros(len(files), dtype=bool)
        is_test[rng.permutation(len(files))[:n_test]] = True
        for file, in_test in zip(files, is_test):
            (test if in_test else train).append((file, label))

    def frames(items):
        x = np.stack([events_to_frames(*read_aedat2(f)[1:], timesteps, size, clip)
                      for f, _ in items])
        return x, np.array([label for _, label in items], dtype=np.int64)

    x_train, y_train = frames(train)
    x_test, y_test = frames(test)
    return DataSplit("cifar10-dvs", x_train, y_train, x_test, y_test, num_classes=10,
                     input_scale=1.0, input_max=int(clip))


# --------------------------------------------------------------------------------------------
# Dispatch by name
# --------------------------------------------------------------------------------------------

_LOADERS = {  # name -> (loader, fixed keyword arguments)
    "digits": (load_digits, {}),
    "cifar10": (load_cifar, {"num_classes": 10}),
    "cifar100": (load_cifar, {"num_classes": 100}),
    "cifar10-dvs": (load_cifar10_dvs, {}),
}


def load_dataset(name: str, path=None, **options) -> DataSplit:
    """Load a data set by name; ``options`` go to its loader (``path`` is ignored for digits)."""
    if name not in _LOADERS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(_LOADERS)}")
    loader, fixed = _LOADERS[name]
    allowed = [p for p in inspect.signature(loader).parameters if p != "path" and p not in fixed]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"unknown option(s) {', '.join(unknown)} for data set {name!r}; "
                        f"known: {', '.join(allowed)}")
    if loader is load_digits:
        return loader(**options)
    return loader(path, **fixed, **options)
