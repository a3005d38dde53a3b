"""Tests for hw/uart.py: 8N1 transmitter and receiver in amaranth.sim.

A naive line model (`line_bits`) stands beside the gateware: the transmitter's waveform is checked
against it, and the receiver is driven by it, including with skewed bit periods, glitches, bad
stop bits and a held-low line.
"""

from amaranth.hdl import Module
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest

from hw.uart import MIN_DIVISOR, UARTRx, UARTTx, uart_divisor

pytestmark = [
    pytest.mark.amaranth,
    # Constructors that reject their parameters leave an unused Elaboratable behind.
    pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable"),
]


def line_bits(byte, stop=1):
    """The 8N1 line levels of one byte: start, 8 data bits LSB first, stop."""
    return [0] + [(byte >> index) & 1 for index in range(8)] + [stop]


def run(dut, *testbenches):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    sim.run()


async def drive_line(ctx, rx, levels, cycles_per_bit):
    for level in levels:
        ctx.set(rx, level)
        await ctx.tick().repeat(cycles_per_bit)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("divisor", [MIN_DIVISOR - 1, 0, -8, 4.0, True, "16"])
def test_divisor_is_validated(divisor):
    for component in (UARTTx, UARTRx):
        with pytest.raises(ValueError, match="divisor"):
            component(divisor)


def test_uart_divisor_rounds_and_checks_the_rate_error():
    assert uart_divisor(12_000_000, 115_200) == 104
    assert uart_divisor(25e6, 1_000_000) == 25
    with pytest.raises(ValueError, match="off by"):
        uart_divisor(1_000_000, 230_400)  # 4.34 cycles per bit -> 4 is 8.5 % fast
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(1_000_000, 500_000)
    with pytest.raises(ValueError, match="positive"):
        uart_divisor(0, 9600)


# --------------------------------------------------------------------------------------------
# Transmitter
# --------------------------------------------------------------------------------------------


def test_tx_waveform_matches_the_line_model():
    divisor = 6
    dut = UARTTx(divisor)
    data = [0x00, 0xFF, 0xA5, 0x3C]
    expected = [level for byte in data for level in line_bits(byte)]
    trace = []

    async def producer(ctx):
        for byte in data:
            ctx.set(dut.i.payload, byte)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def monitor(ctx):
        assert ctx.get(dut.tx) == 1
        # Wait for the first start bit, then sample every bit in its middle.
        await ctx.tick().until(dut.tx == 0)
        await ctx.tick().repeat(divisor // 2)
        for index in range(len(expected)):
            trace.append(ctx.get(dut.tx))
            if index % 10 == 9:
                # Stop bit: back-to-back bytes may stretch it by a cycle; resync on the start.
                if index + 1 < len(expected):
                    await ctx.tick().until(dut.tx == 0)
                    await ctx.tick().repeat(divisor // 2)
            else:
                await ctx.tick().repeat(divisor)

    run(dut, producer, monitor)
    assert trace == expected


def test_tx_idles_high_and_holds_each_bit_divisor_cycles():
    divisor = 5
    dut = UARTTx(divisor)
    levels = []

    async def bench(ctx):
        await ctx.tick().repeat(3)
        assert ctx.get(dut.tx) == 1 and ctx.get(dut.i.ready) == 1
        ctx.set(dut.i.payload, 0b0101_0011)
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(12 * divisor):
            await ctx.tick()
            levels.append(ctx.get(dut.tx))

    run(dut, bench)
    # Run-length encode and compare with the model, bit for bit.
    bits = line_bits(0b0101_0011)
    expected = [level for level in bits for _ in range(divisor)]
    start = levels.index(0)
    assert levels[start:start + len(expected)] == expected
    assert all(level == 1 for level in levels[start + len(expected):])


# --------------------------------------------------------------------------------------------
# Receiver
# --------------------------------------------------------------------------------------------


def receive(divisor, levels_per_bit, line, *, ready=True):
    """Drive `line` (a list of levels, one per bit period of `levels_per_bit` cycles) into an
    UARTRx; return (bytes received, framing errors seen, overruns seen)."""
    dut = UARTRx(divisor)
    received, framing, overrun = [], [], []

    async def driver(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * divisor)
        await drive_line(ctx, dut.rx, line, levels_per_bit)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * divisor)

    async def monitor(ctx):
        ctx.set(dut.o.ready, int(ready))
        async for _, _, valid, payload, f_err, ovr in ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.framing_error, dut.overrun):
            if valid and ready:
                received.append(payload)
            if f_err:
                framing.append(1)
            if ovr:
                overrun.append(1)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return received, len(framing), len(overrun)


