"""Tests for hw/link.py against firmware/protocol.py, in amaranth.sim.

Every test builds its byte sequences with `firmware.protocol.encode_frame` and checks the gateware
against `firmware.protocol.FrameDecoder` fed the same bytes: the receiver's event stream, grouped
into frames and errors, must equal the decoder's output exactly, and the sender's bytes must equal
the encoder's.
"""

import random

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest

from firmware.protocol import (
    CRC16_INIT,
    SYNC,
    Command,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameError,
    Result,
    crc16,
    encode_frame,
    pack_error,
    pack_result,
    pack_run,
    pack_write_mem,
)
from hw.link import FrameEventKind, FrameReceiver, FrameSender, frame_crc
from hw.uart import UARTRx, UARTTx

pytestmark = [
    pytest.mark.amaranth,
    # Constructors that reject their parameters leave an unused Elaboratable behind.
    pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable"),
]

TIMEOUT = 40  # receiver inter-byte timeout (cycles) for the stream-level tests
GAP = ("gap", 3 * TIMEOUT)  # a pause that times out an open frame
SHORT_GAP = ("gap", TIMEOUT // 2)  # a pause that does not


# --------------------------------------------------------------------------------------------
# Helpers: a byte driver, an event collector, and the reference built from FrameDecoder
# --------------------------------------------------------------------------------------------


async def drive_bytes(ctx, stream, items):
    """Offer each byte on `stream` (payload/valid/ready); ("gap", n) idles n cycles."""
    for item in items:
        if isinstance(item, tuple):
            ctx.set(stream.valid, 0)
            await ctx.tick().repeat(item[1])
            continue
        ctx.set(stream.payload, item)
        ctx.set(stream.valid, 1)
        await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


def collector(stream, sink, *, ready_probability=1.0, seed=0):
    """A background testbench appending every transferred payload to `sink`."""
    rng = random.Random(seed)

    async def collect(ctx):
        while True:
            ready = rng.random() < ready_probability
            ctx.set(stream.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
            if valid and ready:
                sink.append(payload)

    return collect


def group_events(events):
    """Receiver events -> the list of Frame / FrameError the decoder would return."""
    out, command, payload = [], None, bytearray()
    for kind, data in events:
        if kind == FrameEventKind.COMMAND:
            assert command is None, "COMMAND inside an open frame"
            command, payload = data, bytearray()
        elif kind == FrameEventKind.PAYLOAD:
            assert command is not None, "PAYLOAD outside a frame"
            payload.append(data)
        elif kind == FrameEventKind.END:
            assert command is not None, "END outside a frame"
            out.append(Frame(command, bytes(payload)))
            command = None
        else:
            out.append(FrameError(ErrorCode(data)))
            command = None
    assert command is None, "frame left open"
    return out


def reference(items, *, max_payload):
    """What FrameDecoder makes of `items`; a gap of at least TIMEOUT cycles is an expiry."""
    decoder = FrameDecoder(max_payload=max_payload)
    events = []
    for item in items:
        if isinstance(item, tuple):
            assert item[1] <= TIMEOUT // 2 or item[1] >= 2 * TIMEOUT, "ambiguous gap"
            if item[1] >= TIMEOUT:
                events += decoder.expire()
        else:
            events += decoder.feed(bytes([item]))
    return events


def receive(items, *, max_payload=64, ready_probability=1.0, seed=0):
    """Feed `items` to a FrameReceiver; return its events grouped into frames and errors."""
    dut = FrameReceiver(timeout_cycles=TIMEOUT, max_payload=max_payload)
    raw = []

    async def driver(ctx):
        await drive_bytes(ctx, dut.i, list(items) + [GAP])
        await ctx.tick().repeat(20)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(collector(dut.o, raw, ready_probability=ready_probability, seed=seed),
                      background=True)
    sim.run()
    return group_events([(FrameEventKind(event.kind), event.data) for event in raw])


def check_receiver(items, *, max_payload=64, ready_probability=1.0, seed=0):
    got = receive(items, max_payload=max_payload, ready_probability=ready_probability, seed=seed)
    expected = reference(list(items) + [GAP], max_payload=max_payload)
    assert got == expected
    return got


def frame_items(command, payload=b""):
    return list(encode_frame(command, payload))


# --------------------------------------------------------------------------------------------
# CRC
# --------------------------------------------------------------------------------------------


def test_frame_crc_matches_the_protocol_crc():
    """The gateware's CRC (amaranth.lib.crc) and the host's (binascii.crc_hqx) agree: the check
    value of CRC-16/CCITT-FALSE, every single byte, and random messages fed byte by byte."""
    assert crc16(b"123456789") == 0x29B1
    rng = random.Random(1)
    messages = [b"123456789"] + [bytes([v]) for v in range(256)] + \
        [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(20)]
    dut = frame_crc()

    async def bench(ctx):
        for message in messages:
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for value in message:
                ctx.set(dut.data, value)
                ctx.set(dut.valid, 1)
                await ctx.tick()
            ctx.set(dut.valid, 0)
            assert ctx.get(dut.crc) == crc16(message), message

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# --------------------------------------------------------------------------------------------
# FrameReceiver
# --------------------------------------------------------------------------------------------


def test_receiver_accepts_every_command_and_skips_garbage():
    items = (
        [0x00, 0x13, 0xFF]
        + frame_items(Command.PING)
        + frame_items(Command.WRITE_MEM, pack_write_mem(2, 0x1234, bytes(range(20))))
        + [SHORT_GAP, 0x42]
        + frame_items(Command.RUN, pack_run([0, 255, SYNC, 7]))
        + frame_items(Command.READ_RESULT)
        + frame_items(0x7E, b"\xa5")
    )
    got = check_receiver(items)
    assert [frame.command for frame in got] == [
        Command.PING, Command.WRITE_MEM, Command.RUN, Command.READ_RESULT, 0x7E]


def test_receiver_payload_longer_than_255_bytes():
    payload = bytes(random.Random(3).randrange(256) for _ in range(300))
    got = check_receiver(frame_items(Command.RUN, payload), max_payload=300)
    assert got == [Frame(Command.RUN, payload)]


@pytest.mark.parametrize("corrupt_index", [1, 4, 5, 6, 7])
def test_receiver_bad_crc_then_recovers(corrupt_index):
    # Bytes: SYNC, command, length lo/hi, 2 payload, CRC lo/hi; corrupt lengths are below.
    frame = frame_items(Command.RUN, b"\x01\x02")
    frame[corrupt_index] ^= 0x10
    items = frame + [SHORT_GAP] + frame_items(Command.PING)
    assert check_receiver(items, max_payload=300) == [
        FrameError(ErrorCode.BAD_CRC), Frame(Command.PING)]


def test_receiver_length_corruption_is_caught_by_the_timeout():
    frame = frame_items(Command.RUN, b"\x01\x02")
    frame[2] = 40  # the frame now claims 40 bytes and swallows what follows
    items = frame + frame_items(Command.PING) + [GAP] + frame_items(Command.PING)
    assert check_receiver(items) == [FrameError(ErrorCode.TIMEOUT), Frame(Command.PING)]


def test_receiver_rejects_over_long_frames_at_once():
    items = frame_items(Command.WRITE_MEM, bytes(17)) + frame_items(Command.PING)
    assert check_receiver(items, max_payload=16) == [
        FrameError(ErrorCode.BAD_LENGTH), Frame(Command.PING)]


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 6, 8, 9])
def test_receiver_truncated_frame_times_out_then_recovers(cut):
    truncated = frame_items(Command.RUN, b"\x10\x20\x30\x40")[:cut]
    items = truncated + [GAP] + frame_items(Command.PING)
    assert check_receiver(items) == [FrameError(ErrorCode.TIMEOUT), Frame(Command.PING)]


