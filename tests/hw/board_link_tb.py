"""cocotb tests of the board's link beyond ``sim/board_tb.py``'s fixed cases, run by
``tests/hw/test_board.py`` on the same Verilator build of the board top.

* ``test_link_fuzz`` — seeded random traffic (``STFORGE_BOARD_FUZZ_SEED``,
  ``STFORGE_BOARD_FUZZ_FRAMES``): valid frames, bit flips, truncations, dropped and repeated
  bytes, garbage holding SYNC bytes, wrong lengths and the maximum + 1, several of them back to
  back. Every reply is checked against :class:`BoardModel`, the board's documented answers; now
  and then a whole batch goes out at once, talking over the board's replies, and then only the
  protocol's promises are checked (every reply decodes, no more replies than SYNC bytes sent, the
  board falls silent). After every batch a PING and a READ_RESULT must be answered exactly.
* ``test_write_mem_without_payload`` — a WRITE_MEM frame with an empty payload after an accepted
  one must be refused (``BAD_ARGUMENT``, "no words") and the link must keep working.

Runs inside the simulator: imports the torch-free driver, the protocol and ``sim.board_tb``.
"""

from __future__ import annotations

import collections
import os
import random
import time

from firmware.protocol import SYNC, Command, ErrorCode, Frame, FrameDecoder, FrameError, \
    encode_frame, pack_error, pack_write_mem, unpack_result

#: Items (frames, mutated frames, garbage) per batch; the board is checked after each batch.
BATCH = 20
#: Every this many batches, one is sent in a single burst without waiting for replies.
BURST_EVERY = 4


def error_reply(code):
    return Frame(Command.ERROR, pack_error(code))


def ok_reply(payload=b""):
    return Frame(Command.OK, bytes(payload))


# --------------------------------------------------------------------------------------------
# The board's documented answers (hw/board.py, docs/BOARD.md), naively
# --------------------------------------------------------------------------------------------

