"""Smaller protocol rules: counter window, node ids, frame checks, error objects."""

from __future__ import annotations

import pytest

from protocols import (
    CounterWindow,
    Message,
    ProtocolError,
    StreamDecoder,
    cbor,
    encode,
    messages,
    node_hex,
    node_id_from_unique_id,
    upstream,
)
from protocols import frame as fr
from protocols import window as win


def test_window_accepts_new_and_flags_duplicates_and_stale() -> None:
    window = CounterWindow()
    assert window.check(0) == win.NEW
    window.accept(0)
    assert window.check(0) == win.DUPLICATE
    for counter in (1, 2, 5):
        assert window.check(counter) == win.NEW
        window.accept(counter)
    # 3 and 4 never arrived: late arrivals inside the window are new, exactly once.
    assert window.check(4) == win.NEW
    window.accept(4)
    assert window.check(4) == win.DUPLICATE
    assert window.check(3) == win.NEW
    window.accept(1000)
    assert window.check(1000 - fr.WINDOW + 1) == win.NEW
    assert window.check(1000 - fr.WINDOW) == win.STALE
    assert window.check(5) == win.STALE


def test_window_state_survives_a_round_trip_through_its_two_numbers() -> None:
    window = CounterWindow()
    for counter in (10, 11, 13, 40):
        window.accept(counter)
    restored = CounterWindow(window.highest, window.seen)
    assert [restored.check(c) for c in (10, 11, 12, 13, 40, 41)] == [
        win.DUPLICATE,
        win.DUPLICATE,
        win.NEW,
        win.DUPLICATE,
        win.DUPLICATE,
        win.NEW,
    ]
    assert restored.seen < 1 << fr.WINDOW


def test_window_ignores_a_counter_too_far_behind_to_remember() -> None:
    window = CounterWindow()
    window.accept(1000)
    window.accept(10)
    assert window.seen == 1 and window.highest == 1000
    assert window.check(10) == win.STALE


def test_window_reset_after_a_lost_counter() -> None:
    window = CounterWindow()
    window.accept(100_000)
    assert window.check(3) == win.STALE
    window.reset(3)
    assert window.check(3) == win.DUPLICATE
    assert window.check(4) == win.NEW


@pytest.mark.parametrize(
    ("unique_id", "expected"),
    [
        (bytes.fromhex("a4cf12b3c4d5"), "0000a4cf12b3c4d5"),  # ESP32 MAC
        (bytes.fromhex("e66038b7134f2a21"), "e66038b7134f2a21"),  # RP2040 flash id
        (bytes.fromhex("01020304050607081000000000000001"), "1102030405060709"),  # 16 bytes: XOR-folded
    ],
)
def test_node_id_from_unique_id(unique_id: bytes, expected: str) -> None:
    assert node_hex(node_id_from_unique_id(unique_id)) == expected


def test_node_hex_is_lowercase_and_16_digits() -> None:
    assert node_hex(bytes.fromhex("00ABCDEF00000001")) == "00abcdef00000001"


def test_error_carries_sender_when_the_header_was_trustworthy() -> None:
    raw = fr.pack(fr.Frame(messages.READINGS, bytes.fromhex("0000a4cf12b3c4d5"), 77, b"\xa0"))
    decoder = StreamDecoder()
    decoder.feed(fr.cobs.encode(raw) + b"\x00")
    with pytest.raises(ProtocolError) as caught:
        decoder.next_message()
    assert caught.value.reason == "schema"
    assert caught.value.node_id == bytes.fromhex("0000a4cf12b3c4d5") and caught.value.counter == 77
    assert "samples" in str(caught.value)


def test_crc_error_does_not_name_a_sender() -> None:
    raw = bytearray(fr.pack(fr.Frame(messages.LOG, bytes(8), 1, b"\xa2\x00\x01\x01\x61\x78")))
    raw[5] ^= 0x40
    with pytest.raises(ProtocolError) as caught:
        fr.unpack(bytes(raw))
    assert caught.value.reason == "crc" and caught.value.node_id is None


def test_readings_limits() -> None:
    too_many = Message(messages.READINGS, bytes(8), 1, {"samples": [0, 1, 0] * (messages.MAX_SAMPLES + 1)})
    with pytest.raises(ProtocolError, match="more than"):
        encode(too_many)
    bad_channel = Message(messages.READINGS, bytes(8), 1, {"samples": [messages.MAX_CHANNELS, 1, 0]})
    with pytest.raises(ProtocolError, match="channel"):
        encode(bad_channel)


def test_ten_sample_readings_frame_size() -> None:
    """The shape of frame the link budget is stated for (SPEC.md §6): 10 integer samples."""
    samples = []
    for index in range(10):
        samples += [index % 3, 2100 + index, index // 3]
    wire = encode(Message(messages.READINGS, bytes(8), 1000, {"base_time": 1795000000, "samples": samples}, fr.F_ACK_REQ))
    # 15 header + 4 CRC + 1 COBS + 1 delimiter + 10 payload structure + 10 x 5 per sample.
    assert len(wire) == 81
    untimed = encode(Message(messages.READINGS, bytes(8), 1000, {"samples": samples}, fr.F_ACK_REQ))
    assert len(untimed) == 75


def test_a_channel_scale_beyond_thirty_is_a_schema_error() -> None:
    """10^scale must stay a number the gateway can compute with: ±30 is far beyond any sensor."""

    def hello(scale: int) -> dict[str, object]:
        channels = [{"name": "t", "unit": "Cel", "scale": scale}]
        return {"proto": [1, 0], "fw_version": "1", "hw_model": "x", "caps": 1, "channels": channels}

    for scale in (-messages.MAX_SCALE, messages.MAX_SCALE):
        payload = messages.encode_payload(messages.HELLO, hello(scale))
        assert messages.decode_payload(messages.HELLO, payload)["channels"][0]["scale"] == scale
    for scale in (-messages.MAX_SCALE - 1, messages.MAX_SCALE + 1, -400):
        with pytest.raises(ProtocolError) as caught:
            messages.encode_payload(messages.HELLO, hello(scale))
        assert caught.value.reason == "schema"
        mapping = {0: [1, 0], 1: "1", 2: "x", 3: 1, 4: [{0: "t", 1: "Cel", 2: scale}]}  # as a node might send it
        with pytest.raises(ProtocolError, match="scale"):
            messages.decode_payload(messages.HELLO, cbor.dumps(mapping))


def test_status_air_numbered_keys_are_named() -> None:
    """SPEC.md 5.7: a key of STATUS `air` is its name or its number; a number wins over its name; other keys stay
    as they came, for the receiver to keep those it knows."""
    air = cbor.loads(cbor.dumps({5: 12, "sf": 9, 14: 0, 15: 7, "volts": 3}))
    assert upstream.air_names(air) == {"sf": 12, "wait_ms": 0, 15: 7, "volts": 3}
    assert upstream.air_names({-1: 1}) == {-1: 1}
