# The unix port's antenna: an emulated SX1276 (firmware/emulated_sx1276.py) whose air is the HIL's emulated
# medium (hil/air.py), reached through a pseudo-terminal named by node.json's "air". The real driver
# (firmware/sx1276.py) talks to the chip over the emulated SPI bus below; what the chip sends and when it
# listens goes to the medium as text lines, and what the medium brings is handed to the chip whenever the
# firmware next touches it, as a real chip receives while the CPU does other things:
#   to the air     T freq sf bw power iq HEX  a transmission starts (it ends after its airtime); iq 1: inverted
#                  L freq sf bw iq            the receiver listens (RXCONTINUOUS); iq 1: for inverted I/Q
#                  S                          it stopped listening
#   from the air   H                          a preamble detected (RegModemStat), some symbols into a packet
#                  P rssi snr HEX             a packet received
#                  C rssi snr HEX             a packet damaged on the way (a collision): PayloadCrcError
import binascii

from firmware.emulated_sx1276 import EmulatedSX1276


class AirBus:
    def __init__(self, uart, clock_ms):
        self.uart = uart  # firmware/hal_unix.py's Uart on the air's pty
        self.chip = EmulatedSX1276(self.transmit, clock_ms)
        self.chip.on_listen = self.listen
        self.line = bytearray()
        self.buffer = bytearray(64)
        self.cs = self.chip.cs

    # the SPI bus of the driver: the air's news reach the chip first
    def write_readinto(self, out, into):
        self.pump()
        self.chip.write_readinto(out, into)

    def transmit(self, payload, freq, sf, bw, cr, power, iq):
        self.uart.write(b"T %d %d %d %d %d %s\n" % (freq, sf, bw, power or 14, iq, binascii.hexlify(payload)))

    def listen(self, settings):
        if settings is None:
            self.uart.write(b"S\n")
        else:
            self.uart.write(b"L %d %d %d %d\n" % (settings[0], settings[1], settings[2], settings[4]))

    def pump(self):
        while True:
            count = self.uart.read_available(self.buffer)
            if not count:
                return
            for byte in self.buffer[:count]:
                if byte == 10:
                    self.take(bytes(self.line))
                    self.line = bytearray()
                elif len(self.line) < 600:
                    self.line.append(byte)

    def take(self, line):
        parts = line.split()
        if not parts:
            return
        if parts[0] == b"H":
            self.chip.hear()
        elif parts[0] in (b"P", b"C") and len(parts) == 4:
            self.chip.deliver(binascii.unhexlify(parts[3]), float(parts[1]), float(parts[2]), parts[0] == b"P")
