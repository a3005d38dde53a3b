"""Simulation helpers for ``amaranth.lib.stream`` interfaces, shared by every component test.

A transfer happens at a clock edge where both ``valid`` and ``ready`` are high. The helpers are
async functions for ``Simulator.add_testbench`` benches: a producer drives ``valid``/``payload``
of a stream the design consumes, a consumer drives ``ready`` of a stream the design produces.
Called back to back, they keep a stream busy every cycle (full rate); the optional ``idle``
callables insert bubbles to exercise back-pressure.

    async def bench(ctx):
        await stream_put(ctx, dut.i, {"index": 3, "count": 1, "end": 0})
        payload = await stream_get(ctx, dut.o)

`simulate` runs such benches together: producers and consumers as separate testbenches, which is
what lets a design hold ``ready`` low while it is still emitting results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from amaranth.sim import Simulator

__all__ = ["stream_put", "stream_get", "stream_put_all", "stream_get_all", "CycleClock",
           "simulate"]


async def stream_put(ctx, stream, payload) -> None:
    """Offer `payload` on `stream` (valid high) until the design accepts it at a clock edge.

    Returns right after the edge of the transfer, with ``valid`` low again.
    """
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream):
    """Hold ``ready`` high until the design offers a payload; return the transferred payload.

    The payload is sampled at the clock edge of the transfer (for a ``StructLayout`` payload, a
    ``data.Const`` whose fields read as attributes). Returns with ``ready`` low again.
    """
    ctx.set(stream.ready, 1)
    (payload,) = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


async def stream_put_all(ctx, stream, payloads: Iterable,
                         idle: Callable[[], int] | None = None) -> None:
    """Put every payload in order; ``idle()`` (if given) idle cycles precede each transfer."""
    for payload in payloads:
        if idle is not None:
            for _ in range(idle()):
                await ctx.tick()
        await stream_put(ctx, stream, payload)


async def stream_get_all(ctx, stream, count: int,
                         idle: Callable[[], int] | None = None) -> list:
    """Get `count` payloads in order; ``idle()`` (if given) cycles of ``ready`` low before each."""
    payloads = []
    for _ in range(count):
        if idle is not None:
            for _ in range(idle()):
                await ctx.tick()
        payloads.append(await stream_get(ctx, stream))
    return payloads


class CycleClock:
    """Counts clock edges, so that testbenches can timestamp transfers.

    Pass `bench` to `simulate` as a background testbench. Background benches are added first,
    so at every edge `now` has already advanced when the other benches resume: a transfer that
    completes at the k-th edge (in the k-th cycle, counting from 1) reads ``now == k``.
    """

    def __init__(self):
        self.now = 0

    async def bench(self, ctx) -> None:
        while True:
            await ctx.tick()
            self.now += 1


def simulate(dut, *testbenches, background=(), deadline_cycles: int = 100_000,
             vcd: str | None = None) -> None:
    """Simulate `dut` with a 1 MHz ``sync`` clock until every testbench has returned.

    `background` benches (monitors, `CycleClock.bench`) run alongside without keeping the
    simulation alive. A background watchdog fails the run with AssertionError after
    `deadline_cycles` cycles, so a handshake that never completes is reported instead of
    spinning forever. `vcd` names a waveform file to write.
    """
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in background:
        sim.add_testbench(bench, background=True)
    for bench in testbenches:
        sim.add_testbench(bench)

    async def watchdog(ctx):
        for _ in range(deadline_cycles):    # plain ticks: nothing to finalise if abandoned
            await ctx.tick()
        raise AssertionError(f"simulation still running after {deadline_cycles} cycles "
                             f"(a stream handshake never completed?)")

    sim.add_testbench(watchdog, background=True)
    if vcd is None:
        sim.run()
    else:
        with sim.write_vcd(vcd):
            sim.run()
