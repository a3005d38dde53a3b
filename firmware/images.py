"""Memory images: the tables a host writes into a loadable accelerator (the iCE40 board).

The iCE40 UP5K's 30 block RAMs cannot hold the default model, so its bitstream keeps the engine
entries and neuron constants in SPRAM, which a bitstream cannot initialise; the host writes them
after configuration with ``WRITE_MEM`` frames (``firmware/protocol.py``). What to write comes
from the hardware generator as data: ``make hdl`` and ``make bitstream`` write the design's
``memory_map.json`` (from :meth:`hw.accelerator.Accelerator.memory_map`, i.e. from the same
components that build the tables, so image and hardware cannot disagree), and the host reads it
here without Amaranth:

    tables = read_memory_map("build/ice40-up5k/memory_map.json")
    for mem_id, address, data in write_mem_chunks(tables, max_payload=64):
        ...   # one WRITE_MEM frame each (firmware.driver.Accelerator.load does this)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from firmware.protocol import MAX_PAYLOAD
from model.errors import StforgeError, shown
from model.ir.files import write_json

__all__ = ["Table", "MEMORY_MAP_FORMAT", "read_memory_map", "write_memory_map", "word_bytes",
           "write_mem_chunks"]

MEMORY_MAP_FORMAT = "stforge-memory-map"

#: WRITE_MEM payload bytes before the data: memory id (u8) and word address (u32).
WRITE_MEM_HEADER = 5


class Table(NamedTuple):
    """One loaded table: its WRITE_MEM id, name, bits per word and words (address 0 first)."""
    id: int
    name: str
    width: int
    words: tuple


def word_bytes(width: int) -> int:
    """Bytes per word on the wire (little-endian, the top byte zero-padded)."""
    return (width + 7) // 8


def write_memory_map(path, tables, *, loadable: bool) -> Path:
    """Write a design's memory map: its tables by id (`loadable`: whether the host must write
    them, the iCE40 build; otherwise the bitstream holds them already)."""
    return write_json(path, {"format": MEMORY_MAP_FORMAT, "version": 1, "loadable": loadable,
                             "tables": [{"id": t.id, "name": t.name, "width": t.width,
                                         "words": [int(w) for w in t.words]} for t in tables]})


def read_memory_map(path) -> list[Table]:
    """The tables of a memory_map.json (see `write_memory_map`); a bad file is one
    StforgeError line."""
    where = shown(path)
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != MEMORY_MAP_FORMAT or data.get("version") != 1:
            raise ValueError(f"not an {MEMORY_MAP_FORMAT} (version 1) file")
        tables = [Table(int(t["id"]), str(t["name"]), int(t["width"]),
                        tuple(int(w) for w in t["words"])) for t in data["tables"]]
    except FileNotFoundError:
        raise StforgeError(f"memory map {where} does not exist (`make bitstream` writes it "
                           f"beside the bitstream)") from None
    except IsADirectoryError:
        raise StforgeError(f"memory map {where} is a folder, not a .json file") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError,
            OverflowError) as error:        # OverflowError: int() of a JSON 1e400
        reason = " ".join(str(error).split())
        raise StforgeError(f"memory map {where} is not readable ({reason})") from None
    if [t.id for t in tables] != list(range(len(tables))):
        raise StforgeError(f"memory map {where}: table ids must be 0, 1, ... in order")
    for t in tables:
        if t.width < 1 or any(w < 0 or w >> t.width for w in t.words):
            raise StforgeError(f"memory map {where}: table {shown(t.name)} holds a word wider "
                               f"than its {t.width} bits")
    return tables


def write_mem_chunks(tables, max_payload: int):
    """``(mem_id, address, data)`` per WRITE_MEM frame: whole words, at most ``max_payload``
    payload bytes each (the board's receiver limit: its RUN payload, the pixel count).

    A ValueError, before the first frame, when a table is not a :class:`Table` that WRITE_MEM
    can carry (an id in 0..255, a width of at least 1 bit, words that fit it) or a word does not
    fit ``max_payload`` with the frame's header."""
    if isinstance(max_payload, bool) or not isinstance(max_payload, int) or \
            not WRITE_MEM_HEADER < max_payload <= MAX_PAYLOAD:
        raise ValueError(f"Maximum payload must be an integer in {WRITE_MEM_HEADER + 1}.."
                         f"{MAX_PAYLOAD}, not {max_payload!r}")
    tables = _checked_tables(tables)
    for table in tables:
        nbytes = word_bytes(table.width)
        per_frame = (max_payload - WRITE_MEM_HEADER) // nbytes
        if per_frame < 1:
            raise ValueError(f"a {max_payload}-byte payload cannot carry one {nbytes}-byte word "
                             f"of {table.name}")
    for table in tables:
        nbytes = word_bytes(table.width)
        per_frame = (max_payload - WRITE_MEM_HEADER) // nbytes
        for start in range(0, len(table.words), per_frame):
            words = table.words[start:start + per_frame]
            data = b"".join(int(w).to_bytes(nbytes, "little") for w in words)
            yield table.id, start, data


def _checked_tables(tables):
    """``tables`` as a list of :class:`Table`, or a ValueError naming the first that is not
    one WRITE_MEM can carry."""
    def is_int(value):          # int or a NumPy integer, not bool
        return not isinstance(value, bool) and hasattr(value, "__index__")

    if isinstance(tables, (str, bytes)) or not hasattr(tables, "__iter__"):
        raise ValueError(f"Tables must be a sequence of Table, not {type(tables).__name__}")
    checked = []
    for table in tables:
        if not isinstance(table, Table):
            raise ValueError(f"Tables must be a sequence of Table, not one of "
                             f"{type(table).__name__}")
        if not (is_int(table.id) and 0 <= table.id <= 0xFF and is_int(table.width) and
                table.width >= 1 and isinstance(table.words, (tuple, list))):
            raise ValueError(f"Table {shown(table.name)} needs an id in 0..255, a width of at "
                             f"least 1 bit and a sequence of words")
        if not all(is_int(w) and 0 <= w and not int(w) >> table.width for w in table.words):
            raise ValueError(f"Table {shown(table.name)} holds a word that is not an integer "
                             f"of {table.width} bits")
        checked.append(table)
    return checked