def test_receiver_no_timeout_while_hunting_or_on_short_pauses():
    frame = frame_items(Command.RUN, b"\x01\x02\x03")
    items = [GAP, GAP] + [byte for b in frame for byte in (b, SHORT_GAP)] + [GAP]
    assert check_receiver(items) == [Frame(Command.RUN, b"\x01\x02\x03")]


def test_receiver_under_back_pressure():
    items = (frame_items(Command.WRITE_MEM, bytes(range(30))) + frame_items(Command.PING)
             + frame_items(Command.RUN, bytes(5))[:-1] + [0x00] + frame_items(Command.PING))
    for seed in range(3):
        check_receiver(items, ready_probability=0.4, seed=seed)


def test_receiver_long_back_pressure_is_not_a_timeout():
    dut = FrameReceiver(timeout_cycles=TIMEOUT, max_payload=64)
    raw = []
    payload = bytes(range(6))

    async def driver(ctx):
        await drive_bytes(ctx, dut.i, frame_items(Command.RUN, payload))
        for _ in range(100 * TIMEOUT):  # until the verdict is out (it is last)
            await ctx.tick()
            if raw and raw[-1].kind != FrameEventKind.PAYLOAD:
                break

    async def stalling_consumer(ctx):
        while True:
            ctx.set(dut.o.ready, 0)
            for _ in range(3 * TIMEOUT):  # the pending byte waits: that is not silence
                await ctx.tick()
            ctx.set(dut.o.ready, 1)
            _, _, valid, event = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid:
                raw.append(event)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(stalling_consumer, background=True)
    sim.run()
    events = [(FrameEventKind(event.kind), event.data) for event in raw]
    assert group_events(events) == [Frame(Command.RUN, payload)]


