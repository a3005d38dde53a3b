"""The protocol helpers' argument checks (firmware/protocol.py): every argument a helper cannot
take — of the wrong type, out of range, longer than a frame, a non-finite time — is one
ValueError line, never TypeError, MemoryError or struct.error; and the decoder's timeout cannot
be switched off by an infinite timeout or a NaN time. (The frame format itself is checked
against the gateware in tests/hw/test_link.py.)"""

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.protocol import MAX_PAYLOAD, Command, ErrorCode, Frame, FrameDecoder, FrameError, \
    Result, crc16, encode_frame, pack_error, pack_result, pack_run, pack_write_mem, \
    unpack_error, unpack_result, unpack_run, unpack_write_mem

HUGE = 2**62        # bytes(HUGE) is a MemoryError; never allocate it


def refused(call):
    with pytest.raises(ValueError) as info:
        call()
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


@pytest.mark.parametrize("call, message", [
    # byte strings: an int is not a length, a str is not bytes, a huge length is refused early
    (lambda: encode_frame(Command.PING, HUGE), "Payload must be bytes or a sequence"),
    (lambda: encode_frame(Command.PING, 5), "Payload must be bytes"),
    (lambda: encode_frame(Command.PING, "text"), "not str"),
    (lambda: encode_frame(Command.PING, [1.5]), "Payload byte must be an integer in 0..255"),
    (lambda: encode_frame(Command.PING, [256]), "not 256"),
    (lambda: encode_frame(Command.PING, itertools.repeat(0)), "exceeds the maximum of 65535"),
    (lambda: encode_frame(Command.PING, bytes(MAX_PAYLOAD + 1)), "65536 bytes exceeds"),
    (lambda: encode_frame(Command.PING, None), "not NoneType"),
    (lambda: encode_frame("PING"), "Command must be an integer in 0..255"),
    (lambda: encode_frame(True), "not True"),
    (lambda: encode_frame(256), "not 256"),
    (lambda: crc16(HUGE), "Data must be bytes"),
    (lambda: crc16("123456789"), "not str"),
    (lambda: crc16(b"", crc=-1), "CRC must be an integer in 0..65535"),
    (lambda: crc16(b"", crc=1.0), "CRC must be an integer"),
    (lambda: pack_write_mem(0, 0, HUGE), "Data must be bytes"),
    (lambda: pack_write_mem(0, 0, "ab"), "not str"),
    (lambda: pack_write_mem(0, 0, itertools.repeat(1)), "exceeds the maximum of 65530"),
    (lambda: pack_write_mem(0, 2**32, b""), "Address must be an integer in 0..2**32-1"),
    (lambda: pack_write_mem(0, 1.0, b""), "Address must be an integer"),
    (lambda: pack_write_mem(-1, 0, b""), "Memory id must be an integer in 0..255"),
    (lambda: pack_run(HUGE), "Pixels must be bytes"),
    (lambda: pack_run(range(HUGE)), "Pixel must be an integer in 0..255, not 256"),
    (lambda: pack_run(itertools.repeat(0)), "Pixels exceeds the maximum of 65535"),
    (lambda: pack_run([0.5]), "Pixel must be an integer"),
    (lambda: pack_run([None]), "Pixel must be an integer"),
    (lambda: unpack_run(None), "Payload must be bytes"),
    (lambda: unpack_run(7), "Payload must be bytes"),
    (lambda: unpack_write_mem(None), "Payload must be bytes"),
    (lambda: unpack_write_mem([1, 2, 3, 4, 5, 300]), "not 300"),
    (lambda: unpack_result(None), "Payload must be bytes"),
    (lambda: unpack_result(HUGE), "Payload must be bytes"),
    (lambda: unpack_error(None), "Payload must be bytes"),
    (lambda: unpack_error(3), "Payload must be bytes"),
    # results: every field an integer that fits its bytes
    (lambda: pack_result(None), "Result must have logits, predicted and cycles"),
    (lambda: pack_result(Result((1,), 0, 1.5)), "Cycle count must be an integer"),
    (lambda: pack_result(Result((1,), 0, "9")), "Cycle count must be an integer"),
    (lambda: pack_result(Result((1,), 0, 2**32)), "Cycle count must be an integer in 0..2**32-1"),
    (lambda: pack_result(Result((1.5,), 0, 1)), "Logit must be an integer"),
    (lambda: pack_result(Result((2**31,), 0, 1)), "not 2147483648"),
    (lambda: pack_result(Result(5, 0, 1)), "Logits must be a sequence of integers, not int"),
    (lambda: pack_result(Result(itertools.repeat(0), 0, 1)), "At most 255 logits"),
    (lambda: pack_result(Result((1,), "0", 1)), "Predicted class must be an integer"),
    (lambda: pack_error(0x77), "Error code must be an integer in {1, 2, 3, 4, 5, 6, 7}"),
    (lambda: pack_error("BUSY"), "Error code must be an integer"),
    (lambda: pack_error(None), "Error code must be an integer"),
    (lambda: pack_error(True), "not True"),
    # frames and the decoder
    (lambda: Frame(Command.OK, "text"), "Payload must be bytes"),
    (lambda: Frame(None), "Command must be an integer"),
    (lambda: FrameDecoder(max_payload=MAX_PAYLOAD + 1), "Maximum payload must be an integer"),
    (lambda: FrameDecoder(max_payload="64"), "Maximum payload must be an integer"),
    (lambda: FrameDecoder(timeout=math.inf), "Timeout must be a finite number of seconds"),
    (lambda: FrameDecoder(timeout=math.nan), "not nan"),
    (lambda: FrameDecoder(timeout="1"), "not '1'"),
    (lambda: FrameDecoder(timeout=True), "not True"),
    (lambda: FrameDecoder(timeout=0), "not 0"),
    (lambda: FrameDecoder().feed(HUGE), "Data must be bytes"),
    (lambda: FrameDecoder().feed(5), "Data must be bytes"),
    (lambda: FrameDecoder().feed("text"), "not str"),
    (lambda: FrameDecoder().feed(b"", now=math.nan), "Now must be a finite number of seconds"),
    (lambda: FrameDecoder().feed(b"", now=math.inf), "not inf"),
    (lambda: FrameDecoder().feed(b"", now="0"), "not '0'"),
])
def test_a_bad_argument_is_one_value_error(call, message):
    assert message in refused(call)


