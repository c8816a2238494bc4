"""The readings payload: SenML CBOR packs grouped by channel, read back by an independent decoder."""

from __future__ import annotations

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from gateway import senml
from hil.capture import decode_senml

CHANNELS = [
    senml.Channel("temperature", "Cel", -2),
    senml.Channel("counter", ""),
    senml.Channel("pressure", "Pa"),
    senml.Channel("water_level", "m", -3),
]


def test_a_pack_names_node_and_channel_once_per_group() -> None:
    samples = [0, 2137, 0, 1, 7, 0, 0, 2141, 10, 2, 101325, 10, 1, 8, 10]
    payload = senml.pack("0000a4cf12b3c4d5", CHANNELS, samples, 1795000000)
    records = cbor2.loads(payload)
    assert records[0] == {2: 7, -2: "urn:dev:edgegw:0000a4cf12b3c4d5:counter", -3: 1795000000}  # no unit: first
    assert records[1] == {2: 8, 6: 10}
    assert records[2] == {2: 21.37, -2: "urn:dev:edgegw:0000a4cf12b3c4d5:temperature", -4: "Cel"}
    assert records[3] == {2: 21.41, 6: 10}
    assert list(records[2]) == [2, -2, -4]  # canonical key order, as cbor2's canonical mode would write it
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
    resolved = decode_senml(senml.pack("be00000000000001", CHANNELS, samples, 1795000000))
    expected = sorted(
        (
            "urn:dev:edgegw:be00000000000001:" + CHANNELS[c].name,
            CHANNELS[c].unit or None,
            CHANNELS[c].value(v),
            1795000000 + t,
        )
        for c, v, t in readings
    )
    assert sorted((r["name"], r["unit"], r["value"], r["time"]) for r in resolved) == expected
