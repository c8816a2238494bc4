"""The roles against their emulated worlds on MicroPython, in emulated time (portable).

Usage: roles_check.py FOLDER ROLE. A fake node collects events; the world files
are written here as the HIL writes them; the clock is a variable. Prints one
JSON line of what happened; tests/test_roles.py judges it.
"""

import json
import os
import sys

from firmware.storage import Storage


class Clock:
    def __init__(self):
        self.ms = 0

    def world(self):  # Unix seconds, as the emulations read the wall clock
        return 1800000000 + self.ms / 1000


class FakeNode:
    def __init__(self):
        self.events = []

    def event(self, source, values):
        self.events.append(list(values))
        return len(self.events)  # the frame counter it went out with


def write(path, text):
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.rename(path + ".tmp", path)


def run(role, node, clock, seconds, step_ms=20, after=None):
    # The node's loop: poll every step_ms of emulated time.
    end = clock.ms + int(seconds * 1000)
    while clock.ms < end:
        clock.ms += step_ms
        role.poll(node, clock.ms)
        if after is not None:
            after()


def streetlight(folder):
    from firmware.emulated_streetlight import EmulatedLamp
    from firmware.roles.streetlight import StreetLight

    clock = Clock()
    node = FakeNode()
    out = {}
    lamp = StreetLight(EmulatedLamp(folder, clock.world), Storage(folder), save_s=5)
    out["boot"] = list(lamp.read())
    run(lamp, node, clock, 1)
    out["dim40"] = list(lamp.command(node, "dim", {"level": 40}))
    out["after_dim40"] = list(lamp.read())
    levels = []
    out["dim80"] = list(lamp.command(node, "dim", {"level": 80, "fade_s": 4}))
    run(lamp, node, clock, 5, after=lambda: levels.append(lamp.level))
    out["fade"] = levels
    out["after_fade"] = list(lamp.read())
    run(lamp, node, clock, 6)
    out["hours_after_12s"] = lamp.read()[3]
    out["events_before_fault"] = list(node.events)
    write(folder + "/lamp.fault", "")
    fault_ms = clock.ms
    while not node.events and clock.ms - fault_ms < 5000:
        run(lamp, node, clock, 0.02)
    out["fault_after_ms"] = clock.ms - fault_ms
    out["fault_events"] = list(node.events)
    out["dim_failed"] = list(lamp.command(node, "dim", {"level": 60}))
    run(lamp, node, clock, 3)
    hours = lamp.read()[3]
    out["hours_while_failed"] = hours - out["fault_events"][0][3]
    os.remove(folder + "/lamp.fault")
    run(lamp, node, clock, 1)
    out["repaired_events"] = node.events[1:]
    again = StreetLight(EmulatedLamp(folder, clock.world), Storage(folder), save_s=5)  # a reboot
    out["rebooted"] = list(again.read())
    with open(folder + "/lamp.log") as handle:
        out["log"] = [[int(word) for word in line.split()] for line in handle]
    return out


