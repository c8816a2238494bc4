"""Frames mixed with pseudo-random line noise, fed in odd-sized pieces (portable).

Prints one JSON line: the counters recovered, the number of errors raised and
the bytes dropped. Deterministic for a seed, so CPython and MicroPython must
print the same line; pytest checks that every frame sent was recovered.
"""

import json
import sys


def lcg(seed):
    state = seed & 0xFFFFFFFF
    while True:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        yield state


def build(seed, frames):
    from protocols import messages
    from protocols.messages import Message, encode

    rand = lcg(seed)
    stream = bytearray()
    sent = []
    node = bytes([0, 0, 0xA4, 0xCF, 0x12, 0xB3, 0xC4, 0xD5])
    for counter in range(1, frames + 1):
        noise = bytes([next(rand) & 0xFF for _ in range(next(rand) % 48)])
        samples = [0, counter, 0, 1, (next(rand) % 4000) / 4.0, 1]
        wire = encode(Message(messages.READINGS, node, counter, {"base_time": 1795000000 + counter, "samples": samples}, 2))
        stream += noise + b"\x00" + wire
        sent.append(counter)
    return bytes(stream), sent


def run(seed, frames):
    from protocols.errors import ProtocolError
    from protocols.stream import StreamDecoder

    stream, sent = build(seed, frames)
    rand = lcg(seed + 1)
    decoder = StreamDecoder()
    received = []
    errors = 0
    pos = 0
    while pos < len(stream):
        step = 1 + next(rand) % 90
        decoder.feed(stream[pos : pos + step])
        pos += step
        for event in decoder.drain():
            if isinstance(event, ProtocolError):
                errors += 1
            else:
                received.append(event.counter)
    return {"sent": sent, "received": received, "errors": errors, "dropped": decoder.bytes_dropped}


def main():
    sys.path.insert(0, sys.argv[1])
    print(json.dumps(run(int(sys.argv[2]), int(sys.argv[3]))))


if __name__ == "__main__":
    main()
