"""The board top's clock per FPGA family (hw/clocking.py): PLL settings as icepll / ecppll find
them, and the family table the board top picks its clock from."""

import pytest

from hw.clocking import FAMILY_CLOCKS, board_clock, ecp5_pll, ice40_pll
from hw.targets import TARGETS


# --------------------------------------------------------------------------------------------
# PLL parameters (what icepll / ecppll print for these frequencies)
# --------------------------------------------------------------------------------------------

def test_ice40_pll_24_mhz_from_12():
    cfg = ice40_pll(12e6, 24e6)
    assert (cfg["DIVR"], cfg["DIVF"], cfg["DIVQ"], cfg["FILTER_RANGE"]) == (0, 63, 5, 1)
    assert cfg.f_out == 24e6


def test_ecp5_pll_50_mhz_from_25():
    cfg = ecp5_pll(25e6, 50e6)
    assert (cfg["CLKI_DIV"], cfg["CLKFB_DIV"], cfg["CLKOP_DIV"]) == (1, 2, 12)
    assert cfg.f_out == 50e6
    assert ecp5_pll(25e6, 30e6).f_out == pytest.approx(30e6)


@pytest.mark.parametrize("f_in,f_out", [(12e6, 30e6), (25e6, 40e6), (12e6, 48e6),
                                        (25e6, 33.333e6)])
def test_pll_outputs_within_half_a_percent(f_in, f_out):
    for search in (ice40_pll, ecp5_pll):
        cfg = search(f_in, f_out)
        assert abs(cfg.f_out - f_out) <= 0.005 * f_out
        if search is ice40_pll:
            vco = f_in / (cfg["DIVR"] + 1) * (cfg["DIVF"] + 1)
            assert 533e6 <= vco <= 1066e6 and cfg.f_out == vco / 2 ** cfg["DIVQ"]
        else:
            assert 400e6 <= cfg.f_out * cfg["CLKOP_DIV"] <= 800e6


def test_pll_impossible_frequencies():
    with pytest.raises(ValueError, match="iCE40 PLL cannot make 10 MHz"):
        ice40_pll(12e6, 10e6)                       # below the 16 MHz minimum
    with pytest.raises(ValueError, match="ECP5 PLL cannot make"):
        ecp5_pll(25e6, 1000e6)


# --------------------------------------------------------------------------------------------
# The family table
# --------------------------------------------------------------------------------------------

def test_every_target_family_has_a_clock():
    """A target's family picks its clock class; the class's search makes that family's PLL."""
    for target in TARGETS.values():
        clock, platform = FAMILY_CLOCKS[target.family], target.platform_class()()
        assert platform.device.startswith(clock.device_prefix)
        pll = clock.search(platform.default_clk_frequency, target.default_clock_mhz * 1e6)
        assert pll["family"] == target.family


def test_a_pll_of_another_family_is_refused():
    platform = TARGETS["ice40-up5k"].platform_class()()
    with pytest.raises(ValueError, match="A ecp5 PLL configuration cannot be used on ice40"):
        board_clock(ecp5_pll(25e6, 50e6), 50e6, platform)
    assert board_clock(ice40_pll(12e6, 24e6), 24e6, platform).family == "ice40"
