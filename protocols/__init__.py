"""edgegw wire protocol: sans-I/O, the same code on MicroPython nodes and the CPython gateway.

Bytes in, messages out; nothing here touches a port, a socket, a clock or a file.
See SPEC.md beside this file for the contract.

On CPython the package re-exports the names most callers need. On MicroPython it
imports nothing: a node pays heap only for the submodules it imports itself.
"""

import sys

if sys.implementation.name != "micropython":
    from .errors import ProtocolError
    from .frame import Frame, node_hex, node_id_from_unique_id
    from .messages import Message, decode_frame, encode
    from .stream import StreamDecoder
    from .window import CounterWindow

    __all__ = [
        "CounterWindow",
        "Frame",
        "Message",
        "ProtocolError",
        "StreamDecoder",
        "decode_frame",
        "encode",
        "node_hex",
        "node_id_from_unique_id",
    ]