class BoardModel:
    """What the board answers, frame by frame: the receiver is the protocol's own decoder (the
    rules ``hw.link.FrameReceiver`` follows), the command handler a few lines per command.

    ``answers(frame)`` returns the set of acceptable replies (``None`` in it stands for "any
    well-formed result") — more than one only where the documentation leaves the order of two
    checks open. The model knows when a run is in progress only because the fuzz, after
    starting one, reads its result before sending anything long.
    """

    def __init__(self, config, golden_results):
        self.n_pixels = config["n_pixels"]
        self.input_max = config["input_max"]
        self.classes = config["classes"]
        self.tables = config["tables"]          # None: weights in the bitstream (UNSUPPORTED)
        self.golden_results = golden_results    # RUN payload -> (logits, predicted)
        self.decoder = FrameDecoder(max_payload=self.n_pixels)
        self.running = None                     # the RUN payload in progress
        self.result = None                      # the last READ_RESULT payload, once read
        self.expected = None                    # (logits, predicted) the next result must have
        self.has_result = False

    def reset_receiver(self):
        """The board's receiver hunts again (after a burst, once it has fallen silent)."""
        self.decoder = FrameDecoder(max_payload=self.n_pixels)

    def write_fits(self, payload):
        """WRITE_MEM's checks: a known id, whole words, at least one, inside the table."""
        if len(payload) < 5:
            return False
        mem_id, address = payload[0], int.from_bytes(payload[1:5], "little")
        if mem_id >= len(self.tables):
            return False
        table = self.tables[mem_id]
        nbytes = (table["width"] + 7) // 8
        data = payload[5:]
        return (len(data) > 0 and len(data) % nbytes == 0 and
                address + len(data) // nbytes <= len(table["words"]))

    def answers(self, frame):
        command, payload = frame.command, frame.payload
        if command == Command.PING:
            return {error_reply(ErrorCode.BAD_ARGUMENT) if payload else ok_reply([1])}
        if command == Command.RUN:
            bad = len(payload) != self.n_pixels or max(payload, default=0) > self.input_max
            if bad and self.running is not None:        # which check comes first is open
                return {error_reply(ErrorCode.BAD_ARGUMENT), error_reply(ErrorCode.BUSY)}
            if bad:
                return {error_reply(ErrorCode.BAD_ARGUMENT)}
            return {error_reply(ErrorCode.BUSY) if self.running is not None else ok_reply()}
        if command == Command.READ_RESULT:
            if payload:
                return {error_reply(ErrorCode.BAD_ARGUMENT)}
            if self.running is None and not self.has_result:
                return {error_reply(ErrorCode.BUSY)}
            return {None}
        if command == Command.WRITE_MEM:
            if self.tables is None:
                return {error_reply(ErrorCode.UNSUPPORTED)}
            fits = self.write_fits(payload)
            if self.running is not None:
                return {error_reply(ErrorCode.BUSY)} if fits else \
                    {error_reply(ErrorCode.BUSY), error_reply(ErrorCode.BAD_ARGUMENT)}
            return {ok_reply() if fits else error_reply(ErrorCode.BAD_ARGUMENT)}
        return {error_reply(ErrorCode.UNKNOWN_COMMAND)}

    def check(self, frame, reply):
        """Check the board's ``reply`` to ``frame`` (a Frame or FrameError event) and update the
        state; returns an error message or None."""
        if isinstance(frame, FrameError):
            want = error_reply(frame.code)
            return None if reply == want else f"expected {want}, got {reply}"
        answers = self.answers(frame)
        if None in answers and reply.command == Command.OK:
            return self._check_result(reply.payload)
        if reply not in answers:
            return f"expected {' or '.join(sorted(map(str, answers)))}, got {reply}"
        if frame.command == Command.RUN and reply == ok_reply():
            self.running = frame.payload
            self.expected = self.golden_results.get(frame.payload)
        if frame.command == Command.WRITE_MEM and reply == ok_reply():
            self._check_written(frame.payload)
        return None

    def _check_result(self, payload):
        try:
            result = unpack_result(payload)
        except ValueError as error:
            return f"malformed result: {error}"
        if len(result.logits) != self.classes:
            return f"result with {len(result.logits)} logits, not {self.classes}"
        if self.running is not None:             # the first read of this run's result
            if self.expected is not None and \
                    (list(result.logits), result.predicted) != tuple(self.expected):
                return (f"result {list(result.logits)} class {result.predicted}, golden "
                        f"{self.expected[0]} class {self.expected[1]}")
            self.running, self.has_result, self.result = None, True, payload
            return None
        if payload != self.result:
            return f"result {payload.hex()} differs from the one read before, {self.result.hex()}"
        return None

    def _check_written(self, payload):
        """The fuzz writes only a table's own words (loaded at the start), so that results stay
        golden; anything else would make them unknown."""
        mem_id, address = payload[0], int.from_bytes(payload[1:5], "little")
        table = self.tables[mem_id]
        nbytes = (table["width"] + 7) // 8
        data = payload[5:]
        words = [int.from_bytes(data[i:i + nbytes], "little") for i in range(0, len(data), nbytes)]
        if words != table["words"][address:address + len(words)]:
            self.golden_results = {}


# --------------------------------------------------------------------------------------------
# Random traffic
# --------------------------------------------------------------------------------------------

class FrameFuzzer:
    """Random items of host traffic, each ``(kind, bytes)``, built with the protocol's encoder.

    ``images``: golden RUN payloads (valid RUNs use only these, so that their results are known).
    A WRITE_MEM the fuzz means to be accepted writes a table's own words.
    """

    KINDS = ("valid", "bit_flips", "truncated", "dropped_byte", "repeated_byte", "garbage",
             "wrong_length", "max_plus_one")

    def __init__(self, rng, config, images):
        self.rng = rng
        self.n = config["n_pixels"]
        self.input_max = config["input_max"]
        self.tables = config["tables"]
        self.images = images

    def item(self, *, runs=True):
        """One item; ``runs=False``: no RUN the board would start (for traffic sent during a
        run or in a burst, where the model could not tell when that run ends)."""
        rng = self.rng
        kind = rng.choices(self.KINDS, weights=(6, 3, 2, 1, 1, 3, 2, 1))[0]
        if kind == "garbage":
            return kind, bytes(SYNC if rng.random() < 0.2 else rng.randrange(256)
                               for _ in range(rng.randint(1, 12)))
        if kind == "max_plus_one":
            header = bytes([SYNC, rng.choice(list(Command))]) + (self.n + 1).to_bytes(2, "little")
            return kind, header + bytes(rng.randrange(256) for _ in range(rng.randint(0, 4)))
        frame = bytearray(self.frame(runs=runs))
        if kind == "bit_flips":
            for _ in range(rng.randint(1, 3)):
                frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        elif kind == "truncated":
            del frame[rng.randint(1, len(frame) - 1):]
        elif kind == "dropped_byte":
            del frame[rng.randrange(len(frame))]
        elif kind == "repeated_byte":
            at = rng.randrange(len(frame))
            frame.insert(at, frame[at])
        elif kind == "wrong_length":
            length = int.from_bytes(frame[2:4], "little")
            length = rng.choice([length + rng.choice((-2, -1, 1, 2)), self.n, self.n + 1,
                                 rng.randrange(1 << 16)])
            frame[2:4] = (length % (1 << 16)).to_bytes(2, "little")
        return kind, bytes(frame)

    def frame(self, *, runs):
        """A well-formed frame; with ``runs`` now and then a RUN the board starts (one of the
        golden images)."""
        rng = self.rng
        choice = rng.choices(("ping", "read_result", "run", "write_mem", "unknown"),
                             weights=(3, 2, 3, 3, 2))[0]
        if choice == "ping":
            payload = b"" if rng.random() < 0.7 else self.random_bytes(1, 4)
            return encode_frame(Command.PING, payload)
        if choice == "read_result":
            payload = b"" if rng.random() < 0.8 else self.random_bytes(1, 4)
            return encode_frame(Command.READ_RESULT, payload)
        if choice == "run":
            return encode_frame(Command.RUN, self.run_payload(valid=runs and rng.random() < 0.1))
        if choice == "write_mem":
            return encode_frame(Command.WRITE_MEM, self.write_mem_payload())
        command = rng.choice([0x00, 0x05, 0x7F, Command.OK, Command.ERROR, SYNC, 0xFF,
                              rng.randrange(256)])
        if command in (Command.PING, Command.RUN, Command.READ_RESULT, Command.WRITE_MEM):
            command = 0x42
        return encode_frame(command, self.random_bytes(0, rng.choice((0, 4, 16, self.n))))

    def random_bytes(self, low, high):
        return bytes(self.rng.randrange(256) for _ in range(self.rng.randint(low, high)))

    def run_payload(self, *, valid):
        rng = self.rng
        if valid:
            return rng.choice(self.images)
        pixels = [rng.randint(0, self.input_max) for _ in range(self.n)]
        if rng.random() < 0.5:
            pixels[rng.randrange(self.n)] = rng.randint(self.input_max + 1, 255)
        else:
            pixels = pixels[:rng.choice([0, 1, self.n - 1])] if rng.random() < 0.7 else \
                pixels + [0]
        return bytes(pixels)

    def write_mem_payload(self):
        """Half accepted (a table's own words, so results stay golden), half one of the refused
        shapes, an empty payload among them."""
        rng = self.rng
        if self.tables is None:
            return self.random_bytes(0, self.n)
        mem_id = rng.randrange(len(self.tables))
        table = self.tables[mem_id]
        nbytes, depth = (table["width"] + 7) // 8, len(table["words"])
        most = (self.n - 5) // nbytes
        count = rng.randint(1, most)
        address = rng.randrange(depth - count + 1)
        shape = "accepted" if rng.random() < 0.5 else rng.choice(
            ("unknown id", "partial word", "past the end", "high address", "no words", "short"))
        if shape == "short":
            return self.random_bytes(1, 4)
        if shape == "unknown id":
            mem_id = rng.randint(len(self.tables), 255)
        elif shape == "past the end":
            address = depth - count + rng.randint(1, count)
        elif shape == "high address":
            address = rng.randint(1 << 16, (1 << 32) - 1)
        data = b"".join(w.to_bytes(nbytes, "little")
                        for w in table["words"][address:address + count]) \
            if shape == "accepted" else bytes(count * nbytes)
        if shape == "partial word":
            data = data[:-1] if len(data) > 1 else data + b"\0"
        if shape == "no words":
            data = b""
        return pack_write_mem(mem_id, address, data)


# --------------------------------------------------------------------------------------------
# The fuzz (runs in the bridge thread)
# --------------------------------------------------------------------------------------------

class LinkFuzz:
    """Sends the fuzzer's traffic and checks each reply against the model. The first wrong or
    missing reply raises AssertionError naming the seed, the batch and the bytes sent."""

    def __init__(self, port, driver, config, golden, seed, frames):
        from sim.board_tb import _quiet_ns
        self.port, self.driver = port, driver
        self.seed, self.frames = seed, frames
        self.images = [driver._pixels(image) for image in golden["images"]]
        results = {pixels: ([int(v) for v in logits], int(predicted))
                   for pixels, logits, predicted in zip(self.images, golden["logits"],
                                                        golden["prediction"])}
        self.model = BoardModel(config, results)
        self.fuzzer = FrameFuzzer(random.Random(seed), config, self.images)
        self.quiet_ns = _quiet_ns(config)
        self.kinds = collections.Counter()
        self.replies = collections.Counter()
        self.where = ""
        self.sent = 0
        self.runs = 0
        self.bursts = 0

    def fail(self, message):
        raise AssertionError(f"link fuzz seed {self.seed}, {self.where}: {message}")

    # ---- one exchange at a time, the model predicting every reply
    def exchange(self, raw, event):
        """Send ``raw``, whose last byte completes ``event`` in the model; check the reply."""
        from firmware.driver import DriverError
        self.port.write(raw)
        self.port.flush()
        self.sent += len(raw)
        try:
            reply = self.driver._read_reply()
        except DriverError as error:
            self.fail(f"sent {raw.hex()} ({event}): {error}")
        was_running = self.model.running
        message = self.model.check(event, reply)
        if message:
            self.fail(f"sent {raw.hex()} ({event}): {message}")
        self.replies[str(reply) if reply.command == Command.ERROR or len(reply.payload) < 2
                     else "OK(result)"] += 1
        if was_running is None and self.model.running is not None:
            self.while_running()

    def expect_silence(self, raw):
        self.port.write(raw)
        self.port.flush()
        self.sent += len(raw)
        saved, self.port.timeout_ns = self.port.timeout_ns, self.quiet_ns
        try:
            extra = self.port.read(1)
        finally:
            self.port.timeout_ns = saved
        if extra:
            self.fail(f"sent {bytes(raw).hex()}: a reply began ({extra.hex()}...) where the "
                      f"decoder sees no frame")

    def send(self, chunk):
        """Send ``chunk`` as a polite host does: up to each byte that completes a frame (or gets
        it dropped), then wait for the board's reply; a frame left open must time out."""
        piece = bytearray()
        for byte in chunk:
            piece.append(byte)
            for event in self.model.decoder.feed(bytes([byte])):
                self.exchange(bytes(piece), event)
                piece.clear()
        if self.model.decoder.in_frame:
            self.exchange(bytes(piece), self.model.decoder.expire()[0])
        elif piece:           # bytes after the last verdict: the board must ignore them too
            self.expect_silence(piece)

    def while_running(self):
        """A run was started: RUN again (BUSY), PING, random traffic, then its result."""
        self.runs += 1
        others = [image for image in self.images if image != self.model.running]
        if others:
            self.send(encode_frame(Command.RUN, self.fuzzer.rng.choice(others)))
        self.send(encode_frame(Command.PING))
        kind, raw = self.fuzzer.item(runs=False)
        self.where += f", during the run {kind}"
        self.send(raw)
        self.send(encode_frame(Command.READ_RESULT))
        if self.model.running is not None:
            self.fail("the run's result was not read")

    # ---- a burst: the host talks over the board's replies
    def burst(self, chunk):
        from sim.board_tb import _replies
        try:
            replies = _replies(self.port, self.driver, chunk, self.quiet_ns)
        except AssertionError as error:
            self.fail(f"burst {chunk.hex()}: {error}")
        self.sent += len(chunk)
        self.bursts += 1
        legal = {ok_reply(), ok_reply([1])} | {error_reply(code) for code in ErrorCode}
        if self.model.has_result:
            legal.add(ok_reply(self.model.result))
        wrong = [str(f) for f in replies if f not in legal]
        if wrong:
            self.fail(f"burst {chunk.hex()}: replies {wrong} are none the board may send")
        if len(replies) > chunk.count(SYNC):
            self.fail(f"burst {chunk.hex()}: {len(replies)} replies to {chunk.count(SYNC)} SYNC "
                      f"bytes")
        self.replies["(burst replies)"] += len(replies)
        self.model.reset_receiver()

    # ---- the whole fuzz
    def checkpoint(self):
        """The link works: a PING and a READ_RESULT (the result of the last run) are answered."""
        self.send(encode_frame(Command.PING))
        self.send(encode_frame(Command.READ_RESULT))

    def run(self):
        rng = self.fuzzer.rng
        self.where = "start"
        self.send(encode_frame(Command.RUN, self.images[0]))     # a result to read back
        done = 0
        batch = 0
        while done < self.frames:
            items = [self.fuzzer.item(runs=batch % BURST_EVERY != BURST_EVERY - 1)
                     for _ in range(min(BATCH, self.frames - done))]
            self.kinds.update(kind for kind, _ in items)
            if batch % BURST_EVERY == BURST_EVERY - 1:
                self.where = f"batch {batch} (frames {done}..{done + len(items) - 1}, burst)"
                self.burst(b"".join(raw for _, raw in items))
            else:
                at = 0
                while at < len(items):      # 1 to 3 items back to back, no idle gap
                    group = items[at:at + rng.randint(1, 3)]
                    self.where = (f"batch {batch}, frames {done + at}..{done + at + len(group) - 1}"
                                  f" ({', '.join(kind for kind, _ in group)})")
                    self.send(b"".join(raw for _, raw in group))
                    at += len(group)
            done += len(items)
            self.where = f"after batch {batch}"
            self.checkpoint()
            batch += 1
        self.where = "end"
        self.send(encode_frame(Command.RUN, self.images[-1]))
        self.checkpoint()
        return {"seed": self.seed, "frames": done, "batches": batch, "bursts": self.bursts,
                "runs": self.runs, "bytes_sent": self.sent, "kinds": dict(self.kinds),
                "replies": dict(self.replies), "framing_errors": self.port.framing_errors}


# --------------------------------------------------------------------------------------------
# cocotb tests
# --------------------------------------------------------------------------------------------

from sim.board_tb import _import_cocotb_test  # noqa: E402  (cocotb.test inside a simulator)

_test = _import_cocotb_test()

if _test is not None:
    import numpy as np
    from cocotb.task import bridge

    from sim.board_tb import _config, _quiet_ns, _record, _replies, _setup

    @_test()
    async def test_link_fuzz(dut):
        """Seeded random traffic; every reply as the board's documentation says."""
        from cocotb.utils import get_sim_time
        from firmware.images import Table
        config = _config()
        seed = int(os.environ["STFORGE_BOARD_FUZZ_SEED"])
        frames = int(os.environ["STFORGE_BOARD_FUZZ_FRAMES"])
        port, driver = await _setup(dut, config)
        with np.load(os.environ["STFORGE_BOARD_GOLDEN"]) as npz:
            golden = {k: npz[k] for k in ("images", "logits", "prediction")}
        started, t0 = time.time(), get_sim_time("ns")

        def fuzz():
            if config["tables"] is not None:      # results are golden once the tables are in
                assert driver.load([Table(t["id"], t["name"], t["width"], tuple(t["words"]))
                                    for t in config["tables"]]) is True
            return LinkFuzz(port, driver, config, golden, seed, frames).run()

        dut._log.info(f"link fuzz: seed {seed}, {frames} frames")
        summary = await bridge(fuzz)()
        port.stop()
        summary.update(seconds=time.time() - started, sim_ns=get_sim_time("ns") - t0)
        _record("fuzz", summary)
        dut._log.info(f"link fuzz: {summary}")

    @_test()
    async def test_write_mem_without_payload(dut):
        """After an accepted WRITE_MEM, one with no payload at all: BAD_ARGUMENT, link alive."""
        config = _config()
        port, driver = await _setup(dut, config)
        table = config["tables"][0]
        word = table["words"][0].to_bytes((table["width"] + 7) // 8, "little")
        quiet_ns = _quiet_ns(config)

        def check():
            accepted = _replies(port, driver, encode_frame(
                Command.WRITE_MEM, pack_write_mem(0, 0, word)), quiet_ns)
            empty = _replies(port, driver, encode_frame(Command.WRITE_MEM), quiet_ns)
            ping = _replies(port, driver, encode_frame(Command.PING), quiet_ns)
            return [str(f) for f in accepted], [str(f) for f in empty], [str(f) for f in ping]

        accepted, empty, ping = await bridge(check)()
        port.stop()
        _record("write_mem_without_payload", {"accepted": accepted, "empty": empty,
                                              "ping": ping})
        assert accepted == [str(ok_reply())], accepted
        assert empty == [str(error_reply(ErrorCode.BAD_ARGUMENT))], \
            f"WRITE_MEM without payload after an accepted one: {empty or 'no reply'}"
        assert ping == [str(ok_reply([1]))], f"PING afterwards: {ping or 'no reply'}"
