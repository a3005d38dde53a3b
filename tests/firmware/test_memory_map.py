"""The memory map travels as data: written by `stforge hdl` / `stforge bitstream`, read by the
host without Amaranth."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware.images import Table, read_memory_map, write_mem_chunks, write_memory_map
from model.errors import StforgeError

ROOT = Path(__file__).resolve().parents[2]


def test_write_mem_chunks_checks_its_tables():
    """A table WRITE_MEM cannot carry is a ValueError before the first frame."""
    good = Table(0, "x", 8, (1, 2))
    for tables, max_payload, message in [
            ([good], 5, "Maximum payload must be an integer in 6..65535, not 5"),
            ([good], 70000, "not 70000"),
            (good, 64, "not one of int"),
            (5, 64, "Tables must be a sequence of Table, not int"),
            ([Table(0, "x", 0, ())], 64, "needs an id in 0..255, a width of at least 1 bit"),
            ([Table(0, "x", 8, 5)], 64, "a sequence of words"),
            ([Table(0, "x", 8, (1.5,))], 64, "holds a word that is not an integer of 8 bits"),
            ([Table(0, "x", 8, (-1,))], 64, "holds a word that is not an integer of 8 bits"),
            ([Table(0, "wide", 600, (1,))], 64, "cannot carry one 75-byte word of wide")]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            list(write_mem_chunks(tables, max_payload))
    assert list(write_mem_chunks([good], 6)) == [(0, 0, b"\x01"), (0, 1, b"\x02")]


def test_round_trip(tmp_path):
    tables = [Table(0, "engine.entries", 12, (1, 2, 4095)), Table(1, "neurons.parameters", 3, (7,))]
    write_memory_map(tmp_path / "m.json", tables, loadable=True)
    assert read_memory_map(tmp_path / "m.json") == tables


@pytest.mark.parametrize("text, message", [
    ("{", "not readable"),
    ('{"format": "other"}', "not an stforge-memory-map"),
    ('{"format": "stforge-memory-map", "version": 1, "tables": [{"id": 1, "name": "x", '
     '"width": 4, "words": [1]}]}', "ids must be 0, 1"),
    ('{"format": "stforge-memory-map", "version": 1, "tables": [{"id": 0, "name": "x", '
     '"width": 4, "words": [16]}]}', "wider than its 4 bits"),
    ('{"format": "stforge-memory-map", "version": 1, "tables": [{"id": 0}]}', "not readable"),
    ('{"format": "stforge-memory-map", "version": 1, "tables": [{"id": 0, "name": "x", '
     '"width": 1e400, "words": []}]}', "not readable"),          # int(inf): OverflowError
    ('{"format": "stforge-memory-map", "version": 1, "tables": [{"id": 0, "name": "a\\nb", '
     '"width": 4, "words": [16]}]}', "table 'a.nb' holds a word wider"),
])
def test_bad_files_are_one_line(tmp_path, text, message):
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(StforgeError, match=message) as exc:
        read_memory_map(tmp_path / "m.json")
    assert "\n" not in str(exc.value)
    with pytest.raises(StforgeError, match="does not exist"):
        read_memory_map(tmp_path / "none.json")


def test_hdl_writes_the_designs_memory_map(shipped_l1p_path, tmp_path):
    """`stforge hdl` writes memory_map.json: the accelerator's own tables, word for word."""
    from hw.accelerator import Accelerator
    from model.ir import load_artifact
    out = tmp_path / "hdl"
    r = subprocess.run([sys.executable, "-m", "model.flows.cli", "hdl", str(shipped_l1p_path),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tables = read_memory_map(out / "memory_map.json")
    acc = Accelerator(load_artifact(shipped_l1p_path), loadable=True)
    acc._MustUse__silence = True            # built for its memory map, never elaborated
    expected = acc.memory_map()
    assert [(t.id, t.name, t.width) for t in tables] == \
        [(t.id, t.name, t.width) for t in expected]
    assert [list(t.words) for t in tables] == [[int(w) for w in t.words] for t in expected]
    assert json.loads((out / "memory_map.json").read_text())["loadable"] is False


def test_the_host_side_needs_no_amaranth():
    code = ("import sys, firmware.driver, firmware.images; "
            "assert not any(m.split('.')[0] in ('amaranth', 'torch', 'hw') for m in sys.modules),"
            " sorted(m for m in sys.modules if m.split('.')[0] in ('amaranth', 'torch', 'hw'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
