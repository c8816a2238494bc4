# A radio node's events before its first TIME (SPEC.md 5.4): firmware/node.py over firmware/radio_port.py on
# the scripted radio of link_check.py, on the MicroPython unix port. An event with no clock is held; the TIME
# that comes dates it by the uptime it happened at; one whose TIME never comes goes undated after 60 s.
# Usage: held_event_check.py FOLDER. Prints JSON; tests/test_radio.py checks it.
import json
import os
import random
import sys

from protocols import cobs, messages
from protocols import frame as fr
from tests.portable.link_check import NODE_ID, Clock, Hal, ack


class Flood:
    CHANNELS = (("flood", "", 0),)

    def read(self):
        return (1,)


class EventHal(Hal):
    def __init__(self, folder, clock):
        for path in (folder[: folder.rindex("/")], folder):
            try:
                os.mkdir(path)
            except OSError:  # there already
                pass
        super().__init__(folder, clock)

    def sources(self, role):
        return [Flood()]


def time_frame(counter, unix, ms):
    payload = messages.encode_payload(messages.TIME, {"unix": unix, "ms": ms})
    return bytes(fr.pack(fr.Frame(messages.TIME, NODE_ID, counter, payload, fr.F_DOWNLINK)))


def uplinks(radio):
    return [entry[4] for entry in radio.log if entry[0] == "tx"]


def ack_all(node, first):
    # Every frame the node keeps acknowledged, as its windows would bring the gateway's ACKs (downlink counters from first)
    for index, counter in enumerate(list(node.out.counters)):
        node.hal.uart.inbox.append(cobs.encode(ack(first + index, counter), True))
        node.receive()


def run_until_quiet(node, clock, ms):
    # the node's loop in 100 ms steps: what is due is sent, the port's duty cycle and windows run
    for _ in range(ms // 100):
        clock.now += 100
        node.step()
        node.hal.uart.pump()


def run(folder):
    from firmware.node import Node

    # The port's chance waits (firmware/radio_port.py) drawn the same each run: with some draws the crowded queue
    # below was never full when a TIME request came (1 run in 10 failed on that, not on a rule)
    random.seed(1)
    out = {}
    clock = Clock()
    clock.now = 5000
    hal = EventHal(folder + "/dated", clock)
    node = Node(hal)
    source = node.sources[0]
    out["held_return"] = node.event(source, (1,))  # no clock yet: held, not sent
    run_until_quiet(node, clock, 8000)
    out["before_time"] = uplinks(hal.radio)
    hal.uart.inbox.append(cobs.encode(time_frame(900, 1700000000, 250), True))  # as a receive window delivers it
    clock.now = 20000
    node.receive()
    out["offset_ms"] = node.offset_ms
    run_until_quiet(node, clock, 40000)  # past the first uplink's time-off
    out["after_time"] = uplinks(hal.radio)
    run_until_quiet(node, clock, 120000)  # it has the time: no TIME request for 6 hours
    out["later"] = uplinks(hal.radio)[len(out["after_time"]) :]

    # Booted at uptime 0 (a node asks for its first TIME 60 s after boot, its last_time 0): by 59 s it has not asked
    clock.now = 0
    lone = EventHal(folder + "/undated", clock)
    node = Node(lone)
    node.event(node.sources[0], (1,))
    run_until_quiet(node, clock, 59000)  # the event was 59 s ago: still held
    out["at_59s"] = uplinks(lone.radio)
    run_until_quiet(node, clock, 40000)  # past 60 s, and the time-off of the last uplink
    out["at_99s"] = uplinks(lone.radio)
    # Nothing acknowledged yet: its TIME requests wait for the time-off of the event it keeps resending, one at most
    waiting = 0
    for _ in range(6):
        run_until_quiet(node, clock, 10000)
        waiting = max(waiting, len([frame for frame in lone.uart.queue if frame[1] == messages.TIME]))
    # Its frames acknowledged (as a gateway's windows would): the request goes, and the next 60 s later
    sent = uplinks(lone.radio)
    ack_all(node, 2000)
    run_until_quiet(node, clock, 120000)
    out["asked"] = [uplinks(lone.radio)[len(sent) :], waiting]
    # every counter taken below this went on air, at some time of the run
    out["spent"] = [lone.uart.queue == [], uplinks(lone.radio), node.counter.peek()]

    # Four frames nothing acknowledges keep the port's queue full: the requests due meanwhile would be refused
    clock.now = 0
    crowded = EventHal(folder + "/crowded", clock)
    node = Node(crowded)
    ack_all(node, 3000)  # its HELLO: the node asks for the time every 60 s
    for index in range(4):
        node.send(messages.READINGS, {"samples": [0, index, 0]})
    run_until_quiet(node, clock, 600000)
    waiting = [int.from_bytes(frame[11:15], "big") for frame in crowded.uart.queue if frame[1] == messages.TIME]
    out["crowded"] = [crowded.uart.dropped, uplinks(crowded.radio), waiting, node.out.counters, node.counter.peek()]
    return out


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
