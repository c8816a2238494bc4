"""Message types and their CBOR payload schemas (SPEC.md §5).

A payload is a CBOR map with small integer keys. The tables below map each key
to a field name and a kind; decoding turns keys into names, checks kinds and
required fields, and ignores keys it does not know (forward compatibility).
"""

import sys

from . import cbor
from . import frame as _frame
from ._compat import const
from .errors import E_SCHEMA, E_TYPE, ProtocolError

HELLO = const(0x01)
READINGS = const(0x02)
ACK = const(0x03)
TIME = const(0x04)
STATUS = const(0x05)
CONFIG = const(0x06)
COMMAND = const(0x07)
COMMAND_RESULT = const(0x08)
LOG = const(0x09)
RADIO_RX = const(0x0A)
RADIO_TX = const(0x0B)
REJECT = const(0x0C)

NAMES = {
    HELLO: "HELLO",
    READINGS: "READINGS",
    ACK: "ACK",
    TIME: "TIME",
    STATUS: "STATUS",
    CONFIG: "CONFIG",
    COMMAND: "COMMAND",
    COMMAND_RESULT: "COMMAND_RESULT",
    LOG: "LOG",
    RADIO_RX: "RADIO_RX",
    RADIO_TX: "RADIO_TX",
    REJECT: "REJECT",
}

# Capability bits announced in HELLO.
CAP_READINGS = const(0x01)
CAP_CONFIG = const(0x02)
CAP_COMMANDS = const(0x04)
CAP_TIME = const(0x08)
CAP_RADIO_BRIDGE = const(0x10)
CAP_AUTH = const(0x20)

# CONFIG operations.
CONFIG_GET = const(0)
CONFIG_SET = const(1)
CONFIG_REPORT = const(2)

# COMMAND_RESULT outcomes.
OUTCOME_OK = const(0)
OUTCOME_UNKNOWN = const(1)
OUTCOME_BAD_ARGS = const(2)
OUTCOME_FAILED = const(3)
OUTCOME_BUSY = const(4)

# STATUS reset causes.
RESET_UNKNOWN = const(0)
RESET_POWER_ON = const(1)
RESET_HARD = const(2)
RESET_WATCHDOG = const(3)
RESET_DEEPSLEEP = const(4)
RESET_SOFT = const(5)
RESET_BROWNOUT = const(6)

# Unix time minus this is the time on MicroPython ports whose epoch is 2000-01-01 (SPEC.md §5.6).
EPOCH_2000_OFFSET = const(946684800)

MAX_SAMPLES = const(64)  # per READINGS frame
MAX_CHANNELS = const(32)  # per node
MAX_SCALE = const(30)  # |channel scale|: 10^scale stays within what a double holds with room to spare
MAX_ACKS = const(32)  # counters per ACK frame
MAX_COMMANDS = const(16)  # commands a HELLO may offer
MAX_COMMAND_NAME = const(16)  # characters of a command's name
# Time bounds (SPEC.md §5.1): a time fits a C uint32_t, an offset an int32_t, and NaN or ±inf fail both.
MAX_TIME = const(0xFFFFFFFF)  # READINGS base_time, TIME unix: seconds since 1970, up to 2106-02-07
MIN_TIME = const(0x10000000)  # READINGS base_time and base_time + dt: 2^28 s (1978-07-04); SenML reads less as "before now"
MIN_OFFSET = const(-0x80000000)  # READINGS dt, seconds: about ±68 years
MAX_OFFSET = const(0x7FFFFFFF)
MAX_MS = const(999)  # TIME ms

# Payload schemas, one line per type, to keep them small on a node's heap:
# "name kind" pairs whose position is the CBOR key ("- -" skips a key).
# Kinds: u unsigned int, i int, n number (int or float), t text, b bytes,
# a array, m map, * anything; then the range of an integer ("u0-7": 0 to 7,
# else a schema error, SPEC.md §8); a trailing ! marks a required field.
SCHEMAS = {
    HELLO: "proto a! fw_version t! hw_model t! caps u! channels a! interval n commands m",
    READINGS: "base_time n samples a!",
    ACK: "counters a!",
    TIME: "unix u ms u",
    STATUS: "uptime u! free_heap u reset_cause u0-6 battery_mv u rssi i snr n dropped u retransmits u rx_errors u heap_peak u air m",
    CONFIG: "op u0-2! values m keys a errors m id u",
    COMMAND: "id u! action t! args m",
    COMMAND_RESULT: "id u! outcome u0-4! detail t value *",
    LOG: "severity u0-7! text t!",
    RADIO_RX: "frame b! rssi i! snr n! freq u! sf u7-12! bw u at u",
    RADIO_TX: "frame b! - - - - freq u! sf u7-12! bw u power i delay_ms u at u",
    REJECT: "reason u! detail t counter u type u",
}
_CHANNEL_SCHEMA = "name t! unit t! scale i"
# A channel name ends a SenML record name (RFC 8428 §4.5.1), so it takes that name's characters
# less "/" and ":", which consumers split names at (topic levels, paths, the URN's parts): SPEC.md §5.3.
NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._"


