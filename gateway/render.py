"""What nodes say, rendered for people and programs: one-line descriptions for logs and the CLI,
and any CBOR value made into valid JSON (SPEC.md §6.5)."""

from __future__ import annotations

import base64
import math
from typing import Any

from protocols import Message, ProtocolError, node_hex
from protocols.frame import F_ACK_REQ, F_AUTH, F_DOWNLINK, F_RETRY

_FLAG_NAMES = ((F_DOWNLINK, "down"), (F_ACK_REQ, "ack-req"), (F_RETRY, "retry"), (F_AUTH, "auth"))


def describe_error(error: BaseException) -> str:
    """An OS or library error as a short phrase for a log line: "No such file or directory"."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def describe_flags(flags: int) -> str:
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    return ",".join(names) or "-"


def describe_event(event: Message | ProtocolError) -> str:
    """One line for what a StreamDecoder.drain() gave: a message, or a bad frame as BAD FRAME."""
    if isinstance(event, ProtocolError):
        return "BAD FRAME %s" % event
    return describe_message(event)


def describe_message(message: Message) -> str:
    """`HELLO node=0000a4cf12b3c4d5 #1 [ack-req] v1.0 {...}`"""
    return "%s node=%s #%d [%s] v%d.%d %r" % (
        message.name,
        node_hex(message.node_id),
        message.counter,
        describe_flags(message.flags),
        message.version >> 4,
        message.version & 0x0F,
        message.fields,
    )


def json_value(value: Any) -> Any:
    """A decoded CBOR value as a value json.dumps(allow_nan=False) writes as valid JSON (RFC 8949 §6.1).

    Finite numbers, text, true, false and null stay what they are; NaN and the
    infinities become null; byte strings become base64url text without padding;
    an integer map key becomes its decimal text, and where that collides with a
    text key of the same map the text key keeps its value.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray):
        return base64.urlsafe_b64encode(bytes(value)).rstrip(b"=").decode("ascii")
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        converted = {key: json_value(item) for key, item in value.items() if isinstance(key, str)}
        for key, item in value.items():
            if not isinstance(key, str):
                converted.setdefault(str(key), json_value(item))
        return converted
    return value  # int, str, bool, None
