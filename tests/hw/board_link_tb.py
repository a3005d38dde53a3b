"""cocotb tests of the board's link beyond ``sim/board_tb.py``'s fixed cases, run by
``tests/hw/test_board.py`` on the same Verilator build of the board top.

* ``test_write_mem_without_payload`` — a WRITE_MEM frame with an empty payload after an accepted
  one must be refused (``BAD_ARGUMENT``, "no words") and the link must keep working.

Runs inside the simulator: imports the torch-free driver, the protocol and ``sim.board_tb``.
"""

from __future__ import annotations

from firmware.protocol import Command, ErrorCode, Frame, encode_frame, pack_error, \
    pack_write_mem


def error_reply(code):
    return Frame(Command.ERROR, pack_error(code))


def ok_reply(payload=b""):
    return Frame(Command.OK, bytes(payload))


# --------------------------------------------------------------------------------------------
# cocotb tests
# --------------------------------------------------------------------------------------------

def _import_cocotb_test():
    try:
        import cocotb
    except ImportError:  # pragma: no cover
        return None
    return cocotb.test if cocotb.is_simulation else None


_test = _import_cocotb_test()

if _test is not None:
    from cocotb.task import bridge

    from sim.board_tb import _config, _quiet_ns, _record, _replies, _setup

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
