"""The Makefile checks the cheap things first (issue 16 items 5 and 6): a wrong MODEL, SIM or
TARGET is refused before any export, HDL or golden data; `make export` takes every quantized
checkpoint, int4 ones too; `make bitstream` exports its own model only.

make runs with ``STFORGE=echo`` (every stage only prints its command line, so nothing is
computed or written) and ``-o .venv/.installed`` (never reinstalls the environment)."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def make(*args):
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed",
                           "STFORGE=echo", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def checkpoints(tmp_path):
    """A checkpoint folder as `make train` leaves it with quant.weight_bits = 4 (the files are
    empty: with STFORGE=echo nothing reads them)."""
    for name in ("zz_dense.pt", "zz_l1p-slif.pt", "zz_dense-int4.pt", "zz_l1p-int4.pt",
                 "zz_l1p-int8.pt"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["bitstream", "TARGET=ecp5-85f", "MODEL=nope"], "unknown model 'nope'"),
    (["bitstream", "TARGET=bogus"], "unknown target 'bogus'"),
    (["bitstream"], "unknown target ''"),
    (["bitstream", "TARGET=ice40-up5k", "MODEL=/nonexistent/m.json"], "does not exist"),
    (["sim", "SIM=ghdl"], "unknown simulator 'ghdl'"),
    (["sim", "MODEL=nope"], "unknown model 'nope'"),
    (["hdl", "MODEL=../x"], "is not a plain name"),
    (["hdl", "MODEL="], "is not a plain name"),
])
def test_a_wrong_variable_is_refused_before_any_work(args, message):
    r = make(*args)
    assert r.returncode == 2, r.stderr
    assert "stforge: error: " in r.stderr and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    for stage in ("export", "hdl", "golden-data", "sim", "bitstream"):
        assert not any(line.startswith(f"{stage} ") for line in r.stdout.splitlines()), r.stdout


def test_make_export_takes_every_quantized_checkpoint(checkpoints):
    r = make("export", f"CHECKPOINTS={checkpoints}")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("export "))
    assert line.split()[1:4] == [f"zz_dense-int4={checkpoints}/zz_dense-int4.pt",
                                 f"zz_l1p-int4={checkpoints}/zz_l1p-int4.pt",
                                 f"zz_l1p={checkpoints}/zz_l1p-int8.pt"]
    assert "slif" not in line and "zz_dense=" not in line


def test_make_export_without_quantized_checkpoints_is_one_line(tmp_path):
    r = make("export", f"CHECKPOINTS={tmp_path}")
    assert r.returncode == 2 and "no quantized checkpoint" in r.stderr


def test_an_int4_model_goes_through_make_hdl_by_name(checkpoints):
    r = make("hdl", "MODEL=zz_l1p-int4", f"CHECKPOINTS={checkpoints}")
    assert r.returncode == 0, r.stderr
    assert f"export zz_l1p-int4={checkpoints}/zz_l1p-int4.pt --out-dir build/artifacts " \
           f"--report build/reports/golden-zz_l1p-int4.json" in r.stdout
    assert "hdl build/artifacts/zz_l1p-int4.json --out build/hdl/zz_l1p-int4 --lanes 1" \
        in r.stdout


def test_make_bitstream_exports_its_own_model_only(checkpoints):
    r = make("bitstream", "TARGET=ice40-up5k", "MODEL=zz_l1p", f"CHECKPOINTS={checkpoints}")
    assert r.returncode == 0, r.stderr
    exports = [x for x in r.stdout.splitlines() if x.startswith("export ")]
    assert exports == [f"export zz_l1p={checkpoints}/zz_l1p-int8.pt --out-dir build/artifacts "
                       f"--report build/reports/golden-zz_l1p.json"]
    assert "bitstream --target ice40-up5k --artifact build/artifacts/zz_l1p.json" in r.stdout