def test_byte_strings_come_in_every_bytes_like_form():
    payload = bytes([1, 2, 255])
    for form in (payload, bytearray(payload), memoryview(payload), list(payload),
                 tuple(payload), iter(list(payload)), np.frombuffer(payload, np.uint8),
                 np.array(list(payload), np.int64)):
        assert encode_frame(Command.OK, form) == encode_frame(Command.OK, payload)
    assert pack_run(np.arange(4, dtype=np.uint8)) == bytes(range(4))
    assert Frame(Command.OK, bytearray(b"x")).payload == b"x"
    assert pack_result(Result([np.int32(-3)], np.uint8(0), np.int64(9))) == \
        pack_result(Result((-3,), 0, 9))


def test_an_infinite_or_nan_timeout_cannot_switch_the_decoder_timeout_off():
    """FrameDecoder(timeout=inf) and feed(now=nan) used to be accepted: a frame that stopped
    half-way was then never dropped. Now they are refused, and the finite timeout works."""
    refused(lambda: FrameDecoder(timeout=math.inf))
    decoder = FrameDecoder(timeout=0.5)
    half = encode_frame(Command.OK, b"abc")[:5]
    assert decoder.feed(half, now=10.0) == []
    refused(lambda: decoder.feed(b"", now=math.nan))
    assert decoder.in_frame                        # the refused call changed nothing
    assert decoder.feed(encode_frame(Command.PING), now=10.6) == [
        FrameError(ErrorCode.TIMEOUT), Frame(Command.PING)]


# --------------------------------------------------------------------------------------------
# Hypothesis: any arguments at all are a result or one ValueError
# --------------------------------------------------------------------------------------------

ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-300, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.binary(max_size=40),
    st.lists(st.integers(-2, 300), max_size=12), st.tuples(st.integers(0, 255)),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sampled_from([HUGE, -HUGE, 2**32, 2**31, MAX_PAYLOAD + 1, math.nan, math.inf, object(),
                     range(HUGE), Command.OK, ErrorCode.BUSY, b"\xa5" * 7, bytearray(3)]),
    st.builds(Result, logits=st.one_of(st.lists(st.integers(-2**32, 2**32), max_size=300),
                                       st.text(max_size=3), st.integers()),
              predicted=st.one_of(st.integers(-2, 300), st.floats()),
              cycles=st.one_of(st.integers(-1, 2**33), st.floats(), st.text(max_size=2))),
)

HELPERS = {
    "crc16": lambda a, b, c: crc16(a, b),
    "crc16 (data)": lambda a, b, c: crc16(a),
    "encode_frame": lambda a, b, c: encode_frame(a, b),
    "encode_frame (payload)": lambda a, b, c: encode_frame(Command.OK, a),
    "Frame": lambda a, b, c: Frame(a, b),
    "FrameDecoder": lambda a, b, c: FrameDecoder(max_payload=a, timeout=b),
    "FrameDecoder.feed": lambda a, b, c: FrameDecoder(timeout=1.0).feed(a, now=b),
    "pack_write_mem": lambda a, b, c: pack_write_mem(a, b, c),
    "pack_write_mem (data)": lambda a, b, c: pack_write_mem(0, 0, a),
    "unpack_write_mem": lambda a, b, c: unpack_write_mem(a),
    "pack_run": lambda a, b, c: pack_run(a),
    "unpack_run": lambda a, b, c: unpack_run(a),
    "pack_result": lambda a, b, c: pack_result(a),
    "pack_result (fields)": lambda a, b, c: pack_result(Result(a, b, c)),
    "unpack_result": lambda a, b, c: unpack_result(a),
    "pack_error": lambda a, b, c: pack_error(a),
    "unpack_error": lambda a, b, c: unpack_error(a),
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(helper=st.sampled_from(sorted(HELPERS)), a=ANYTHING, b=ANYTHING, c=ANYTHING)
def test_any_arguments_are_a_result_or_one_value_error(helper, a, b, c):
    try:
        HELPERS[helper](a, b, c)
    except ValueError as error:
        assert "\n" not in str(error), str(error)
