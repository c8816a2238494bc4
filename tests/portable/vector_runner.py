"""Runs the golden vectors through the protocol code and prints what it made of them.

Portable: the same file runs on CPython (imported by pytest) and on the
MicroPython unix port (`micropython vector_runner.py ROOT VECTORS.json`).
It only reports; the comparison with the expectations is done by pytest, so a
bug here cannot make both interpreters agree on a wrong answer.
"""

import json
import struct
import sys


def to_json(value):
    """JSON-safe form with exact floats and bytes: {"$f64": hex} and {"$bytes": hex}."""
    if value is True or value is False or value is None:
        return value
    if isinstance(value, float):
        return {"$f64": struct.pack(">d", value).hex()}
    if isinstance(value, int) or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, list) or isinstance(value, tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {"%s" % key if isinstance(key, str) else "#%d" % key: to_json(item) for key, item in value.items()}
    raise TypeError("unexpected %r" % (value,))


def from_json(value):
    """Inverse of to_json, also accepting plain JSON numbers for floats."""
    if isinstance(value, list):
        return [from_json(item) for item in value]
    if isinstance(value, dict):
        if "$f64" in value:
            return struct.unpack(">d", bytes.fromhex(value["$f64"]))[0]
        if "$float" in value:
            return float(value["$float"])
        if "$bytes" in value:
            return bytes.fromhex(value["$bytes"])
        return {int(key[1:]) if key.startswith("#") else key: from_json(item) for key, item in value.items()}
    return value


def message_to_json(message):
    from protocols import messages
    from protocols.frame import node_hex

    return {
        "type": messages.NAMES.get(message.type, message.type),
        "version": message.version,
        "flags": message.flags,
        "node_id": node_hex(message.node_id),
        "counter": message.counter,
        "fields": to_json(message.fields),
    }


def message_from_json(data):
    from protocols import messages
    from protocols.messages import Message

    return Message(
        next(t for t, n in messages.NAMES.items() if n == data["type"]),
        bytes.fromhex(data["node_id"]),
        data["counter"],
        from_json(data["fields"]),
        data["flags"],
        data.get("version", 0x10),
    )


def run_frame_vector(vector):
    """What the decoder makes of one frame vector, and what the encoder makes of its message."""
    from protocols.errors import ProtocolError
    from protocols.messages import encode
    from protocols.stream import StreamDecoder

    result = {"name": vector["name"]}
    decoder = StreamDecoder()
    decoder.feed(bytes.fromhex(vector["hex"]))
    try:
        message = decoder.next_message()
        result["message"] = None if message is None else message_to_json(message)
    except ProtocolError as error:
        result["error"] = error.reason
    if "message" in vector and not vector.get("decode_only"):
        result["encoded"] = encode(message_from_json(vector["message"])).hex()
    return result


def run_cbor_vector(vector):
    from protocols import cbor
    from protocols.errors import ProtocolError

    result = {"hex": vector["hex"]}
    try:
        result["decoded"] = to_json(cbor.loads(bytes.fromhex(vector["hex"])))
    except ProtocolError as error:
        result["error"] = error.reason
    if "value" in vector:
        result["encoded"] = cbor.dumps(from_json(vector["value"])).hex()
    return result


def run_window_vector(vector):
    """The class the counter window gives each step; NEW counters are accepted, a STALE HELLO resets."""
    from protocols import window

    names = {window.NEW: "new", window.DUPLICATE: "duplicate", window.STALE: "stale"}
    counters = window.CounterWindow()
    classes = []
    for step in vector["steps"]:
        counter = step[0]
        verdict = counters.check(counter)
        classes.append(names[verdict])
        if verdict == window.NEW:
            counters.accept(counter)
        elif verdict == window.STALE and len(step) > 2 and step[2] == "hello":
            counters.reset(counter)
    return {"classes": classes}


def run_all(vectors):
    return {
        "frames": [run_frame_vector(vector) for vector in vectors["frames"]],
        "cbor": [run_cbor_vector(vector) for vector in vectors["cbor"]],
        "window": [run_window_vector(vector) for vector in vectors["window"]],
    }


def main():
    root, path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, root)
    with open(path) as handle:
        vectors = json.load(handle)
    print(json.dumps(run_all(vectors)))


if __name__ == "__main__":
    main()
