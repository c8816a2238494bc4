# The SX1276 driver (firmware/sx1276.py) against the emulated chip (firmware/emulated_sx1276.py), printed
# as JSON. Portable: imported by pytest on CPython (run()) and run on the MicroPython unix port.
import json

from firmware.emulated_sx1276 import EmulatedSX1276
from firmware.sx1276 import SX1276


def preamble(radio, chip):
    # A packet's preamble detected, its end still coming (the SX1276's RegModemStat, the SX1262's PreambleDetected):
    # `receiving` until it was read (RxDone too: it waits for the next poll), not after: [before, heard, while it
    # comes, once it came, the packet, after it was read]
    before = radio.receiving()
    heard = chip.hear()
    during = radio.receiving()
    chip.deliver(b"late", -110.0, -2.5)
    ended = radio.receiving()
    got = radio.poll()
    return [before, heard, during, ended, got[0].hex(), radio.receiving()]


def run():
    out = []
    now = [0]
    sent = []
    chip = EmulatedSX1276(lambda *args: sent.append(args), lambda: now[0])
    radio = SX1276(chip, chip.cs)
    radio.begin()
    out.append(["opmode", chip.regs[0x01]])
    radio.configure(868100000, 9, 125000, 1, 14)
    out.append(["frf", "%02x%02x%02x" % (chip.regs[0x06], chip.regs[0x07], chip.regs[0x08]), list(chip.settings())])
    out.append(["config", chip.regs[0x1D], chip.regs[0x1E], chip.regs[0x26], chip.regs[0x09], chip.regs[0x39]])
    radio.configure(869525000, 12)
    out.append(["ldro", chip.regs[0x26], list(chip.settings())])
    radio.configure(868300000, 7, 250000, 4, 17)
    payload = bytes(range(1, 43))
    radio.send(payload)
    out.append(["sent", [s[0].hex() for s in sent], [list(s[1:]) for s in sent], radio.tx_done()])
    now[0] += 100  # past its airtime (42 bytes at SF7, 250 kHz: 35 ms)
    out.append(["tx_done", radio.tx_done(), chip.regs[0x01], radio.tx_done()])
    out.append(["not listening", chip.deliver(b"early", -80, 9.5)])
    radio.start_receive()
    out.append(["nothing", radio.poll()])
    chip.deliver(b"\x00frame\xff" * 3, -118.0, 7.25)
    got = radio.poll()
    out.append(["rx", got[0].hex(), got[1], got[2], radio.poll()])
    chip.deliver(b"weak", -136.0, -17.5)
    got = radio.poll()
    out.append(["weak", got[0].hex(), got[1], got[2]])
    chip.deliver(b"damaged", -100.0, 3.0, crc_ok=False)
    out.append(["crc", radio.poll(), radio.crc_errors])
    row = ["preamble"]
    row.extend(preamble(radio, chip))  # (MicroPython has no * in a list display)
    out.append(row)
    radio.sleep()
    out.append(["asleep", chip.hear(), radio.receiving()])
    try:
        radio.configure(433000000, 7)
        out.append(["band", "accepted"])
    except ValueError:
        out.append(["band", "refused"])
    absent = EmulatedSX1276()
    absent.regs[0x42] = 0x22  # another chip (an SX1272 says 0x22)
    try:
        SX1276(absent, absent.cs).begin()
        out.append(["absent", "accepted"])
    except OSError:
        out.append(["absent", "refused"])
    return out


if __name__ == "__main__":
    print(json.dumps(run()))
