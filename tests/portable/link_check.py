# Link adaptation on a radio node (SPEC.md 5.8, 5.11): firmware/node.py over firmware/radio_port.py on a
# scripted radio and a stepped clock, on the MicroPython unix port. The gateway's CONFIG set of sf and
# tx_power arrives in a receive window, applies from the next uplink and is kept on flash; bad values are
# refused with a reason; 32 uplinks with nothing heard in their windows send the node back to its own SF at
# full power. Usage: link_check.py FOLDER. Prints JSON; tests/test_radio.py checks it.
import binascii
import json
import sys

from firmware.radio_port import RadioPort
from firmware.storage import Storage
from protocols import frame as fr
from protocols import messages, upstream

NODE_ID = b"\xe1\x00\x00\x00\x00\x00\x00\x07"


class Radio:
    def __init__(self):
        self.log = []  # ["tx", freq, sf, power, frame hex] and ["rx", freq, sf]
        self.downlinks = []  # frames heard in the next window opened
        self.setting = None

    def configure(self, freq, sf, bw=125000, cr=1, power_dbm=14, preamble=8, invert_iq=False):
        self.setting = (freq, sf, power_dbm, invert_iq)

    def send(self, payload):
        self.log.append(["tx", self.setting[0], self.setting[1], self.setting[2], binascii.hexlify(payload).decode()])

    def tx_done(self):
        return True

    def start_receive(self):
        self.log.append(["rx", self.setting[0], self.setting[1]])

    def poll(self):
        return (self.downlinks.pop(0), -100, 5.0) if self.downlinks else None

    def receiving(self):
        return False

    def sleep(self):
        pass

    def begin(self):
        pass


class Clock:
    now = 0

    def __call__(self):
        return self.now


class Hal:
    heap_reserved = 0
    hw_model = "unix-emulation"
    role = "lora_sensor"
    seed = 7
    unique_id = NODE_ID
    interval = 3600  # no sampling round gets in the way: the check sends the frames
    status_interval = 86400
    reset_cause = 1

    def __init__(self, folder, clock):
        self.storage = Storage(folder)
        self.clock = clock
        self.radio = Radio()
        self.uart = RadioPort(self.radio, clock, lambda ms: None, 9, 14, (868100000,))

    def uptime_ms(self):
        return self.clock.now

    def sources(self, role):
        return []


def config_set(counter, values, wire_id):
    fields = {"op": messages.CONFIG_SET, "values": values, "id": wire_id}
    payload = messages.encode_payload(messages.CONFIG, fields)
    return bytes(fr.pack(fr.Frame(messages.CONFIG, NODE_ID, counter, payload, fr.F_ACK_REQ | fr.F_DOWNLINK)))


def ack(counter, acked, node_id=NODE_ID):
    payload = messages.encode_payload(messages.ACK, {"counters": [acked]})
    return bytes(fr.pack(fr.Frame(messages.ACK, node_id, counter, payload, fr.F_DOWNLINK)))


def other_node_frame(counter):
    return ack(counter, counter, b"\xe1\x00\x00\x00\x00\x00\x00\x08")


def settle(node, clock):
    # 100 ms steps until the port has sent all it holds and its windows closed (the duty cycle, 0-4 s of chance)
    port = node.hal.uart
    for _ in range(2000):
        clock.now += 100
        port.pump()
        node.receive()  # as the node's loop does: a frame from a window is handled at once
        if not port.queue and port.state == 0:
            return
    raise RuntimeError("the port never went idle")


def uplink(node, clock, value):
    node.send(messages.READINGS, {"samples": [0, value, 0]})
    settle(node, clock)


def run(folder):
    from firmware.node import Node

    out = {"hello": []}  # (sf, dBm, frame hex) of a HELLO at SF9 and at SF12: the offer of commands only at SF9
    clock = Clock()
    for sf in (9, 12):
        hal = Hal(folder + "-hello%d" % sf, clock)
        hal.uart.sf = sf
        node = Node(hal)
        node.hello()
        hal.radio.downlinks.append(ack(900, node.hello_pending))  # heard in its RX1: not sent again
        settle(node, clock)
        out["hello"].append([entry[2:] for entry in hal.radio.log if entry[0] == "tx"][-1])
    hal = Hal(folder, clock)
    node = Node(hal)
    radio = hal.radio
    radio.downlinks.append(config_set(1000, {"sf": 7, "tx_power": 8, "margin_db": 11}, 5))
    uplink(node, clock, 1)  # heard in its RX1: the node answers (ACK, CONFIG report) at the new setting
    out["advised"] = radio.log
    out["config_json"] = json.loads(hal.storage.get("config.json"))
    air = hal.uart.report(clock.now)
    out["air_numbered"] = all(isinstance(key, int) for key in air)  # on the air each byte is airtime (SPEC.md 5.7)
    out["air"] = upstream.air_names(air)
    radio.log = []
    radio.downlinks.append(config_set(1001, {"sf": 13, "tx_power": 1.5, "margin_db": 200, "sf_": 8}, 6))
    uplink(node, clock, 2)
    out["refused"] = radio.log  # the report's errors; still SF7 at 8 dBm
    out["refused_air"] = [hal.uart.sf, hal.uart.power]

    again = Hal(folder, clock)  # a reset: config.json gives the gateway's setting back
    Node(again)
    out["rebooted"] = [again.uart.sf, again.uart.power, again.uart.link]

    radio.log = []
    out["since_heard"] = hal.uart.silent  # the ACK and the report went after the last frame heard
    for value in range(32 - hal.uart.silent):  # nothing for it in 32 uplinks' windows: the next goes at its own SF
        if value % 4 == 0:  # another node's downlink heard in its window says nothing of its own link
            radio.downlinks.append(other_node_frame(2000 + value))
        uplink(node, clock, 10 + value)
    out["silent"] = [entry[1:4] for entry in radio.log if entry[0] == "tx"][-1]
    uplink(node, clock, 99)
    out["fell_back"] = [entry[1:4] for entry in radio.log if entry[0] == "tx"][-1]
    out["fell_back_air"] = upstream.air_names(hal.uart.report(clock.now))
    out["fell_back_json"] = json.loads(hal.storage.get("config.json"))

    from firmware import downlink

    class Wire:
        def write(self, data):
            pass

    wired = Hal(folder + "/wired", clock)
    wired.uart = Wire()  # a node on a cable: no link to adapt
    out["wired"] = downlink.configure(Node(wired), {"op": messages.CONFIG_SET, "values": {"sf": 7, "tx_power": 8}})
    return out


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