def gauge(folder):
    from firmware.emulated_gauge import EmulatedWaterADC
    from firmware.roles.gauge import Gauge

    clock = Clock()
    node = FakeNode()
    out = {}
    start = clock.world()
    # Calm at 400 mm for 2 minutes, a slow rise (300 mm/h) for 10 minutes, then a flood wave:
    # +1,400 mm in 10 minutes (8,400 mm/h), 5 minutes at the top, down in 20 minutes.
    points = [(0, 400), (120, 400), (720, 450), (1320, 1850), (1620, 1850), (2820, 400)]
    write(folder + "/water.txt", "# t level\n" + "".join("%.3f %d\n" % (start + t, mm) for t, mm in points))
    gauge = Gauge(EmulatedWaterADC(folder + "/water.txt", 7, clock.world), Storage(folder))
    out["boot"] = list(gauge.read())
    seen = []

    def watch():
        if len(node.events) > len(seen):
            seen.append([clock.ms // 1000] + node.events[len(seen)])

    run(gauge, node, clock, 700, 100, watch)
    out["slow_rise"] = list(gauge.read())
    run(gauge, node, clock, 2300, 100, watch)
    out["events"] = seen
    out["set"] = list(gauge.command(node, "set_threshold", {"mm": 300}))  # below the calm water: a flood at once
    out["after_set"] = node.events[len(seen) :]
    out["rebooted"] = [Gauge(EmulatedWaterADC(folder + "/water.txt", 7, clock.world), Storage(folder)).mark]
    return out


def parking(folder):
    from firmware.emulated_parking import EmulatedMagnetometer
    from firmware.roles.parking import Parking

    clock = Clock()
    node = FakeNode()
    start = clock.world()
    visits = [(60, 300), (310, 600), (900, None)]  # a car leaves and the next one parks 10 s later; the last one stays
    write(folder + "/cars.txt", "".join("%.3f\n" % (start + a) if d is None else "%.3f %.3f\n" % (start + a, start + d) for a, d in visits))
    bay = Parking(EmulatedMagnetometer(folder + "/cars.txt", 11, clock.world), Storage(folder))
    times = []
    fields = [1000000, 0]  # lowest and highest field seen

    def watch():
        fields[0] = min(fields[0], bay.field)
        fields[1] = max(fields[1], bay.field)
        if len(node.events) > len(times):
            times.append(clock.ms / 1000)

    run(bay, node, clock, 1000, 20, watch)
    out = {"events": node.events, "times": times, "field_min": fields[0], "field_max": fields[1]}
    out["calibrate_occupied"] = list(bay.command(node, "calibrate", {}))
    return out


class Bare:
    def uptime_ms(self):
        return 0


def heap(folder, role):
    # What a role costs the node's heap: its modules (from the .mpy bundle, as the node runs
    # them) and its objects, after a collection, in a process of its own. The node's own
    # modules are loaded first: they are there whatever the role.
    import gc

    from firmware import hal_unix
    from firmware.node import Node  # noqa: F401

    hal = Bare()  # the unix HAL's fields that sources() uses, without its UART
    hal.folder = folder
    hal.seed = 3
    hal.storage = Storage(folder)
    hal.config = {"role": role}
    hal._pins = []
    gc.collect()
    before = gc.mem_free()
    sources = hal_unix.Hal.sources(hal, role)
    gc.collect()
    return {"role": role, "bytes": before - gc.mem_free(), "sources": len(sources)}


class Wire:
    def __init__(self):
        self.sent = b""

    def write(self, data):
        self.sent += data

    def read_available(self, buffer):
        return 0


def hello(folder, role, hw_model):
    # The node's own HELLO for this role, encoded by the node (firmware/node.py) on a HAL whose
    # board names itself hw_model: the bytes it wrote, in hex.
    from firmware import hal_unix
    from firmware.node import Node

    hal = Bare()
    hal.storage = Storage(folder)
    hal.seed = 3
    hal.role = role
    hal.hw_model = hw_model
    hal.unique_id = b"\xe1\x00\x00\x00\x00\x00\x00\x03"
    hal.interval = 10
    hal.status_interval = 60
    hal.reset_cause = 1
    hal.uart = Wire()
    hal._pins = []
    hal.sources = lambda role: hal_unix.Hal.sources(hal, role)
    Node(hal).hello()
    return {"role": role, "wire": hal.uart.sent.hex()}


folder, mode = sys.argv[1], sys.argv[2]
if mode.startswith("heap:"):
    print(json.dumps(heap(folder, mode[5:])))
elif mode.startswith("hello:"):
    print(json.dumps(hello(folder, mode[6:], sys.argv[3])))
else:
    print(json.dumps({"streetlight": streetlight, "gauge": gauge, "parking": parking}[mode](folder)))
