# A battery node's link (firmware/radio_port.py) on the real SX1262 driver (firmware/sx1262.py) over the
# command-level emulated chip (firmware/emulated_sx1262.py), on a stepped clock: the uplink, then both class-A
# windows with a downlink heard in the first (its header before the window's 500 ms were over, its end after)
# and none in the second. What hal_board.py wires for `"radio": "sx1262"` on a lora_sensor. Prints JSON;
# tests/test_sx1262.py checks it.
import json

from firmware.emulated_sx1262 import EmulatedSX1262
from firmware.radio_port import RadioPort
from firmware.sx1262 import SX1262
from protocols import messages
from protocols.frame import F_ACK_REQ
from protocols.messages import Message, encode
from tests.portable.link_check import Clock


def run():
    out = {}
    clock = Clock()
    sent = []
    chip = EmulatedSX1262(lambda *args: sent.append([args[1], args[2], len(args[0])]), clock)
    radio = SX1262(chip, chip.cs, chip.busy)
    radio.begin()
    port = RadioPort(radio, clock, lambda ms: None, 9, 14, (868100000,))
    aired = []
    port.on_aired = lambda counter, now: aired.append(counter)
    port.write(encode(Message(messages.READINGS, b"\x00" * 8, 7, {"samples": [0, 1, 0]}, F_ACK_REQ)))
    clock.now = 5000  # past the first transmission's 0-4 s of chance
    port.pump()
    out["sent"] = [sent, chip.packet[4], chip.mode]  # standard I/Q, in TX
    while port.state == 1 and clock.now < 8000:  # _TX until TxDone
        clock.now += 10
        port.pump()
    tx_end = port.tx_end
    out["tx_done"] = [port.state, chip.mode, tx_end - 5000]
    clock.now = tx_end + 1000  # RX1 opens on the uplink's channel, I/Q inverted
    port.pump()
    out["rx1"] = [port.state, chip.mode, chip.freq, chip.sf, chip.packet[4]]
    clock.now += 450
    port.pump()
    chip.hear()  # a downlink's header at 450 ms: the window stays open past its 500 ms while the frame comes
    clock.now += 100
    port.pump()
    heard = [port.state, radio.receiving()]
    chip.deliver(b"\x01downlink", -100.0, 5.0)
    clock.now += 40
    port.pump()
    heard.extend((port.rx, len(port.inbox), port.state, chip.mode))
    out["rx1_heard"] = heard
    clock.now = tx_end + 2000  # RX2 on the downlink channel: nothing comes, it closes after 500 ms
    port.pump()
    out["rx2"] = [port.state, chip.mode, chip.freq, chip.packet[4]]
    opened = clock.now
    while port.state == 3 and clock.now < opened + 2000:
        clock.now += 10
        port.pump()
    out["rx2_closed"] = [port.state, clock.now - opened, chip.mode, aired, chip.refused]
    return out


if __name__ == "__main__":
    print(json.dumps(run()))
