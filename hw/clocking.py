"""The board top's clock per FPGA family: the PLL settings, the PLL primitive and the power-on
reset that holds ``sync`` until the clock is good.

One class per family, :class:`Ice40Clock` (``SB_PLL40_PAD``, fed by the oscillator pad) and
:class:`Ecp5Clock` (``EHXPLLL``), registered in :data:`FAMILY_CLOCKS` under the family names of
:data:`hw.targets.TARGETS` (``Target.family``). A target's family picks its class; the class's
``search`` finds the PLL settings for a frequency (:func:`ice40_pll` / :func:`ecp5_pll`, as
``icepll`` / ``ecppll`` find them) and :meth:`FamilyClock.drive_sync` adds the primitive and the
power-on reset to the board top's module (``sync`` is held in reset until the PLL locks plus
:data:`POWER_ON_DELAY`: iCE40 block RAM reads zero for ~3 us after configuration).
"""

from __future__ import annotations

from amaranth import ClockDomain, ClockSignal, Const, ResetSignal, Signal
from amaranth.hdl import Instance
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer

__all__ = ["FAMILY_CLOCKS", "POWER_ON_DELAY", "Ecp5Clock", "FamilyClock", "Ice40Clock",
           "PllConfig", "board_clock", "ecp5_pll", "ice40_pll", "platform_family",
           "power_on_reset"]

#: Power-on delay after PLL lock (iCE40 block RAM reads zero for ~3 us after configuration).
POWER_ON_DELAY = 20e-6


# --------------------------------------------------------------------------------------------
# PLL parameters
# --------------------------------------------------------------------------------------------

class PllConfig(dict):
    """Primitive parameters plus ``f_in``/``f_out`` (Hz) and ``family``."""

    @property
    def f_out(self) -> float:
        return self["f_out"]


def ice40_pll(f_in: float, f_out: float, tolerance: float = 0.005) -> PllConfig:
    """``SB_PLL40_*`` parameters (SIMPLE feedback) for ``f_in -> f_out``, as ``icepll`` finds them.

    PFD 10..133 MHz, VCO 533..1066 MHz, output 16..275 MHz. Raises :class:`ValueError` when no
    setting comes within ``tolerance`` (relative) of ``f_out``.
    """
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                out = f_vco / 2 ** divq
                if not 16e6 <= out <= 275e6:
                    continue
                err = abs(out - f_out)
                if best is None or err < best[0] - 1e-3:
                    best = (err, divr, divf, divq, f_pfd, out)
    if best is None or best[0] > tolerance * f_out:
        raise ValueError(f"The iCE40 PLL cannot make {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz "
                         f"(outputs 16..275 MHz)")
    _, divr, divf, divq, f_pfd, out = best
    filter_range = next(i for i, top in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, 1e12), 1)
                        if f_pfd < top)
    return PllConfig(family="ice40", DIVR=divr, DIVF=divf, DIVQ=divq, FILTER_RANGE=filter_range,
                     f_in=f_in, f_out=out)


def ecp5_pll(f_in: float, f_out: float, tolerance: float = 0.005) -> PllConfig:
    """``EHXPLLL`` parameters (CLKOP feedback) for ``f_in -> f_out``, as ``ecppll`` finds them.

    PFD 3.125..400 MHz, VCO 400..800 MHz. Raises :class:`ValueError` when no setting comes within
    ``tolerance`` of ``f_out``.
    """
    best = None
    for clki_div in range(1, 129):
        f_pfd = f_in / clki_div
        if not 3.125e6 <= f_pfd <= 400e6:
            continue
        for clkfb_div in range(1, 81):
            out = f_pfd * clkfb_div
            for clkop_div in range(1, 129):
                f_vco = out * clkop_div
                if not 400e6 <= f_vco <= 800e6:
                    continue
                # prefer the smallest error, then a VCO near the middle of its range
                key = (round(abs(out - f_out)), abs(f_vco - 600e6))
                if best is None or key < best[0]:
                    best = (key, clki_div, clkfb_div, clkop_div, out)
    if best is None or best[0][0] > tolerance * f_out:
        raise ValueError(f"The ECP5 PLL cannot make {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz")
    _, clki_div, clkfb_div, clkop_div, out = best
    return PllConfig(family="ecp5", CLKI_DIV=clki_div, CLKFB_DIV=clkfb_div, CLKOP_DIV=clkop_div,
                     f_in=f_in, f_out=out)


# --------------------------------------------------------------------------------------------
# The clock of a family: PLL primitive + power-on reset
# --------------------------------------------------------------------------------------------

def power_on_reset(m, clk, lock, clk_hz) -> None:
    """``sync`` runs on ``clk`` and is held in reset until ``lock`` has been high for
    :data:`POWER_ON_DELAY` (counted in a local reset-less ``por`` domain on the same clock)."""
    m.domains.por = ClockDomain(reset_less=True, local=True)
    m.domains.sync = ClockDomain()
    m.d.comb += [ClockSignal("por").eq(clk), ClockSignal("sync").eq(clk)]
    locked = Signal()
    m.submodules.lock_sync = FFSynchronizer(lock, locked, o_domain="por")
    delay = max(2, int(POWER_ON_DELAY * clk_hz))
    timer = Signal(range(delay + 1))
    ready = Signal()
    with m.If(~locked):
        m.d.por += [timer.eq(0), ready.eq(0)]
    with m.Elif(timer == delay):
        m.d.por += ready.eq(1)
    with m.Else():
        m.d.por += timer.eq(timer + 1)
    m.d.comb += ResetSignal("sync").eq(~ready)


