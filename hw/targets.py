"""The FPGA targets: one table of every fact about each board and its device.

Synthesis (hw.synth), the board top's clocking (hw.clocking), the benchmarks' energy estimates and
the sweep all read :data:`TARGETS`; nothing else states a target's device, board, default clock,
PLL family or power figure.
"""

from __future__ import annotations

import dataclasses
import importlib

from hw.components import LOADED_PREFIX
from model.errors import StforgeError

__all__ = ["Target", "TARGETS", "TargetError", "get_target"]


class TargetError(StforgeError, ValueError):
    """An unknown target name."""


@dataclasses.dataclass(frozen=True, eq=False)
class Target:
    """A board and its FPGA: everything stforge knows about it, in one place.

    ``limits`` and ``resource_names`` are keyed by the report keys (``lut``, ``ff``, ``bram``,
    ``spram``, ``dsp``); a limit of 0 means the device has none of that resource.
    """

    name: str
    board: str
    device: str
    family: str
    platform: str  # "module:Class" of the amaranth-boards platform
    limits: dict
    resource_names: dict
    synth_command: str
    synth_opts: str
    script_after_read: str     # Yosys commands between reading the design and synthesis
    loadable: bool             # the accelerator's tables are loaded, not ROMs (SPRAM on iCE40)
    pnr_tool: str
    pack_tool: str
    bitstream_suffix: str
    default_clock_mhz: float   # the board top's PLL clock unless asked otherwise
    power_w: float             # assumed device power for energy estimates (bench)
    power_note: str            # where that figure comes from: an estimate, not a measurement

    def platform_class(self):
        module, _, cls = self.platform.partition(":")
        return getattr(importlib.import_module(module), cls)

    @property
    def tools(self):
        return ("yosys", self.pnr_tool, self.pack_tool)


# Tables written by a loader (hw.components.LOADED_PREFIX) have no initial contents: drop the
# all-zero init Amaranth gives every memory and ask for SPRAM (single port, 16 bits x 16 K),
# which cannot be initialised by the bitstream. Names match before and after flattening.
_SPRAM_SCRIPT = (f"delete t:$meminit_v2 r:MEMID=*{LOADED_PREFIX}* %i\n"
                 f"setattr -set ram_style \"huge\" m:*{LOADED_PREFIX}*")

TARGETS = {
    "ice40-up5k": Target(
        name="ice40-up5k",
        board="icebreaker",
        device="iCE40 UP5K",
        family="ice40",
        platform="amaranth_boards.icebreaker:ICEBreakerPlatform",
        limits={"lut": 5280, "ff": 5280, "bram": 30, "spram": 4, "dsp": 8},
        resource_names={"lut": "LC", "ff": "FF", "bram": "EBR (4 Kbit)", "spram": "SPRAM",
                        "dsp": "DSP (SB_MAC16)"},
        synth_command="synth_ice40 -dsp -spram",
        synth_opts="-dsp -spram",
        script_after_read=_SPRAM_SCRIPT,
        loadable=True,      # 30 EBR cannot hold the default model's tables; 4 SPRAMs can
        pnr_tool="nextpnr-ice40",
        pack_tool="icepack",
        bitstream_suffix=".bin",
        default_clock_mhz=24.0,
        power_w=0.010,
        power_note="assumed 10 mW: iCE40 UltraPlus is marketed as a few-mW device (static "
                   "~75 uA core); order-of-magnitude assumption for a nearly full UP5K at "
                   "~25-30 MHz, not measured",
    ),
    "ecp5-85f": Target(
        name="ecp5-85f",
        board="ulx3s-85f",
        device="ECP5 LFE5U-85F",
        family="ecp5",
        platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
        limits={"lut": 83640, "ff": 83640, "bram": 208, "spram": 0, "dsp": 156},
        resource_names={"lut": "LUT4", "ff": "FF", "bram": "DP16KD (18 Kbit)", "spram": "SPRAM",
                        "dsp": "MULT18X18D"},
        synth_command="synth_ecp5",
        synth_opts="",
        script_after_read="",
        loadable=False,
        pnr_tool="nextpnr-ecp5",
        pack_tool="ecppack",
        bitstream_suffix=".bit",
        default_clock_mhz=50.0,
        power_w=0.25,
        power_note="assumed 0.25 W: order of magnitude of Lattice Power Calculator figures for "
                   "a ~13k-LUT LFE5U-85F design at ~30 MHz (static ~0.1 W + dynamic); not "
                   "measured on the ULX3S",
    ),
}

def get_target(target):
    """The :class:`Target` called ``target`` (a name or a Target)."""
    if isinstance(target, Target):
        return target
    try:
        return TARGETS[target]
    except (KeyError, TypeError):
        raise TargetError(f"Unknown target {target!r}; known targets: "
                          f"{', '.join(sorted(TARGETS))}") from None
