"""The readings payload: SenML CBOR packs grouped by channel, read back by an independent decoder."""

from __future__ import annotations

import struct
from fractions import Fraction

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from gateway import senml
from hil.capture import decode_senml
from protocols import cbor

CHANNELS = [
    senml.Channel("temperature", "Cel", -2),
    senml.Channel("counter", ""),
    senml.Channel("pressure", "Pa"),
    senml.Channel("water_level", "m", -3),
]


def test_a_pack_names_node_and_channel_once_per_group() -> None:
    samples = [0, 2137, 0, 1, 7, 0, 0, 2141, 10, 2, 101325, 10, 1, 8, 10]
    payload = senml.pack("0000a4cf12b3c4d5", CHANNELS, [(samples, 1795000000)])
    records = cbor2.loads(payload)
    assert records[0] == {2: 7, -2: "urn:dev:edgegw:0000a4cf12b3c4d5:counter", -3: 1795000000}  # no unit: first
    assert records[1] == {2: 8, 6: 10}
    assert records[2] == {2: single(21.37), -2: "urn:dev:edgegw:0000a4cf12b3c4d5:temperature", -4: "Cel"}
    assert records[3] == {2: single(21.41), 6: 10}
    assert list(records[2]) == [2, -2, -4]  # canonical key order, as cbor2's canonical mode would write it
    assert cbor2.dumps(records, canonical=True) == payload, "the pack is canonical CBOR"
    assert decode_senml(payload) == senml.unpack(payload)
    assert decode_senml(payload)[4] == {
        "name": "urn:dev:edgegw:0000a4cf12b3c4d5:pressure",
        "unit": "Pa",
        "value": 101325,
        "time": 1795000010,
    }


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(-(2**31), 2**31), st.integers(0, 3600)),
        min_size=1,
        max_size=64,
    )
)
def test_every_reading_comes_back_with_its_name_unit_value_and_time(readings: list[tuple[int, int, int]]) -> None:
    samples = [item for reading in readings for item in reading]
    resolved = decode_senml(senml.pack("be00000000000001", CHANNELS, [(samples, 1795000000)]))
    expected = sorted(
        (
            "urn:dev:edgegw:be00000000000001:" + CHANNELS[c].name,
            CHANNELS[c].unit or None,
            v * 10 ** CHANNELS[c].scale if CHANNELS[c].scale >= 0 else Fraction(v, 10 ** -CHANNELS[c].scale),
            1795000000 + t,
        )
        for c, v, t in readings
    )
    got = sorted((r["name"], r["unit"], at_resolution(r["value"], r["name"]), r["time"]) for r in resolved)
    assert got == expected


def single(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def at_resolution(value: float, name: str) -> Fraction | int:
    """A value as the exact decimal its channel's resolution makes of it."""
    channel = next(c for c in CHANNELS if name.endswith(":" + c.name))
    if channel.scale >= 0:
        assert isinstance(value, int)
        return value
    return Fraction(round(value * 10**-channel.scale), 10**-channel.scale)


def test_a_decimal_travels_in_the_narrowest_float_that_keeps_it() -> None:
    temperature = [senml.Channel("temperature", "Cel", -2)]
    for raw, head, width in ((2137, 0xFA, 5), (-4000, 0xFA, 5), (2**30 + 1, 0xFB, 9), (2**200, 0xFB, 9)):
        record = senml.pack("be00000000000001", temperature, [([0, raw, 0], 0)])[1:]
        assert record[2] == head, raw  # after the map head and the key 2: the float's own head
        value = cbor2.loads(senml.pack("be00000000000001", temperature, [([0, raw, 0], 0)]))[0][2]
        assert round(value * 100) == raw and len(record[2 : 2 + width]) == width


def test_frames_of_one_pack_keep_their_own_times() -> None:
    pack = senml.pack("be00000000000001", CHANNELS, [([1, 7, 0, 1, 8, 5], 1795000000), ([1, 9, 0], 1795000060), ([1, 10, 0], 1795000060.5)])
    assert [(r["value"], r["time"]) for r in decode_senml(pack)] == [
        (7, 1795000000),
        (8, 1795000005),
        (9, 1795000060),
        (10, 1795000060.5),
    ]
    assert len(cbor2.loads(pack)[0]) == 3 and cbor2.loads(pack)[1] == {2: 8, 6: 5}  # one base name and base time


@given(st.integers(-(2**22) + 1, 2**22 - 1), st.integers(-30, -1))
def test_below_the_safe_bound_a_single_float_always_rounds_back(raw: int, scale: int) -> None:
    value = cbor2.loads(senml.pack("be00000000000001", [senml.Channel("x", "", scale)], [([0, raw, 0], 0)]))[0][2]
    assert round(Fraction(value) * 10**-scale) == raw  # exact arithmetic: no doubt about the check itself


def test_beyond_the_bound_the_check_is_made_per_value() -> None:
    raws = [2**22, -(2**22), 2**29 + 1, 5]
    records = cbor2.loads(senml.pack("be00000000000001", [senml.Channel("x", "", -2)], [([0, r, 0] * 1, 0) for r in raws]))
    assert [round(record[2] * 100) for record in records] == raws


def test_an_integer_beyond_64_bits_once_scaled_is_a_double_not_a_bignum() -> None:
    """RFC 8428 §6 values are integers, floats and decimal fractions: no bignum tag (protocols.cbor refuses tags)."""
    channels = [senml.Channel("x", "", 30), senml.Channel("y", "", 1)]
    samples = [0, 23, 0, 0, 2**64 - 1, 1, 0, -(2**63), 2, 1, 2**64 - 1, 0, 1, -(2**63), 1, 1, 5, 2]
    payload = senml.pack("be00000000000001", channels, [(samples, 0)])
    cbor.loads(payload)  # raises ProtocolError on a tag
    values = [record[2] for record in cbor2.loads(payload)]
    expected = [23 * 10**30, (2**64 - 1) * 10**30, -(2**63) * 10**30, (2**64 - 1) * 10, -(2**63) * 10, 50]
    assert [type(value) for value in values] == [float] * 5 + [int]
    assert values == [float(value) for value in expected[:5]] + [50]
