# firmware/radio_port.py (a node's link over the air) and firmware/roles/bridge.py on a scripted radio and a
# stepped clock, on the MicroPython unix port: the class-A windows' channels, times and I/Q, and a TxDone
# that never comes (the radio is started again, counted, and the node and bridge go on). Prints JSON;
# tests/test_radio.py checks it.
import json

from firmware.radio_port import RadioPort
from firmware.roles.bridge import Bridge
from protocols import messages
from protocols.frame import F_ACK_REQ, F_PRIORITY
from protocols.messages import Message, encode


class Radio:
    def __init__(self):
        self.log = []
        self.done = False  # TxDone: never, unless a test says
        self.crc_errors = 0
        self.coming = False  # receiving(): a preamble detected, unless a test says

    def configure(self, freq, sf, bw=125000, cr=1, power_dbm=14, preamble=8, invert_iq=False):
        self.log.append(["configure", freq, sf, invert_iq])

    def send(self, payload):
        self.log.append(["send", len(payload)])

    def tx_done(self):
        return self.done

    def start_receive(self):
        self.log.append(["receive"])

    def poll(self):
        return None

    def receiving(self):
        return self.coming

    def sleep(self):
        self.log.append(["sleep"])

    def begin(self):
        self.log.append(["begin"])


class Clock:
    now = 0

    def __call__(self):
        return self.now