def test_rx_receives_bytes():
    data = [0x55, 0x00, 0xFF, 0xA5, 0x01, 0x80]
    line = [level for byte in data for level in line_bits(byte)]
    assert receive(8, 8, line) == (data, 0, 0)


@pytest.mark.parametrize("sender_cycles_per_bit", [31, 33])
def test_rx_samples_mid_bit_so_a_3_percent_rate_error_is_tolerated(sender_cycles_per_bit):
    data = [0x96, 0x69, 0xF0]
    line = [level for byte in data for level in line_bits(byte)]
    assert receive(32, sender_cycles_per_bit, line) == (data, 0, 0)


def test_rx_ignores_a_glitch_shorter_than_half_a_bit():
    divisor = 16
    dut = UARTRx(divisor)
    received = []

    async def driver(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(40)
        ctx.set(dut.rx, 0)  # a 4-cycle glitch
        await ctx.tick().repeat(4)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(40)
        await drive_line(ctx, dut.rx, line_bits(0x42), divisor)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * divisor)

    async def monitor(ctx):
        ctx.set(dut.o.ready, 1)
        async for _, _, valid, payload, f_err in ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.framing_error):
            assert not f_err
            if valid:
                received.append(payload)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(monitor, background=True)
    sim.run()
    assert received == [0x42]


def test_rx_flags_a_bad_stop_bit_and_drops_the_byte():
    line = line_bits(0x12) + line_bits(0x34, stop=0) + [1, 1] + line_bits(0x56)
    assert receive(8, 8, line) == ([0x12, 0x56], 1, 0)


def test_rx_reports_a_held_low_line_once_then_recovers():
    line = [0] * 25 + [1, 1] + line_bits(0x5A)
    assert receive(8, 8, line) == ([0x5A], 1, 0)


def test_rx_overrun_keeps_the_newest_byte():
    data = [0x11, 0x22, 0x33]
    line = [level for byte in data for level in line_bits(byte)]
    dut = UARTRx(8)
    overruns = []

    async def driver(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(24)
        await drive_line(ctx, dut.rx, line, 8)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(24)
        assert ctx.get(dut.o.valid) == 1
        assert ctx.get(dut.o.payload) == 0x33
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        ctx.set(dut.o.ready, 0)
        await ctx.tick()
        assert ctx.get(dut.o.valid) == 0

    async def monitor(ctx):
        async for _, _, ovr in ctx.tick().sample(dut.overrun):
            if ovr:
                overruns.append(1)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(monitor, background=True)
    sim.run()
    assert len(overruns) == 2


# --------------------------------------------------------------------------------------------
# Loopback
# --------------------------------------------------------------------------------------------


def loopback(divisor, data):
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    received, framing = [], []

    async def producer(ctx):
        for byte in data:
            ctx.set(tx.i.payload, byte)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
        ctx.set(tx.i.valid, 0)
        await ctx.tick().until(~tx.busy)
        await ctx.tick().repeat(4 * divisor)

    async def consumer(ctx):
        ctx.set(rx.o.ready, 1)
        async for _, _, valid, payload, f_err in ctx.tick().sample(
                rx.o.valid, rx.o.payload, rx.framing_error):
            if valid:
                received.append(payload)
            if f_err:
                framing.append(1)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer, background=True)
    sim.run()
    return received, framing


def test_loopback_back_to_back_bytes():
    data = list(range(0, 256, 17)) + [0x00, 0xFF]
    assert loopback(MIN_DIVISOR, data) == (data, [])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.integers(0, 255), min_size=1, max_size=12),
       divisor=st.integers(MIN_DIVISOR, 9))
def test_loopback_random_bytes(data, divisor):
    assert loopback(divisor, data) == (data, [])