def schema_rows(schema: str) -> list:
    """[(key, name, kind, required), ...] of a schema line; kind is its letter and range ("u", "u0-7")."""
    words = schema.split()
    rows = []
    for index in range(0, len(words), 2):
        if words[index] != "-":
            kind = words[index + 1]
            required = kind[-1] == "!"
            rows.append((index // 2, words[index], kind[:-1] if required else kind, required))
    return rows


class Message:
    """A frame's header plus its payload decoded into named fields."""

    name: str  # the type's name (NAMES), on CPython: see below
    key_index = -1  # decoded from an AUTH frame: which key matched (frame.unpack); -1: a CRC frame

    def __init__(
        self, mtype: int, node_id: bytes, counter: int, fields: dict | None = None, flags: int = 0, version: int = _frame.VERSION
    ) -> None:
        self.type = mtype
        self.node_id = node_id
        self.counter = counter
        self.fields = fields if fields is not None else {}
        self.flags = flags
        self.version = version


if sys.implementation.name != "micropython":  # for logs and tests; a node keeps the heap instead

    def _name(self: Message) -> str:
        return NAMES.get(self.type, "0x%02x" % self.type)

    def _repr(self: Message) -> str:
        return "Message(%s, node=%s, counter=%d, flags=0x%02x, %r)" % (
            self.name,
            _frame.node_hex(self.node_id),
            self.counter,
            self.flags,
            self.fields,
        )

    def _eq(self: Message, other: object) -> bool:
        return (
            isinstance(other, Message)
            and self.type == other.type
            and self.node_id == other.node_id
            and self.counter == other.counter
            and self.flags == other.flags
            and self.version == other.version
            and self.fields == other.fields
        )

    Message.name = property(_name)  # type: ignore[assignment]
    Message.__repr__ = _repr  # type: ignore[method-assign,assignment]
    Message.__eq__ = _eq  # type: ignore[method-assign,assignment]


def _kind_ok(value: object, kind: str) -> bool:
    if kind == "*":
        return True
    if value is True or value is False:
        return False  # a bool is never a number here, whatever CPython thinks
    if kind == "u":
        return isinstance(value, int) and value >= 0
    if kind == "i":
        return isinstance(value, int)
    if kind == "n":
        return isinstance(value, (int, float))
    if kind == "t":
        return isinstance(value, str)
    if kind == "b":
        return isinstance(value, bytes)
    if kind == "a":
        return isinstance(value, list)
    return isinstance(value, dict)  # "m"


def _check_value(value: object, kind: str, what: str, name: str) -> None:
    if not _kind_ok(value, kind[0]):
        raise ProtocolError(E_SCHEMA, "%s.%s has the wrong type" % (what, name))
    if len(kind) > 1:
        low, high = kind[1:].split("-")
        if not int(low) <= value <= int(high):  # type: ignore[operator]
            raise ProtocolError(E_SCHEMA, "%s.%s %s is outside %s" % (what, name, value, kind[1:]))


def _fields_from_map(mapping: object, schema: str, what: str) -> dict:
    if not isinstance(mapping, dict):
        raise ProtocolError(E_SCHEMA, "%s is not a map" % what)
    fields = {}
    for key, name, kind, required in schema_rows(schema):
        if key in mapping:
            value = mapping[key]
            _check_value(value, kind, what, name)
            fields[name] = value
        elif required:
            raise ProtocolError(E_SCHEMA, "%s.%s is missing" % (what, name))
    return fields


def _map_from_fields(fields: dict, schema: str, what: str) -> dict:
    """The CBOR map for named fields; a field the schema does not know is refused, not dropped."""
    mapping = {}
    known = 0
    for key, name, kind, required in schema_rows(schema):
        if name in fields:
            known += 1
        if name in fields and (fields[name] is not None or kind == "*"):
            value = fields[name]
            if isinstance(value, tuple):
                value = list(value)
            _check_value(value, kind, what, name)
            mapping[key] = value
        elif required:
            raise ProtocolError(E_SCHEMA, "%s.%s is missing" % (what, name))
    if known < len(fields):
        names = [row[1] for row in schema_rows(schema)]
        unknown = [field for field in fields if field not in names]
        raise ProtocolError(E_SCHEMA, "%s has no field %r" % (what, unknown[0]))
    return mapping


def _check_nested(mtype: int, fields: dict) -> None:
    """Rules that the flat key tables cannot say (SPEC.md §5) for the types a node receives; HELLO's and READINGS' are in upstream.py."""
    if mtype == ACK:
        counters = fields["counters"]
        if len(counters) > MAX_ACKS:
            raise ProtocolError(E_SCHEMA, "ACK names more than %d counters" % MAX_ACKS)
        for counter in counters:
            if not _kind_ok(counter, "u") or counter > _frame.MAX_COUNTER:
                raise ProtocolError(E_SCHEMA, "ACK counter out of range")
    elif mtype == TIME:
        if fields.get("unix", 0) > MAX_TIME or fields.get("ms", 0) > MAX_MS:
            raise ProtocolError(E_SCHEMA, "TIME beyond unix %d or ms %d" % (MAX_TIME, MAX_MS))
    elif mtype == CONFIG:  # values: text -> any; keys: [text]; errors: text -> text (SPEC.md §5.8)
        errors = fields.get("errors", {})
        for text in list(fields.get("values", {})) + fields.get("keys", []) + list(errors) + list(errors.values()):
            if not isinstance(text, str):
                raise ProtocolError(E_SCHEMA, "CONFIG: a key in values, keys or errors, or an error, is not text")


def decode_payload(mtype: int, payload: bytes) -> dict:
    """Named fields of a known message type's payload; an empty payload is an empty map."""
    schema = SCHEMAS.get(mtype)
    if schema is None:
        raise ProtocolError(E_TYPE, "unknown message type 0x%02x" % mtype)
    mapping = cbor.loads(payload) if payload else {}
    name = NAMES[mtype]
    fields = _fields_from_map(mapping, schema, name)
    if mtype in (HELLO, READINGS):  # their receiver's rules are a module of their own: not on a node's heap
        from . import upstream

        upstream.decoded(mtype, fields)
    else:
        _check_nested(mtype, fields)
    return fields


def encode_payload(mtype: int, fields: dict) -> bytes:
    """CBOR payload for named fields; fields the schema does not know are refused, not dropped."""
    schema = SCHEMAS.get(mtype)
    if schema is None:
        raise ProtocolError(E_TYPE, "unknown message type 0x%02x" % mtype)
    name = NAMES[mtype]
    mapping = _map_from_fields(fields, schema, name)
    if mtype == HELLO:
        mapping[4] = [_map_from_fields(channel, _CHANNEL_SCHEMA, "HELLO.channels") for channel in mapping[4]]
        for channel in mapping[4]:
            if channel.get(2) == 0:
                del channel[2]  # scale 0 is the default: not sent
    if mtype in (HELLO, READINGS):
        if sys.implementation.name != "micropython":
            # A node sends these and never receives them: it builds them within the rules (its
            # HELLO from constants, tests/test_roles.py encodes every role's here; READINGS of at
            # most 12 samples) and the gateway checks what arrives. So the receiver's rules
            # (upstream.py) are checked on encoding on CPython only, not on a node's small heap.
            from . import upstream

            upstream.check(mtype, fields)
    else:
        _check_nested(mtype, fields)
    return cbor.dumps(mapping)


def encode(message: Message, key: bytes | None = None) -> bytes:
    """The message as wire bytes: COBS-encoded frame plus delimiter (flag AUTH: tagged under key, SPEC.md §3.4)."""
    payload = encode_payload(message.type, message.fields)
    return _frame.to_wire(_frame.Frame(message.type, message.node_id, message.counter, payload, message.flags, message.version), key)


def decode_frame(frame: _frame.Frame) -> Message:
    """Payload of an integrity-checked frame into a Message; errors carry the sender."""
    try:
        fields = decode_payload(frame.type, frame.payload)
    except ProtocolError as error:
        error.node_id = frame.node_id
        error.counter = frame.counter
        error.mtype = frame.type
        error.flags = frame.flags
        raise
    message = Message(frame.type, frame.node_id, frame.counter, fields, frame.flags, frame.version)
    if frame.key_index >= 0:
        message.key_index = frame.key_index
    return message