def run():
    out = {}
    clock = Clock()
    radio = Radio()
    port = RadioPort(radio, clock, lambda ms: None, 9, 14, (868100000,))
    aired = []
    port.on_aired = lambda counter, now: aired.append([counter, now])
    port.write(encode(Message(messages.READINGS, b"\x00" * 8, 7, {"samples": [0, 1, 0]}, F_ACK_REQ)))
    clock.now = 5000  # past the first transmission's 0-4 s of chance
    port.pump()
    sent_at = clock.now
    clock.now += 600  # the airtime is over, no TxDone: still waiting for it
    port.pump()
    out["waiting"] = [port.state, port.dropped]
    clock.now += 500  # 500 ms past the airtime and no TxDone: the radio is started again
    port.pump()
    out["after_timeout"] = [port.state, port.dropped, ["begin"] in radio.log]
    for _ in range(40):  # the two windows: 100 ms steps
        clock.now += 100
        port.pump()
    out["windows"] = [entry for entry in radio.log if entry[0] in ("configure", "receive", "sleep")]
    out["aired"] = [aired, port.tx_end]  # told once, when the second window closed (no ACK came)
    out["tx_ms"] = [port.tx_ms >= 1100, clock.now - sent_at]

    # An idle port whose time-off is long over: a frame of the node's schedule waits 0 .. chance_ms (not the
    # same moment each round), an event goes at once
    def idle_port():
        clock.now = 0
        port = RadioPort(Radio(), clock, lambda ms: None, 9, 14, (868100000,))
        clock.now = 100000
        return port

    chance = []
    for trial in range(21):
        idle = idle_port()
        flags = F_ACK_REQ | (F_PRIORITY if trial == 20 else 0)
        idle.write(encode(Message(messages.READINGS, b"\x00" * 8, 9, {"samples": [0, 1, 0]}, flags)))
        idle.pump()
        chance.append([idle.state, idle.not_before - clock.now])
    out["chance"] = chance
    # An event written while a periodic frame waits out its chance: the event goes at once, the frame after it
    idle = idle_port()
    idle.write(encode(Message(messages.STATUS, b"\x00" * 8, 9, {"uptime": 100}, 0)))
    idle.pump()
    before = idle.state
    idle.write(encode(Message(messages.READINGS, b"\x00" * 8, 10, {"samples": [0, 1, 0]}, F_ACK_REQ | F_PRIORITY)))
    idle.pump()
    out["event_first"] = [before, idle.state, idle.aired is not None and int.from_bytes(idle.aired, "big"), len(idle.queue)]

    # A receiver that says a frame is coming holds the window open, at most the longest frame's airtime past it
    stuck = idle_port()
    stuck.radio.done = stuck.radio.coming = True
    stuck.write(encode(Message(messages.READINGS, b"\x00" * 8, 9, {"samples": [0, 1, 0]}, F_ACK_REQ | F_PRIORITY)))
    stuck.pump()
    while stuck.state != 3:  # _RX: the first window opened
        clock.now += 10
        stuck.pump()
    opened = clock.now
    while stuck.state == 3 and clock.now < opened + 10000:  # unbounded it would never close
        clock.now += 10
        stuck.pump()
    out["held"] = clock.now - opened

    # A frame of the node's schedule sent and not acknowledged goes after the next one waiting; events keep order
    fair = idle_port()
    fair.radio.done = True
    sent = []

    def aired_next(*frames):
        for frame in frames:
            fair.write(encode(frame))
        tx = fair.tx
        for _ in range(1000):  # 100 ms steps: the time-off (SF9: about 20 s) and the chance after it
            clock.now += 100
            fair.pump()
            if fair.tx > tx and fair.state == 0:  # on air, and both windows closed without an ACK
                sent.append(int.from_bytes(fair.again, "big"))
                return

    def reading(counter, flags=F_ACK_REQ):
        return Message(messages.READINGS, b"\x00" * 8, counter, {"samples": [0, counter, 0]}, flags)

    status = Message(messages.STATUS, b"\x00" * 8, 21, {"uptime": 100}, F_ACK_REQ)
    aired_next(reading(20))
    aired_next(reading(20), status)  # 20 again, and the STATUS: the STATUS first
    aired_next(status)  # the STATUS again: now 20, waiting since
    event = F_ACK_REQ | F_PRIORITY
    aired_next(reading(30, event))
    aired_next(reading(30, event), reading(31, event))  # an event again, and a newer one: in their order
    out["again"] = sent

    # A full queue (4 frames) leaves out the last in sending order (kept in the node's ring, it comes again), except
    # that of the node's own schedule one it keeps goes before a TIME request, which it does not keep
    def left_in(*frames):
        port = idle_port()
        for frame in frames:
            port.write(encode(frame))
        return [int.from_bytes(frame[11:15], "big") for frame in port.queue] + [port.dropped]

    def time_request(counter):
        return Message(messages.TIME, b"\x00" * 8, counter, {}, 0)

    def answer(counter):
        return Message(messages.ACK, b"\x00" * 8, counter, {"counters": [7]}, 0)

    def result(counter):
        return Message(messages.COMMAND_RESULT, b"\x00" * 8, counter, {"id": 1, "outcome": 0}, F_ACK_REQ)

    out["full"] = [
        left_in(reading(41), reading(42), reading(43), reading(44), time_request(45)),
        left_in(reading(41), reading(42), reading(43), time_request(44), reading(45)),
        left_in(time_request(40), reading(41, event), reading(42, event), reading(43, event), reading(44, event)),
        left_in(reading(41, event), reading(42, event), reading(43, event), time_request(44), reading(45, event)),
        left_in(answer(41), answer(42), answer(43), time_request(40), answer(44)),
        left_in(answer(41), answer(42), result(43), answer(44), answer(45)),
    ]

    bridge_radio = Radio()
    bridge = Bridge(bridge_radio, 868100000, 9)

    class Hal:
        def uptime_ms(self):
            return clock.now

    class Node:
        hal = Hal()

        def may_send(self):
            return True

    node = Node()
    clock.now = 100000
    fields = {"frame": b"x" * 20, "freq": 869525000, "sf": 9, "at": 100100}
    out["queued"] = [bridge.radio_tx(node, fields), bridge.radio_tx(node, dict(fields, at=120000))]
    clock.now = 100100
    bridge.poll(node, clock.now)
    out["bridge_sent"] = [bridge.tx, bridge_radio.log[-2:]]
    clock.now += 1000  # long past the airtime (113 ms) and the slack: no TxDone came
    bridge.poll(node, clock.now)
    out["bridge_after_timeout"] = [bridge.dropped, bridge.sending, bridge_radio.log[-4:]]
    return out


if __name__ == "__main__":
    print(json.dumps(run()))
