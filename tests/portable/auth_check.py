# Runs protocols/auth.py and the authenticated frame on fixed inputs and prints the results as JSON
# lines. Portable: imported by pytest on CPython (run()) and run on the MicroPython unix port
# (`micropython tests/portable/auth_check.py`); tests/test_auth.py compares the two and CPython's hmac.
import json

from protocols import auth
from protocols.errors import ProtocolError
from protocols.frame import F_AUTH, F_DOWNLINK, Frame, pack, unpack

CASES = (
    (bytes(range(32)), b""),
    (bytes(range(32)), b"edgegw"),
    (b"\xff" * 32, bytes(range(256)) * 3),
    (bytes([7 * i & 0xFF for i in range(32)]), b"\x00" * 64),
)
NODE = b"\xe1\x00\x00\x00\x00\x00\x00\x07"


def run():
    out = []
    for key, data in CASES:
        out.append(["tag", auth.tag(key, data).hex()])
    key = CASES[1][0]
    raw = pack(Frame(0x07, NODE, 41, b"\xa1\x00\x01", F_AUTH | F_DOWNLINK), key)
    out.append(["frame", bytes(raw).hex()])
    back = unpack(bytes(raw), lambda node_id: key if node_id == NODE else None)
    out.append(["unpacked", back.type, back.counter, back.flags, back.payload.hex()])
    for name, given, keys in (
        ("wrong key", bytes(raw), lambda node_id: b"\x01" * 32),
        ("no key", bytes(raw), None),
        ("flipped tag", bytes(raw[:-1]) + bytes([raw[-1] ^ 1]), lambda node_id: key),
        ("flipped payload", bytes(raw[:16]) + bytes([raw[16] ^ 0x10]) + bytes(raw[17:]), lambda node_id: key),
    ):
        try:
            unpack(given, keys)
            out.append([name, "accepted"])
        except ProtocolError as error:
            out.append([name, error.code])
    return out


if __name__ == "__main__":
    for line in run():
        print(json.dumps(line))
