"""The gateway's cbor2 path for READINGS accepts exactly what the portable decoder accepts, with the same fields."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.fast_decode import FastStreamDecoder, readings_fields
from protocols import Frame, Message, ProtocolError, StreamDecoder, encode, messages
from protocols import cbor as portable_cbor
from protocols.frame import to_wire
from tests.strategies import message_fields, protocol_values


def portable(payload: bytes) -> dict[str, Any] | ProtocolError:
    try:
        return messages.decode_payload(messages.READINGS, payload)
    except ProtocolError as error:
        return error


def agrees(payload: bytes) -> None:
    fast = readings_fields(payload)
    if fast is not None:  # whenever the fast path answers, the authority gives the same fields
        assert portable(payload) == fast


def test_the_firmware_shape_takes_the_fast_path() -> None:
    payload = messages.encode_payload(messages.READINGS, {"samples": [0, 2137, 0, 1, 553, 10], "base_time": 1795000000})
    assert readings_fields(payload) == {"samples": [0, 2137, 0, 1, 553, 10], "base_time": 1795000000}
    assert readings_fields(messages.encode_payload(messages.READINGS, {"samples": []})) == {"samples": []}


@pytest.mark.parametrize(
    "payload, why",
    [
        (bytes.fromhex("a1019f000102ff"), "indefinite-length array"),
        (bytes.fromhex("a2018300010201830001 02".replace(" ", "")), "duplicate key"),
        (bytes.fromhex("a10183000102") + b"\x00", "a byte after the item"),
        (bytes.fromhex("a10183001a000000010a"), "an integer in a longer form than needed"),
        (bytes.fromhex("a10183c24101 0102".replace(" ", "")), "a tag (bignum) around a value"),
        (bytes.fromhex("a1018300f93e0000"), "a float value"),
        (bytes.fromhex("a2018300010205f6"), "a key the schema does not know"),
        (bytes.fromhex("a1018320010a"), "a negative channel"),
        (bytes.fromhex("a1f583000102"), "a key that is true, which equals 1 in Python"),
        (bytes.fromhex("a1f93c0083000102"), "a key that is the float 1.0"),
        (bytes.fromhex("a101831820010a"), "channel 32"),
        (bytes.fromhex("a1018200 01".replace(" ", "")), "samples not in threes"),
        (bytes.fromhex("a2001b0000000100000000018300010a"), "base_time 2^32, beyond a u32"),
        (bytes.fromhex("a200200183000100"), "base_time -1"),
        (bytes.fromhex("a20005018300010a"), "base_time 5, below 2^28 (SenML: relative)"),
        (bytes.fromhex("a2001a100000000183000120"), "base_time 2^28 + dt -1, below 2^28"),
        (bytes.fromhex("a1018300011a80000000"), "an offset of 2^31 s"),
        (bytes.fromhex("a1018300013a80000000"), "an offset below -2^31 s"),
    ],
)
def test_anything_else_goes_to_the_portable_decoder(payload: bytes, why: str) -> None:
    assert readings_fields(payload) is None, why
    agrees(payload)


@given(message_fields(messages.READINGS))
def test_encoded_readings_agree(fields: dict[str, Any]) -> None:
    payload = messages.encode_payload(messages.READINGS, fields)
    agrees(payload)
    if all(type(v) is int for v in fields["samples"]) and type(fields.get("base_time", 0)) is int:
        assert readings_fields(payload) == portable(payload)  # the common case really is fast


@given(st.binary(max_size=80))
def test_arbitrary_bytes_agree(payload: bytes) -> None:
    agrees(payload)


@given(st.dictionaries(st.integers(-2, 3), protocol_values, max_size=3))
def test_arbitrary_maps_agree(mapping: dict[int, Any]) -> None:
    for payload in (cbor2.dumps(mapping), portable_cbor.dumps(mapping)):
        agrees(payload)


def test_the_fast_stream_decoder_gives_the_same_events() -> None:
    readings = Message(messages.READINGS, b"\x01" * 8, 7, {"samples": [0, 1, 0, 1, 2.5, 3], "base_time": 1795000000})
    ints = Message(messages.READINGS, b"\x01" * 8, 8, {"samples": [0, 1, 0]})
    bad = Frame(messages.READINGS, b"\x01" * 8, 9, bytes.fromhex("a1019f000102ff"))
    stream = encode(readings) + b"\x01\x02\x00" + encode(ints) + to_wire(bad)
    events = []
    for decoder in (StreamDecoder(), FastStreamDecoder()):
        decoder.feed(stream)
        events.append([(isinstance(e, Message), getattr(e, "fields", None), getattr(e, "reason", None)) for e in decoder.drain()])
    assert events[0] == events[1]
    assert [is_message for is_message, _fields, _reason in events[1]] == [True, False, True, False]
