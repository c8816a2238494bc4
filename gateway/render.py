"""Human-readable one-line descriptions of protocol messages, for logs and the CLI."""

from __future__ import annotations

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
