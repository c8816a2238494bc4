"""The rules of HELLO and READINGS that the flat schema lines cannot say (SPEC.md §5.3, §5.4), and the names of
STATUS `air`'s numbered keys (§5.7).

These types travel only upstream: a node sends them and never receives them. A module
of their own so that a node does not hold the receiver's checks on its small heap:
messages imports it to decode a HELLO or READINGS (the gateway; the vectors on both
interpreters), and on CPython to check one it encodes.
"""

from .errors import E_SCHEMA, ProtocolError
from .messages import (
    _CHANNEL_SCHEMA,
    HELLO,
    MAX_CHANNELS,
    MAX_COMMAND_NAME,
    MAX_COMMANDS,
    MAX_OFFSET,
    MAX_SAMPLES,
    MAX_SCALE,
    MAX_TIME,
    MIN_OFFSET,
    MIN_TIME,
    NAME_CHARS,
    _fields_from_map,
    _kind_ok,
)

# STATUS `air` keys (SPEC.md §5.7): a key's number is its position here, so a name is only ever appended (nodes in
# the field send the numbers). A radio node sends the numbers (on the air each byte is airtime, and the names were
# over a third of its STATUS); a bridge, on its cable, sends the names. firmware/radio_port.py has const() copies.
AIR_KEYS = (
    "tx",
    "tx_ms",
    "rx",
    "rx_ms",
    "dropped",
    "sf",
    "power",
    "fallback",
    "margin",
    "freq",
    "crc",
    "relayed",
    "late",
    "budget_ms",
    "wait_ms",
)


def air_names(air: dict) -> dict:
    """STATUS `air` with its numbered keys named (SPEC.md §5.7): a number wins over its name sent as text too;
    other keys (names, numbers past the table) as they came, for the receiver to keep those it knows."""
    named = {key: value for key, value in air.items() if not _air_number(key)}
    for key, value in air.items():
        if _air_number(key):
            named[AIR_KEYS[key]] = value
    return named


def _air_number(key: object) -> bool:
    return isinstance(key, int) and 0 <= key < len(AIR_KEYS)  # a map key is an int or text (cbor.py)


def decoded(mtype: int, fields: dict) -> None:
    """A decoded HELLO's channels as maps of names (scale 0 when absent); then the rules checked."""
    if mtype != HELLO:
        check(mtype, fields)
        return
    channels = []
    for index, channel in enumerate(fields["channels"]):
        entry = _fields_from_map(channel, _CHANNEL_SCHEMA, "HELLO.channels[%d]" % index)
        if "scale" not in entry:
            entry["scale"] = 0
        channels.append(entry)
    fields["channels"] = channels
    check(mtype, fields, True)


def check(mtype: int, fields: dict, specs: bool = False) -> None:
    """Raises ProtocolError (schema) for a HELLO or READINGS that breaks a rule; `specs`: parse a HELLO's command specs too."""
    if mtype != HELLO:
        _check_readings(fields)
        return
    proto = fields["proto"]
    if len(proto) != 2 or not _kind_ok(proto[0], "u") or not _kind_ok(proto[1], "u"):
        raise ProtocolError(E_SCHEMA, "HELLO.proto must be [major, minor]")
    if len(fields["channels"]) > MAX_CHANNELS:
        raise ProtocolError(E_SCHEMA, "HELLO has more than %d channels" % MAX_CHANNELS)
    names: list = []
    for index, channel in enumerate(fields["channels"]):
        scale = channel.get("scale", 0) if isinstance(channel, dict) else 0
        if isinstance(scale, int) and not -MAX_SCALE <= scale <= MAX_SCALE:
            raise ProtocolError(E_SCHEMA, "HELLO channel scale %d is beyond %d" % (scale, MAX_SCALE))
        name = channel.get("name") if isinstance(channel, dict) else None
        if isinstance(name, str):
            if not name or name in names or [char for char in name if char not in NAME_CHARS]:
                raise ProtocolError(E_SCHEMA, "HELLO channel %d name: not 1+ of A-Z a-z 0-9 - . _, or taken" % index)
            names.append(name)
    commands = fields.get("commands", {})
    if len(commands) > MAX_COMMANDS:
        raise ProtocolError(E_SCHEMA, "HELLO offers more than %d commands" % MAX_COMMANDS)
    for command in commands:
        spec = commands[command]
        if not isinstance(command, str) or not isinstance(spec, str) or not 0 < len(command) <= MAX_COMMAND_NAME:
            raise ProtocolError(E_SCHEMA, "HELLO.commands: a name or argument spec is not text, or a name is not 1-16 long")
        if [char for char in command if char not in NAME_CHARS]:
            raise ProtocolError(E_SCHEMA, "HELLO command name: not 1+ of A-Z a-z 0-9 - . _")
        if spec and specs:  # the receiver's check of the specs (a node's own are constants)
            from . import argspec

            argspec.rows(spec)


def _check_readings(fields: dict) -> None:
    base = fields.get("base_time")
    if base is not None and not MIN_TIME <= base <= MAX_TIME:
        raise ProtocolError(E_SCHEMA, "READINGS.base_time is beyond 2^28 ... 2^32-1")
    samples = fields["samples"]
    if len(samples) % 3:
        raise ProtocolError(E_SCHEMA, "READINGS.samples length %d is not a multiple of 3" % len(samples))
    if len(samples) > 3 * MAX_SAMPLES:
        raise ProtocolError(E_SCHEMA, "READINGS has more than %d samples" % MAX_SAMPLES)
    for index in range(0, len(samples), 3):
        channel = samples[index]
        if not _kind_ok(channel, "u") or channel >= MAX_CHANNELS:
            raise ProtocolError(E_SCHEMA, "sample %d has a bad channel index" % (index // 3))
        offset = samples[index + 2]
        if not _kind_ok(samples[index + 1], "n") or not _kind_ok(offset, "n"):
            raise ProtocolError(E_SCHEMA, "sample %d has a non-numeric value or offset" % (index // 3))
        if not MIN_OFFSET <= offset <= MAX_OFFSET:
            raise ProtocolError(E_SCHEMA, "sample %d has an offset beyond 2^31 s" % (index // 3))
        if base is not None and base + offset < MIN_TIME:
            raise ProtocolError(E_SCHEMA, "sample %d: base_time + dt is below 2^28" % (index // 3))
        value = samples[index + 1]
        if isinstance(value, float) and value - value != 0:  # NaN or +-inf (x - x is 0.0 for every finite x)
            raise ProtocolError(E_SCHEMA, "sample %d has a value that is not a finite number" % (index // 3))
