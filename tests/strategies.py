"""Hypothesis strategies for protocol values and messages, following the schema tables."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from protocols import Message, messages
from protocols.frame import F_ACK_REQ, F_DOWNLINK, F_RETRY, MAX_COUNTER

node_ids = st.binary(min_size=8, max_size=8)
counters = st.integers(min_value=0, max_value=MAX_COUNTER)
flags = st.sets(st.sampled_from([F_DOWNLINK, F_ACK_REQ, F_RETRY])).map(sum)
uints = st.integers(min_value=0, max_value=2**64 - 1)
small_uints = st.integers(min_value=0, max_value=2**32 - 1)
ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
floats = st.floats(allow_nan=False)
numbers = st.one_of(st.integers(min_value=-(2**31), max_value=2**31), floats)
texts = st.text(max_size=20)

# Every value the protocol can carry, nested a little.
protocol_values = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, floats, st.binary(max_size=16), texts),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.integers(min_value=-100, max_value=100), st.text(max_size=6)), children, max_size=4),
    ),
    max_leaves=12,
)

_KIND = {
    "u": small_uints,
    "i": st.integers(min_value=-(2**31), max_value=2**31),
    "n": numbers,
    "t": texts,
    "b": st.binary(max_size=40),
    "a": st.lists(small_uints, max_size=4),
    "m": st.dictionaries(st.text(max_size=8), st.integers(min_value=-1000, max_value=1000), max_size=3),
    "*": protocol_values,
}

channels = st.fixed_dictionaries(
    {
        "name": st.text(alphabet=messages.NAME_CHARS, min_size=1, max_size=12),
        "unit": st.sampled_from(["Cel", "%RH", "Pa", "m", "V", "dBm", ""]),
        "scale": st.integers(-6, 6),
    }
)


def _special(mtype: int, name: str) -> st.SearchStrategy[Any] | None:
    if mtype == messages.HELLO and name == "proto":
        return st.tuples(st.integers(0, 15), st.integers(0, 15)).map(list)
    if mtype == messages.HELLO and name == "channels":
        return st.lists(channels, max_size=4, unique_by=lambda channel: channel["name"])
    if mtype == messages.HELLO and name == "commands":  # name -> argument spec (SPEC.md §5.9)
        kinds = st.sampled_from(["u", "i", "n", "t", "u0-100", "n1-86400!", "*"])
        arg = st.tuples(st.text(alphabet="abcdefgh_", min_size=1, max_size=6), kinds)
        spec = st.lists(arg, max_size=3, unique_by=lambda pair: pair[0]).map(lambda pairs: " ".join("%s %s" % pair for pair in pairs))
        name = st.text(alphabet=messages.NAME_CHARS, min_size=1, max_size=messages.MAX_COMMAND_NAME)
        return st.dictionaries(name, spec, max_size=3)
    if mtype == messages.READINGS and name == "samples":
        values = st.one_of(st.integers(min_value=-(2**31), max_value=2**31), st.floats(allow_nan=False, allow_infinity=False))  # SPEC 5.4
        sample = st.tuples(st.integers(0, messages.MAX_CHANNELS - 1), values, st.one_of(st.integers(0, 3600), st.floats(0, 3600)))
        return st.lists(sample, max_size=12).map(lambda triples: [item for triple in triples for item in triple])
    if mtype == messages.READINGS and name == "base_time":
        return st.one_of(st.integers(messages.MIN_TIME, messages.MAX_TIME), st.floats(messages.MIN_TIME, messages.MAX_TIME))
    if mtype == messages.TIME and name == "ms":
        return st.integers(0, messages.MAX_MS)
    if mtype == messages.ACK and name == "counters":
        return st.lists(counters, max_size=messages.MAX_ACKS)
    if mtype == messages.CONFIG and name == "keys":
        return st.lists(st.text(max_size=8), max_size=3)
    if mtype == messages.CONFIG and name == "errors":
        return st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)  # text -> text (SPEC.md §5.8)
    return None


@st.composite
def message_fields(draw: st.DrawFn, mtype: int) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for _key, name, kind, required in messages.schema_rows(messages.SCHEMAS[mtype]):
        if required or draw(st.booleans()):
            special = _special(mtype, name)
            if special is None and len(kind) > 1:  # a ranged integer, "u0-7"
                low, high = kind[1:].split("-")
                special = st.integers(int(low), int(high))
            strategy = _KIND[kind[0]] if special is None else special
            fields[name] = draw(strategy)
    return fields


@st.composite
def any_message(draw: st.DrawFn) -> Message:
    mtype = draw(st.sampled_from(sorted(messages.SCHEMAS)))
    return Message(mtype, draw(node_ids), draw(counters), draw(message_fields(mtype)), draw(flags))
