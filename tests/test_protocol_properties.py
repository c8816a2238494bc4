"""Property tests: round trips, hostile input, and agreement with cbor2."""

from __future__ import annotations

import math

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import Message, ProtocolError, StreamDecoder, cbor, cobs, encode, messages
from protocols import frame as fr
from tests.strategies import any_message, protocol_values

ALL_REASONS = set(__import__("protocols.errors", fromlist=["REASONS"]).REASONS.values())


def _decode_all(data: bytes) -> tuple[list[Message], list[ProtocolError]]:
    decoder = StreamDecoder()
    decoder.feed(data)
    events = decoder.drain()
    return [e for e in events if isinstance(e, Message)], [e for e in events if isinstance(e, ProtocolError)]


def _expected(message: Message) -> Message:
    """What the decoder should give back: HELLO channels gain their default scale."""
    fields = dict(message.fields)
    if message.type == messages.HELLO:
        fields["channels"] = [dict(channel) for channel in fields["channels"]]
    return Message(message.type, message.node_id, message.counter, fields, message.flags)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(any_message())
def test_every_message_round_trips(message: Message) -> None:
    try:
        wire = encode(message)
    except ProtocolError as error:
        assert error.reason == "too_long"  # the only honest reason to refuse a schema-valid message
        return
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    assert len(cobs.decode(wire[:-1])) <= fr.MAX_FRAME
    good, bad = _decode_all(wire)
    assert bad == []
    assert good == [_expected(message)]


@settings(max_examples=1500)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    decoder = StreamDecoder()
    for start in range(0, len(data), 97):
        decoder.feed(data[start : start + 97])
        while True:
            try:
                if decoder.next_message() is None:
                    break
            except ProtocolError as error:
                assert error.reason in ALL_REASONS
        assert decoder.buffered <= fr.MAX_ENCODED + 97


@settings(max_examples=800)
@given(st.binary(max_size=fr.MAX_PAYLOAD))
def test_arbitrary_payloads_raise_only_protocol_errors(payload: bytes) -> None:
    for mtype in [*messages.SCHEMAS, 0x7F]:
        frame = fr.Frame(mtype, bytes(8), 1, payload)
        try:
            messages.decode_frame(fr.unpack(fr.pack(frame)))
        except ProtocolError as error:
            assert error.reason in {"cbor", "limit", "schema", "type"}
            assert error.counter == 1 or error.reason == "type"


@given(st.binary(max_size=300))
def test_arbitrary_cbor_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        cbor.loads(data)
    except ProtocolError as error:
        assert error.reason in {"cbor", "limit"}


@settings(max_examples=600)
@given(protocol_values)
def test_portable_cbor_agrees_with_cbor2(value: object) -> None:
    ours = cbor.dumps(value)
    assert ours == cbor2.dumps(value, canonical=True)
    assert cbor2.loads(ours) == value
    assert cbor.loads(ours) == value


@given(st.floats())
def test_floats_take_the_shortest_exact_form(value: float) -> None:
    encoded = cbor.dumps(value)
    decoded = cbor.loads(encoded)
    if math.isnan(value):
        assert encoded == bytes.fromhex("f97e00") and math.isnan(decoded)  # type: ignore[arg-type]
        return
    assert decoded == value and math.copysign(1, decoded) == math.copysign(1, value)  # type: ignore[arg-type]
    assert encoded == cbor2.dumps(value, canonical=True)


@given(st.binary(max_size=1200))
def test_cobs_round_trip(data: bytes) -> None:
    encoded = cobs.encode(data)
    assert b"\x00" not in encoded
    assert len(encoded) <= cobs.max_encoded_len(len(data))
    assert cobs.decode(encoded) == data


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(any_message(), st.binary(max_size=40)), min_size=1, max_size=8),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40),
)
def test_stream_recovers_frames_between_garbage(pieces: list[tuple[Message, bytes]], cuts: list[int]) -> None:
    """Frames separated from random garbage by a delimiter all come through; nothing false is accepted."""
    stream = bytearray()
    sent: list[Message] = []
    for message, garbage in pieces:
        try:
            wire = encode(message)
        except ProtocolError:
            continue
        stream += garbage + b"\x00" + wire
        sent.append(_expected(message))
    decoder = StreamDecoder()
    received: list[Message] = []
    position = 0
    cut_index = 0
    while position < len(stream):
        step = cuts[cut_index % len(cuts)]
        cut_index += 1
        decoder.feed(bytes(stream[position : position + step]))
        position += step
        received += [e for e in decoder.drain() if isinstance(e, Message)]
    # Garbage can by chance form a valid frame only with a matching CRC-32: every
    # received message that is not one we sent would be a false acceptance.
    assert [m for m in received if m not in sent] == []
    assert [m for m in received if m in sent] == sent


def test_oversize_run_is_rejected_once_and_the_next_frame_survives() -> None:
    good = encode(Message(messages.LOG, bytes(8), 5, {"severity": 6, "text": "after the noise"}))
    decoder = StreamDecoder()
    errors = []
    decoder.feed(b"\x55" * 5000)
    for _ in range(3):
        try:
            assert decoder.next_message() is None
        except ProtocolError as error:
            errors.append(error.reason)
    assert errors == ["too_long"]
    assert decoder.buffered <= fr.MAX_ENCODED
    decoder.feed(b"\x55" * 10 + b"\x00" + good)
    message = decoder.next_message()
    assert message is not None and message.fields["text"] == "after the noise"
    assert decoder.bytes_dropped >= 5010


def test_largest_payload_fits_and_one_more_byte_does_not() -> None:
    fits = fr.Frame(messages.LOG, bytes(8), 1, b"\x01" * fr.MAX_PAYLOAD)
    assert len(fr.pack(fits)) == fr.MAX_FRAME
    assert len(fr.to_wire(fits)) <= fr.MAX_ENCODED + 1
    too_big = fr.Frame(messages.LOG, bytes(8), 1, b"\x01" * (fr.MAX_PAYLOAD + 1))
    try:
        fr.pack(too_big)
    except ProtocolError as error:
        assert error.reason == "too_long"
    else:
        raise AssertionError("an oversize payload was packed")


def test_encoder_refuses_unknown_and_missing_fields() -> None:
    for fields, reason in (
        ({"severity": 3}, "schema"),
        ({"severity": 3, "text": "x", "colour": 1}, "schema"),
        ({"severity": -1, "text": "x"}, "schema"),
    ):
        try:
            encode(Message(messages.LOG, bytes(8), 1, fields))
        except ProtocolError as error:
            assert error.reason == reason
        else:
            raise AssertionError("encoded %r" % fields)