def _segments():
    payloads = st.binary(min_size=0, max_size=24)
    good = st.builds(lambda cmd, p: frame_items(cmd, p), st.integers(0, 255), payloads)

    def corrupt(frame, index, bit):
        frame = list(frame)
        frame[index % len(frame)] ^= 1 << bit
        return frame

    bad = st.builds(corrupt, good, st.integers(0, 1000), st.integers(0, 7))
    truncated = st.builds(lambda frame, n: frame[:1 + n % (len(frame) - 1)] + [GAP], good,
                          st.integers(0, 1000))
    garbage = st.lists(st.integers(0, 255), min_size=1, max_size=4)
    return st.lists(st.one_of(good, bad, truncated, garbage), min_size=1, max_size=6)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=_segments(), seed=st.integers(0, 2**16))
def test_receiver_agrees_with_decoder_on_random_streams(segments, seed):
    items = [item for segment in segments for item in segment]
    check_receiver(items, max_payload=24, ready_probability=0.7, seed=seed)


def test_receiver_parameters_are_validated():
    with pytest.raises(ValueError, match="Timeout"):
        FrameReceiver(timeout_cycles=0)
    with pytest.raises(ValueError, match="Maximum payload"):
        FrameReceiver(timeout_cycles=10, max_payload=70000)


# --------------------------------------------------------------------------------------------
# FrameSender
# --------------------------------------------------------------------------------------------


def send(replies, *, ready_probability=1.0, seed=0):
    """Push (command, payload) replies through a FrameSender; return the bytes it emits."""
    dut = FrameSender()
    out = []

    async def driver(ctx):
        for command, payload in replies:
            ctx.set(dut.header.p.command, command)
            ctx.set(dut.header.p.length, len(payload))
            ctx.set(dut.header.valid, 1)
            await ctx.tick().until(dut.header.ready)
            ctx.set(dut.header.valid, 0)
            await drive_bytes(ctx, dut.payload, payload)
        await ctx.tick().until(~dut.busy)
        await ctx.tick().repeat(4)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(collector(dut.o, out, ready_probability=ready_probability, seed=seed),
                      background=True)
    sim.run()
    return bytes(out)


