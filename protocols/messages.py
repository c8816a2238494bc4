"""Message types and their CBOR payload schemas (SPEC.md §5).

A payload is a CBOR map with small integer keys. The tables below map each key
to a field name and a kind; decoding turns keys into names, checks kinds and
required fields, and ignores keys it does not know (forward compatibility).
"""

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
TYPES = {name: mtype for mtype, name in NAMES.items()}

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
MAX_ACKS = const(32)  # counters per ACK frame

# Kinds: u unsigned int, i int, n number (int or float), t text, b bytes,
# a array, m map. Each row: (key, name, kind, required).
SCHEMAS = {
    HELLO: (
        (0, "proto", "a", True),
        (1, "fw_version", "t", True),
        (2, "hw_model", "t", True),
        (3, "caps", "u", True),
        (4, "channels", "a", True),
        (5, "interval", "n", False),
    ),
    READINGS: (
        (0, "base_time", "n", False),
        (1, "samples", "a", True),
    ),
    ACK: ((0, "counters", "a", True),),
    TIME: (
        (0, "unix", "u", False),
        (1, "ms", "u", False),
    ),
    STATUS: (
        (0, "uptime", "u", True),
        (1, "free_heap", "u", False),
        (2, "reset_cause", "u", False),
        (3, "battery_mv", "u", False),
        (4, "rssi", "i", False),
        (5, "snr", "n", False),
        (6, "dropped", "u", False),
        (7, "retransmits", "u", False),
        (8, "rx_errors", "u", False),
        (9, "heap_peak", "u", False),
    ),
    CONFIG: (
        (0, "op", "u", True),
        (1, "values", "m", False),
        (2, "keys", "a", False),
        (3, "errors", "m", False),
    ),
    COMMAND: (
        (0, "id", "u", True),
        (1, "action", "t", True),
        (2, "args", "m", False),
    ),
    COMMAND_RESULT: (
        (0, "id", "u", True),
        (1, "outcome", "u", True),
        (2, "detail", "t", False),
        (3, "value", "*", False),
    ),
    LOG: (
        (0, "severity", "u", True),
        (1, "text", "t", True),
    ),
    RADIO_RX: (
        (0, "frame", "b", True),
        (1, "rssi", "i", True),
        (2, "snr", "n", True),
        (3, "freq", "u", True),
        (4, "sf", "u", True),
        (5, "bw", "u", False),
    ),
    RADIO_TX: (
        (0, "frame", "b", True),
        (3, "freq", "u", True),
        (4, "sf", "u", True),
        (5, "bw", "u", False),
        (6, "power", "i", False),
        (7, "delay_ms", "u", False),
    ),
    REJECT: (
        (0, "reason", "u", True),
        (1, "detail", "t", False),
        (2, "counter", "u", False),
        (3, "type", "u", False),
    ),
}

_CHANNEL_SCHEMA = (
    (0, "name", "t", True),
    (1, "unit", "t", True),
    (2, "scale", "i", False),
)


class Message:
    """A frame's header plus its payload decoded into named fields."""

    def __init__(
        self, mtype: int, node_id: bytes, counter: int, fields: dict | None = None, flags: int = 0, version: int = _frame.VERSION
    ) -> None:
        self.type = mtype
        self.node_id = node_id
        self.counter = counter
        self.fields = fields if fields is not None else {}
        self.flags = flags
        self.version = version

    @property
    def name(self) -> str:
        return NAMES.get(self.type, "0x%02x" % self.type)

    def __repr__(self) -> str:
        return "Message(%s, node=%s, counter=%d, flags=0x%02x, %r)" % (
            self.name,
            _frame.node_hex(self.node_id),
            self.counter,
            self.flags,
            self.fields,
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Message)
            and self.type == other.type
            and self.node_id == other.node_id
            and self.counter == other.counter
            and self.flags == other.flags
            and self.version == other.version
            and self.fields == other.fields
        )


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


def _fields_from_map(mapping: object, schema: tuple, what: str) -> dict:
    if not isinstance(mapping, dict):
        raise ProtocolError(E_SCHEMA, "%s is not a map" % what)
    fields = {}
    for key, name, kind, required in schema:
        if key in mapping:
            value = mapping[key]
            if not _kind_ok(value, kind):
                raise ProtocolError(E_SCHEMA, "%s.%s has the wrong type" % (what, name))
            fields[name] = value
        elif required:
            raise ProtocolError(E_SCHEMA, "%s.%s is missing" % (what, name))
    return fields


