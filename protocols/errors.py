"""The one error family the wire can raise (SPEC.md §9).

Every decoding failure is a `ProtocolError` with a stable numeric reason code,
so a gateway can count it, log it and send it back in a REJECT frame.
"""

from ._compat import const

E_COBS = const(1)  # COBS block points past the end of the frame
E_TOO_LONG = const(2)  # frame longer than MAX_FRAME decoded (or its COBS form longer than MAX_ENCODED)
E_TOO_SHORT = const(3)  # shorter than header + trailer
E_CRC = const(4)  # CRC-32 mismatch
E_VERSION = const(5)  # unknown major protocol version
E_TYPE = const(6)  # unknown message type
E_CBOR = const(7)  # payload is not well-formed CBOR of the accepted subset
E_LIMIT = const(8)  # a CBOR nesting, count or size limit was exceeded
E_SCHEMA = const(9)  # well-formed CBOR, but a required field is missing or has the wrong type
E_AUTH = const(10)  # authenticated frame, and no key to check it (or the tag does not match)
E_STALE = const(11)  # frame counter far behind the receiver's window: replay or lost node state
E_UNKNOWN_NODE = const(12)  # READINGS from a node whose HELLO the receiver does not have

REASONS = {
    E_COBS: "cobs",
    E_TOO_LONG: "too_long",
    E_TOO_SHORT: "too_short",
    E_CRC: "crc",
    E_VERSION: "version",
    E_TYPE: "type",
    E_CBOR: "cbor",
    E_LIMIT: "limit",
    E_SCHEMA: "schema",
    E_AUTH: "auth",
    E_STALE: "stale",
    E_UNKNOWN_NODE: "unknown_node",
}


class ProtocolError(ValueError):
    """A frame or payload the protocol does not accept.

    `code` is one of the E_* constants; `node_id` and `counter` are filled in
    when the header was readable, so the error can be tied to a sender (and
    answered with REJECT, SPEC.md §5.12); `mtype` and `flags` too, so that
    no REJECT answers an ACK, a REJECT or a frame marked DOWNLINK.
    """

    def __init__(
        self,
        code: int,
        detail: str = "",
        node_id: bytes | None = None,
        counter: int | None = None,
        mtype: int | None = None,
        flags: int = 0,
    ):
        self.reason = REASONS.get(code, "error")
        super().__init__("%s: %s" % (self.reason, detail) if detail else self.reason)
        self.code = code
        self.detail = detail
        self.node_id = node_id
        self.counter = counter
        self.mtype = mtype
        self.flags = flags
