# The SX1262 driver (firmware/sx1262.py) against the emulated chip (firmware/emulated_sx1262.py), printed
# as JSON. Portable: run on the MicroPython unix port by tests/test_sx1262.py.
import json
import time

from firmware.emulated_sx1262 import EmulatedSX1262
from firmware.sx1262 import SX1262
from tests.portable.sx1276_check import preamble


def run():
    out = []
    now = [0]
    sent = []
    chip = EmulatedSX1262(lambda *args: sent.append(args), lambda: now[0])
    radio = SX1262(chip, chip.cs, chip.busy)
    radio.begin()
    out.append(["begin", list(chip.commands), "%02x%02x" % (chip.registers[0x0740], chip.registers[0x0741]), chip.refused])
    radio.configure(868100000, 9, 125000, 1, 14)
    out.append(["config", list(chip.settings()), chip.power, list(chip.pa), chip.ldro])
    radio.configure(869525000, 12, power_dbm=22)
    out.append(["ldro", chip.ldro, chip.power, list(chip.pa), list(chip.settings())])
    radio.configure(868300000, 7, 250000, 4, 17)
    radio.send(bytes(range(1, 43)))
    out.append(["sent", [s[0].hex() for s in sent], [list(s[1:]) for s in sent], list(chip.packet), radio.tx_done()])
    now[0] += 100
    out.append(["tx_done", radio.tx_done(), chip.mode, radio.tx_done()])
    out.append(["not listening", chip.deliver(b"early", -80, 9.5)])
    radio.start_receive()
    out.append(["rx mode", chip.mode, chip.packet[2], radio.poll()])
    standard = chip.registers[0x0736]
    radio.configure(869525000, 9, invert_iq=True)  # a node's receive window
    radio.start_receive()
    out.append(["iq", standard, chip.packet[4], chip.registers[0x0736]])
    chip.deliver(b"\x00frame\xff" * 3, -118.0, 7.25)
    got = radio.poll()
    out.append(["rx", got[0].hex(), got[1], got[2], radio.poll()])
    chip.deliver(b"damaged", -100.0, 3.0, crc_ok=False)
    out.append(["crc", radio.poll(), radio.crc_errors, chip.refused])
    # PreambleDetected, enabled by begin's IRQ mask (the next preamble is looked for anew once read)
    row = ["header"]
    row.extend(preamble(radio, chip))  # (MicroPython has no * in a list display)
    row.append(chip.irq_mask)
    out.append(row)
    # A preamble no header follows (another network's sync word, noise): let go after 24 symbols (SF9: 98 ms; the
    # margins either side are wide enough for a loaded machine's late wake)
    radio.configure(868100000, 9)
    radio.start_receive()
    chip.hear()
    stray = [radio.receiving()]
    time.sleep_ms(15)
    stray.append(radio.receiving())
    time.sleep_ms(100)
    stray.extend((radio.receiving(), radio.receiving(), chip.irq & 0x0004))
    out.append(["stray", stray])
    radio.sleep()
    asleep = [chip.mode, chip.busy(), chip.hear()]
    # Asleep the chip holds BUSY high until NSS falls: the driver wakes it first, and the next command goes through
    radio.start_receive()
    out.append(["asleep", asleep, chip.mode, chip.lost, chip.refused, radio.receiving()])
    # A board restarted without its reset pin finds the chip still asleep: a new driver wakes it before begin's
    # first command (it would wait on BUSY for ever)
    radio.sleep()
    again = SX1262(chip, chip.cs, chip.busy)
    again.begin()
    out.append(["restarted", chip.mode, chip.lost])
    try:
        radio.configure(1200000000, 7)
        out.append(["band", "accepted"])
    except ValueError:
        out.append(["band", "refused"])
    return out


if __name__ == "__main__":
    print(json.dumps(run()))