def test_sender_matches_encode_frame():
    replies = [
        (Command.OK, bytes([1])),
        (Command.OK, b""),
        (Command.ERROR, pack_error(ErrorCode.BAD_CRC)),
        (Command.OK, pack_result(Result(logits=(-5, 1000, 2**31 - 1, -2**31), predicted=2,
                                        cycles=123456))),
    ]
    assert send(replies) == b"".join(encode_frame(c, p) for c, p in replies)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), min_size=1,
                        max_size=3),
       seed=st.integers(0, 2**16))
def test_sender_matches_encode_frame_random(replies, seed):
    assert send(replies, ready_probability=0.6, seed=seed) == \
        b"".join(encode_frame(c, p) for c, p in replies)


# --------------------------------------------------------------------------------------------
# Over the wire: UART in both directions
# --------------------------------------------------------------------------------------------


def test_frames_over_uart_into_the_receiver():
    divisor = 4
    byte_cycles = 10 * divisor
    m = Module()
    m.submodules.host_tx = host_tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.submodules.receiver = receiver = FrameReceiver(timeout_cycles=3 * byte_cycles,
                                                     max_payload=64)
    m.d.comb += rx.rx.eq(host_tx.tx)
    m.d.comb += [
        receiver.i.payload.eq(rx.o.payload),
        receiver.i.valid.eq(rx.o.valid),
        rx.o.ready.eq(receiver.i.ready),
    ]
    good = frame_items(Command.WRITE_MEM, pack_write_mem(1, 7, b"\xde\xad\xbe\xef"))
    bad = list(good)
    bad[-3] ^= 0x01
    truncated = frame_items(Command.RUN, bytes(8))[:6]
    long_gap = ("gap", 8 * byte_cycles)
    items = good + bad + truncated + [long_gap] + frame_items(Command.PING) + [long_gap]
    raw = []

    async def host(ctx):
        await drive_bytes(ctx, host_tx.i, items)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_testbench(collector(receiver.o, raw), background=True)
    sim.run()
    got = group_events([(FrameEventKind(event.kind), event.data) for event in raw])
    decoder = FrameDecoder(max_payload=64)
    expected = (decoder.feed(bytes(good + bad + truncated)) + decoder.expire()
                + decoder.feed(encode_frame(Command.PING)))
    assert got == expected == [
        Frame(Command.WRITE_MEM, pack_write_mem(1, 7, b"\xde\xad\xbe\xef")),
        FrameError(ErrorCode.BAD_CRC), FrameError(ErrorCode.TIMEOUT), Frame(Command.PING)]


def test_sender_over_uart_decodes_on_the_host():
    divisor = 4
    m = Module()
    m.submodules.sender = sender = FrameSender()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.host_rx = host_rx = UARTRx(divisor)
    m.d.comb += [
        tx.i.payload.eq(sender.o.payload),
        tx.i.valid.eq(sender.o.valid),
        sender.o.ready.eq(tx.i.ready),
        host_rx.rx.eq(tx.tx),
    ]
    reply = pack_result(Result(logits=(3, -3), predicted=0, cycles=99))
    wire = []

    async def board(ctx):
        ctx.set(sender.header.p.command, Command.OK)
        ctx.set(sender.header.p.length, len(reply))
        ctx.set(sender.header.valid, 1)
        await ctx.tick().until(sender.header.ready)
        ctx.set(sender.header.valid, 0)
        await drive_bytes(ctx, sender.payload, reply)
        await ctx.tick().until(~sender.busy & ~tx.busy)
        await ctx.tick().repeat(4 * divisor)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(board)
    sim.add_testbench(collector(host_rx.o, wire), background=True)
    sim.run()
    assert bytes(wire) == encode_frame(Command.OK, reply)
    assert FrameDecoder().feed(bytes(wire)) == [Frame(Command.OK, reply)]
