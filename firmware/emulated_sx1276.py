# An emulated SX1276 on an emulated SPI bus, for testing the real driver (firmware/sx1276.py) without the
# chip, register by register as the datasheet describes them: 128 registers, a 256-byte FIFO reached
# through register 0x00 at RegFifoAddrPtr (which advances), the operating modes, and the LoRa mode bit
# that only SLEEP lets change (DS 4.1.1). A packet written and put in TX mode goes to `air` (the emulated
# medium, hil/radio.py, or a test) with the channel, SF, bandwidth, coding rate and power the registers
# hold; TxDone is raised once its airtime has passed on the chip's clock. `deliver` is the air's side of a
# reception: in RXCONTINUOUS, the packet lands in the FIFO with RxDone (and PayloadCrcError if it was
# damaged), its RSSI and SNR in the packet registers.
from protocols.airtime import airtime_us

_VERSION = 0x12


class EmulatedSX1276:
    def __init__(self, air=None, clock_ms=None):
        self.regs = bytearray(128)
        self.regs[0x01] = 0x01  # RegOpMode after reset: FSK/OOK, standby (DS 6.4: 0x01)
        self.regs[0x42] = _VERSION
        self.regs[0x0E] = 0x80  # RegFifoTxBaseAddr after reset
        self.regs[0x33] = 0x27  # RegInvertIQ after reset: I/Q not inverted
        self.fifo = bytearray(256)
        self.air = air  # air(payload, freq, sf, bw, cr, power_dbm, inverted_iq) for each transmission
        self.on_listen = None  # on_listen(settings or None) when the chip starts or stops RXCONTINUOUS in LoRa mode
        self.clock_ms = clock_ms or (lambda: 0)
        self._tx_end = None
        self.selected = False
        self.transactions = 0

    # the bus: a CS pin (call it with 0 or 1) and an SPI object with write_readinto
    def cs(self, level):
        self.selected = not level

    def write_readinto(self, out, into):
        if not self.selected:
            raise OSError("SPI transfer with CS high: the chip is not selected")
        self.transactions += 1
        address = out[0] & 0x7F
        writing = out[0] & 0x80
        into[0] = 0
        for index in range(1, len(out)):
            value = out[index]  # first: the buffers may be one (machine.SPI allows it)
            if address == 0x00:  # the FIFO, at its pointer
                pointer = self.regs[0x0D]
                if writing:
                    self.fifo[pointer] = value
                into[index] = 0 if writing else self.fifo[pointer]
                self.regs[0x0D] = (pointer + 1) & 0xFF
            else:
                into[index] = self._read(address)
                if writing:
                    self._write(address, value)
                address = (address + 1) & 0x7F

    # -------------------------------------------------------------- registers

    def _read(self, address):
        if address == 0x12:
            self._tick()
        return self.regs[address]

    def _write(self, address, value):
        if address == 0x12:  # RegIrqFlags: write 1 to clear
            self.regs[0x12] &= ~value & 0xFF
        elif address == 0x01:
            self._opmode(value)
        elif address == 0x42:
            pass  # read only
        else:
            self.regs[address] = value

    def _opmode(self, value):
        old = self.regs[0x01]
        if (old ^ value) & 0x80 and old & 0x07 != 0x00:
            value = (value & 0x7F) | (old & 0x80)  # LongRangeMode changes in SLEEP only (DS 4.1.1)
        self.regs[0x01] = value
        if value != 0x85:
            self.regs[0x18] &= ~0x03 & 0xFF  # out of RX: no signal detected
        if self.on_listen is not None and (old == 0x85) != (value == 0x85):
            self.on_listen(self.settings() + ((self.regs[0x33] >> 6) & 1,) if value == 0x85 else None)
        if value & 0x80 and value & 0x07 == 0x03:
            self._transmit()

    def _transmit(self):
        length = self.regs[0x22]
        start = self.regs[0x0E]
        payload = bytes(self.fifo[(start + i) & 0xFF] for i in range(length))
        freq, sf, bw, cr = self.settings()
        power = (self.regs[0x09] & 0x0F) + 2 if self.regs[0x09] & 0x80 else None
        self._tx_end = self.clock_ms() + (airtime_us(length, sf, bw, cr) + 999) // 1000
        if self.air is not None:
            self.air(payload, freq, sf, bw, cr, power, 0 if self.regs[0x33] & 0x01 else 1)  # InvertIQ-TX: bit 0 clear
        self._tick()

    def _tick(self):
        if self._tx_end is not None and self.clock_ms() >= self._tx_end:
            self._tx_end = None
            self.regs[0x12] |= 0x08  # TxDone
            self.regs[0x01] = (self.regs[0x01] & 0xF8) | 0x01  # back to standby (DS 4.1.6)

    def settings(self):
        # (frequency Hz, SF, bandwidth Hz, coding rate 1-4) as the registers say
        frf = self.regs[0x06] << 16 | self.regs[0x07] << 8 | self.regs[0x08]
        bw = {7: 125000, 8: 250000, 9: 500000}.get(self.regs[0x1D] >> 4, 0)
        return (frf * 32000000) >> 19, self.regs[0x1E] >> 4, bw, (self.regs[0x1D] >> 1) & 0x07

    # -------------------------------------------------------------- the air's side

    def hear(self):
        # A packet's preamble detected (its end comes with deliver): RegModemStat's signal detected and
        # synchronized, in RXCONTINUOUS only (the air says when: protocols/lora.py DETECT_SYMBOLS into the frame)
        if self.regs[0x01] != 0x85:
            return False
        self.regs[0x18] |= 0x03
        return True

    def deliver(self, payload, rssi_dbm, snr_db, crc_ok=True):
        # A packet the air brings; heard only in LoRa RXCONTINUOUS. True if the chip took it.
        if self.regs[0x01] != 0x85:
            return False
        start = self.regs[0x0F]
        for index in range(len(payload)):
            self.fifo[(start + index) & 0xFF] = payload[index]
        self.regs[0x10] = start  # RegFifoRxCurrentAddr
        self.regs[0x13] = len(payload)
        snr4 = round(snr_db * 4)
        self.regs[0x19] = snr4 & 0xFF
        self.regs[0x1A] = max(0, min(255, round(rssi_dbm + 157 - (snr4 // 4 if snr4 < 0 else 0))))
        self.regs[0x12] |= 0x40 | 0x10 | (0 if crc_ok else 0x20)  # RxDone, ValidHeader, PayloadCrcError
        self.regs[0x18] &= ~0x03 & 0xFF  # searching for the next preamble
        return True