def _map_from_fields(fields: dict, schema: tuple, what: str) -> dict:
    mapping = {}
    for key, name, kind, required in schema:
        if name in fields and (fields[name] is not None or kind == "*"):
            value = fields[name]
            if isinstance(value, tuple):
                value = list(value)
            if not _kind_ok(value, kind):
                raise ProtocolError(E_SCHEMA, "%s.%s has the wrong type" % (what, name))
            mapping[key] = value
        elif required:
            raise ProtocolError(E_SCHEMA, "%s.%s is missing" % (what, name))
    return mapping


def _check_nested(mtype: int, fields: dict) -> None:
    """Rules that the flat key tables cannot say (SPEC.md §5)."""
    if mtype == HELLO:
        proto = fields["proto"]
        if len(proto) != 2 or not _kind_ok(proto[0], "u") or not _kind_ok(proto[1], "u"):
            raise ProtocolError(E_SCHEMA, "HELLO.proto must be [major, minor]")
        if len(fields["channels"]) > MAX_CHANNELS:
            raise ProtocolError(E_SCHEMA, "HELLO has more than %d channels" % MAX_CHANNELS)
    elif mtype == READINGS:
        samples = fields["samples"]
        if len(samples) % 3:
            raise ProtocolError(E_SCHEMA, "READINGS.samples length %d is not a multiple of 3" % len(samples))
        if len(samples) > 3 * MAX_SAMPLES:
            raise ProtocolError(E_SCHEMA, "READINGS has more than %d samples" % MAX_SAMPLES)
        for index in range(0, len(samples), 3):
            channel = samples[index]
            if not _kind_ok(channel, "u") or channel >= MAX_CHANNELS:
                raise ProtocolError(E_SCHEMA, "sample %d has a bad channel index" % (index // 3))
            if not _kind_ok(samples[index + 1], "n") or not _kind_ok(samples[index + 2], "n"):
                raise ProtocolError(E_SCHEMA, "sample %d has a non-numeric value or offset" % (index // 3))
    elif mtype == ACK:
        counters = fields["counters"]
        if len(counters) > MAX_ACKS:
            raise ProtocolError(E_SCHEMA, "ACK names more than %d counters" % MAX_ACKS)
        for counter in counters:
            if not _kind_ok(counter, "u") or counter > _frame.MAX_COUNTER:
                raise ProtocolError(E_SCHEMA, "ACK counter out of range")
    elif mtype == CONFIG:
        for key in fields.get("values", {}):
            if not isinstance(key, str):
                raise ProtocolError(E_SCHEMA, "CONFIG.values keys must be text")


def decode_payload(mtype: int, payload: bytes) -> dict:
    """Named fields of a known message type's payload; an empty payload is an empty map."""
    schema = SCHEMAS.get(mtype)
    if schema is None:
        raise ProtocolError(E_TYPE, "unknown message type 0x%02x" % mtype)
    mapping = cbor.loads(payload) if payload else {}
    name = NAMES[mtype]
    fields = _fields_from_map(mapping, schema, name)
    if mtype == HELLO:
        channels = []
        for index, channel in enumerate(fields["channels"]):
            entry = _fields_from_map(channel, _CHANNEL_SCHEMA, "HELLO.channels[%d]" % index)
            if "scale" not in entry:
                entry["scale"] = 0
            channels.append(entry)
        fields["channels"] = channels
    _check_nested(mtype, fields)
    return fields


def encode_payload(mtype: int, fields: dict) -> bytes:
    """CBOR payload for named fields; fields the schema does not know are refused, not dropped."""
    schema = SCHEMAS.get(mtype)
    if schema is None:
        raise ProtocolError(E_TYPE, "unknown message type 0x%02x" % mtype)
    name = NAMES[mtype]
    known = [row[1] for row in schema]
    for field in fields:
        if field not in known:
            raise ProtocolError(E_SCHEMA, "%s has no field %r" % (name, field))
    mapping = _map_from_fields(fields, schema, name)
    if mtype == HELLO:
        mapping[4] = [_map_from_fields(channel, _CHANNEL_SCHEMA, "HELLO.channels") for channel in mapping[4]]
        for channel in mapping[4]:
            if channel.get(2) == 0:
                del channel[2]  # scale 0 is the default: not sent
    _check_nested(mtype, fields)
    return cbor.dumps(mapping)


def encode(message: Message) -> bytes:
    """The message as wire bytes: COBS-encoded frame plus delimiter."""
    payload = encode_payload(message.type, message.fields)
    return _frame.to_wire(_frame.Frame(message.type, message.node_id, message.counter, payload, message.flags, message.version))


def decode_frame(frame: _frame.Frame) -> Message:
    """Payload of an integrity-checked frame into a Message; errors carry the sender."""
    try:
        fields = decode_payload(frame.type, frame.payload)
    except ProtocolError as error:
        error.node_id = frame.node_id
        error.counter = frame.counter
        raise
    return Message(frame.type, frame.node_id, frame.counter, fields, frame.flags, frame.version)
