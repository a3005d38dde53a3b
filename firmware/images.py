# amaranth: UnusedElaboratable=no
# (memory_images builds an Accelerator for its memory map only)
"""Memory images: the tables a host writes into a loadable accelerator (the iCE40 board).

The iCE40 UP5K's 30 block RAMs cannot hold the default model, so its bitstream keeps the engine
entries and neuron constants in SPRAM, which a bitstream cannot initialise; the host writes them
after configuration with ``WRITE_MEM`` frames (``firmware/protocol.py``). What to write comes
from :meth:`hw.accelerator.Accelerator.memory_map`, i.e. from the same components that build the
tables, so image and hardware cannot disagree.

    tables = memory_images(load_artifact("build/artifacts/l1p.json"))
    for mem_id, address, data in write_mem_chunks(tables, max_payload=64):
        ...   # one WRITE_MEM frame each (firmware.driver.Accelerator.load does this)
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Table", "memory_images", "word_bytes", "write_mem_chunks"]

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


def memory_images(artifact) -> list[Table]:
    """The tables of ``Accelerator(artifact, loadable=True)``, by id."""
    from hw.accelerator import Accelerator
    acc = Accelerator(artifact, loadable=True)
    return [Table(t.id, t.name, t.width, tuple(t.words)) for t in acc.memory_map()]


def write_mem_chunks(tables, max_payload: int):
    """``(mem_id, address, data)`` per WRITE_MEM frame: whole words, at most ``max_payload``
    payload bytes each (the board's receiver limit: its RUN payload, the pixel count)."""
    for table in tables:
        nbytes = word_bytes(table.width)
        per_frame = (max_payload - WRITE_MEM_HEADER) // nbytes
        if per_frame < 1:
            raise ValueError(f"a {max_payload}-byte payload cannot carry one {nbytes}-byte word "
                             f"of {table.name}")
        for start in range(0, len(table.words), per_frame):
            words = table.words[start:start + per_frame]
            data = b"".join(int(w).to_bytes(nbytes, "little") for w in words)
            yield table.id, start, data
