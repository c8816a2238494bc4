"""A node on a bare HAL (firmware/node.py on MicroPython, no UART, no clock), keyed or not
(a `key` record in FOLDER, as provisioning writes it): says whether protocols/auth.py was
loaded, what the node holds on the heap after its HELLO and the given frames, and what
they did. Portable; tests/test_firmware_auth.py judges it.

Usage: keyed_node_check.py FOLDER [WIRE_HEX]. WIRE_HEX: downlink frames (COBS and
delimiters) fed to the node's UART. Prints one JSON line.
"""

import gc
import json
import sys

from firmware.storage import Storage


class Bare:
    heap_reserved = 0

    def uptime_ms(self):
        return 0


class Wire:
    def __init__(self, incoming):
        self.sent = b""
        self.incoming = incoming

    def write(self, data):
        self.sent += data

    def read_available(self, buffer):
        count = min(len(buffer), len(self.incoming))
        buffer[:count] = self.incoming[:count]
        self.incoming = self.incoming[count:]
        return count


def run(folder, incoming):
    from firmware import hal_unix
    from firmware.node import Node

    hal = Bare()
    hal.storage = Storage(folder)
    hal.seed = 3
    hal.role = "sensor"
    hal.hw_model = "unix-emulation"
    hal.unique_id = b"\xe1\x00\x00\x00\x00\x00\x00\x03"
    hal.interval = 10
    hal.status_interval = 60
    hal.reset_cause = 1
    hal.uart = Wire(incoming)
    hal._pins = []
    hal.sources = lambda role: hal_unix.Hal.sources(hal, role)
    gc.collect()
    before = gc.mem_alloc()
    node = Node(hal)
    node.hello()
    node.receive()
    gc.collect()
    return {
        "auth_loaded": "protocols.auth" in sys.modules,
        "heap": gc.mem_alloc() - before,
        "rx_errors": node.rx_errors,
        "time_set": node.offset_ms is not None,
        "sent": hal.uart.sent.hex(),
    }


print(json.dumps(run(sys.argv[1], bytes.fromhex(sys.argv[2]) if len(sys.argv) > 2 else b"")))