class FamilyClock:
    """``sync`` from a family's PLL at ``pll.f_out`` (= ``clk_hz``), fed by the board oscillator.

    A subclass names its ``family`` (as in :data:`hw.targets.TARGETS`), the ``device_prefix``
    an Amaranth platform's ``device`` starts with for that family, its PLL ``search``
    (``f_in, f_out -> PllConfig``) and adds its primitive in :meth:`add_pll`.
    """

    family: str
    device_prefix: str

    def __init__(self, pll: PllConfig, clk_hz: float):
        self.pll, self.clk_hz = pll, clk_hz

    @staticmethod
    def search(f_in: float, f_out: float) -> PllConfig:
        raise NotImplementedError

    def add_pll(self, m, platform, clk_out, lock) -> None:
        """Add the PLL primitive, fed by the platform's oscillator, driving ``clk_out``/``lock``."""
        raise NotImplementedError

    def drive_sync(self, m, platform) -> None:
        """Drive ``sync`` from the PLL, held in reset until lock + power-on delay."""
        clk_out, lock = Signal(name="pll_clk"), Signal(name="pll_lock")
        self.add_pll(m, platform, clk_out, lock)
        # no explicit constraint on the PLL output: nextpnr derives it from the pad's constraint
        # and the PLL parameters ("Derived frequency constraint of 24.0 MHz for net ...")
        power_on_reset(m, clk_out, lock, self.clk_hz)


class Ice40Clock(FamilyClock):
    """iCE40: ``SB_PLL40_PAD`` fed directly by the oscillator pad (SIMPLE feedback)."""

    family = "ice40"
    device_prefix = "iCE40"
    search = staticmethod(ice40_pll)

    def add_pll(self, m, platform, clk_out, lock) -> None:
        pll = self.pll
        pad = platform.request(platform.default_clk, 0, dir="-")
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE",
            p_DIVR=Const(pll["DIVR"], 4), p_DIVF=Const(pll["DIVF"], 7),
            p_DIVQ=Const(pll["DIVQ"], 3), p_FILTER_RANGE=Const(pll["FILTER_RANGE"], 3),
            i_PACKAGEPIN=pad.io, i_RESETB=Const(1), i_BYPASS=Const(0),
            o_PLLOUTGLOBAL=clk_out, o_LOCK=lock)


class Ecp5Clock(FamilyClock):
    """ECP5: ``EHXPLLL`` (CLKOP feedback) behind an input buffer on the oscillator pad."""

    family = "ecp5"
    device_prefix = "LFE5"
    search = staticmethod(ecp5_pll)

    def add_pll(self, m, platform, clk_out, lock) -> None:
        pll = self.pll
        m.submodules.clk_buffer = clk_buffer = io.Buffer(
            "i", platform.request(platform.default_clk, 0, dir="-"))
        clk_in = clk_buffer.i
        m.submodules.pll = Instance(
            "EHXPLLL",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKI_DIV=pll["CLKI_DIV"], p_CLKFB_DIV=pll["CLKFB_DIV"],
            p_CLKOP_DIV=pll["CLKOP_DIV"], p_CLKOP_ENABLE="ENABLED",
            p_CLKOP_CPHASE=pll["CLKOP_DIV"] // 2, p_CLKOP_FPHASE=0,   # as ecppll sets it
            p_FEEDBK_PATH="CLKOP",
            i_CLKI=clk_in, i_CLKFB=clk_out, i_RST=Const(0), i_STDBY=Const(0),
            i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1),
            i_PHASESTEP=Const(1), i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0),
            i_ENCLKOP=Const(0),
            o_CLKOP=clk_out, o_LOCK=lock,
            a_FREQUENCY_PIN_CLKI=f"{pll['f_in'] / 1e6:g}",
            a_FREQUENCY_PIN_CLKOP=f"{pll['f_out'] / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2")


#: The clock class of each ``Target.family`` (hw.targets).
FAMILY_CLOCKS: dict[str, type[FamilyClock]] = {c.family: c for c in (Ice40Clock, Ecp5Clock)}


def platform_family(platform) -> str:
    """The family of an Amaranth platform's device; :class:`ValueError` when no class has one."""
    device = str(getattr(platform, "device", ""))
    for family, clock in FAMILY_CLOCKS.items():
        if device.startswith(clock.device_prefix):
            return family
    raise ValueError(f"No PLL support for device {device!r}; build with pll=None")


def board_clock(pll: PllConfig, clk_hz: float, platform) -> FamilyClock:
    """The clock of ``platform``'s family for ``pll``; :class:`ValueError` when ``pll`` is
    another family's."""
    family = platform_family(platform)
    if family != pll["family"]:
        raise ValueError(f"A {pll['family']} PLL configuration cannot be used on {family}")
    return FAMILY_CLOCKS[family](pll, clk_hz)
