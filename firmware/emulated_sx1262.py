# An emulated SX1262 on an emulated SPI bus, for testing the real driver (firmware/sx1262.py) without the
# chip, command by command as the datasheet describes them: the opcodes the driver uses with their
# parameters, the status byte clocked out with every byte after the opcode, a 256-byte data buffer, the
# IRQ register, the chip modes, and BUSY high for a moment after each command (a driver that does not wait
# for it gets its next command refused). A packet written and sent with SetTx goes to `air` (the emulated
# medium, hil/radio.py, or a test) with the frequency, SF, bandwidth, coding rate and power the commands
# set; TxDone is raised once its airtime has passed on the chip's clock. `hear` (a packet's header) and
# `deliver` (its end) are the air's side of a reception, heard in RX. As on the chip, a flag is raised only if
# SetDioIrqParams enabled it in the IRQ mask (DS 13.3.1: all masked after reset).
from protocols.airtime import airtime_us

_MODE_SLEEP = 0x0  # no status byte to say it: the chip is asleep
_MODE_STBY_RC = 0x2
_MODE_RX = 0x5
_MODE_TX = 0x6
_BANDWIDTHS = {0x04: 125000, 0x05: 250000, 0x06: 500000}
_RESET_REGISTERS = {0x0736: 0x0D}  # the I/Q polarity register's bit 2 set after reset (DS 15.4's workaround clears it)


class EmulatedSX1262:
    def __init__(self, air=None, clock_ms=None):
        self.air = air
        self.clock_ms = clock_ms or (lambda: 0)
        self.mode = _MODE_STBY_RC
        self.buffer = bytearray(256)
        self.irq = 0
        self.irq_mask = 0  # SetDioIrqParams' IrqMask
        self.freq = 0
        self.sf = 7
        self.bw = 125000
        self.cr = 1
        self.power = 14
        self.pa = (0, 0, 0, 0)  # SetPaConfig: paDutyCycle, hpMax, deviceSel, paLut
        self.ldro = 0
        self.packet = (8, 0, 255, 1, 0)  # preamble, header type, length, CRC, IQ
        self.bases = (0, 0)
        self.registers = {}
        self.commands = []  # opcodes in order, for the tests
        self.refused = 0  # commands sent while BUSY was high
        self._busy_polls = 0
        self._waking = False
        self.lost = 0  # transfers made while it was waking: never executed
        self._selected = False
        self._tx_end = None
        self._rx = (0, 0, 0, 0)  # length, start, rssi byte, snr byte

    # the bus: CS and BUSY pins (call them), an SPI object with write_readinto
    def cs(self, level):
        if not level and self.mode == _MODE_SLEEP:
            # NSS falling wakes it (DS 13.1.1): standby, BUSY high a moment; the transfer that woke it is not a command
            self.mode = _MODE_STBY_RC
            self._busy_polls = 2
            self._waking = True
        elif level:
            self._waking = False  # NSS up again: from now on it takes commands (once BUSY is low)
        self._selected = not level

    def busy(self):
        # High for two polls after each command (the driver must look before it sends the next one), and asleep
        if self.mode == _MODE_SLEEP:
            return 1
        if self._busy_polls:
            self._busy_polls -= 1
            return 1
        return 0

    def _status(self):
        return self.mode << 4 | 0x02 << 1  # "data available" (DS 13.5.1), enough for the driver

    def write_readinto(self, out, into):
        if not self._selected:
            raise OSError("SPI transfer with CS high")
        if self._waking:  # in the NSS cycle that woke it: not a command yet
            self.lost += 1
            for index in range(len(into)):
                into[index] = 0
            return
        data = bytes(out)  # first: the buffers may be one
        opcode = data[0]
        if opcode != 0xC0 and self._busy_polls:
            self.refused += 1  # a real chip ignores a command while BUSY
            for index in range(len(into)):
                into[index] = 0
            return
        answer = self._execute(opcode, data[1:])
        status = self._status()
        for index in range(len(into)):
            into[index] = status
        start = len(data) - len(answer)
        into[start:] = answer
        if opcode != 0xC0:
            self.commands.append(opcode)
            self._busy_polls = 2

    # -------------------------------------------------------------- commands

    def _execute(self, opcode, args):
        # The bytes clocked out after the command and its status byte (for the Get commands).
        self._tick()
        if opcode == 0x80:
            self.mode = _MODE_STBY_RC
        elif opcode == 0x86:
            self.freq = (int.from_bytes(args[:4], "big") * 32000000) >> 25
        elif opcode == 0x95:
            self.pa = tuple(args[:4])
        elif opcode == 0x8E:
            self.power = args[0] - 256 if args[0] > 127 else args[0]
        elif opcode == 0x8B:
            self.sf, self.bw, self.cr = args[0], _BANDWIDTHS.get(args[1], 0), args[2]
            self.ldro = args[3]
        elif opcode == 0x8C:
            self.packet = (args[0] << 8 | args[1], args[2], args[3], args[4], args[5])
        elif opcode == 0x8F:
            self.bases = (args[0], args[1])
        elif opcode == 0x0E:
            offset = args[0]
            for index in range(1, len(args)):
                self.buffer[(offset + index - 1) & 0xFF] = args[index]
        elif opcode == 0x0D:
            address = args[0] << 8 | args[1]
            for index in range(2, len(args)):
                self.registers[address + index - 2] = args[index]
        elif opcode == 0x1D:
            address = args[0] << 8 | args[1]
            count = len(args) - 3  # the address, then the status byte, then the data clocked out
            return bytes(self.registers.get(address + i, _RESET_REGISTERS.get(address + i, 0)) for i in range(count))
        elif opcode == 0x08:
            self.irq_mask = args[0] << 8 | args[1]
        elif opcode == 0x84:
            self.mode = _MODE_SLEEP
        elif opcode == 0x83:
            self._transmit()
        elif opcode == 0x82:
            self.mode = _MODE_RX
        elif opcode == 0x02:
            self.irq &= ~(args[0] << 8 | args[1])
        elif opcode == 0x12:
            return bytes((self.irq >> 8, self.irq & 0xFF))
        elif opcode == 0x13:
            return bytes(self._rx[:2])
        elif opcode == 0x14:
            return bytes((self._rx[2], self._rx[3], self._rx[2]))
        elif opcode == 0x1E:
            offset = args[0]
            count = len(args) - 2  # offset, then the status byte, then the data clocked out
            return bytes(self.buffer[(offset + i) & 0xFF] for i in range(count))
        return b""

    def _transmit(self):
        length = self.packet[2]
        payload = bytes(self.buffer[(self.bases[0] + i) & 0xFF] for i in range(length))
        self.mode = _MODE_TX
        self._tx_end = self.clock_ms() + (airtime_us(length, self.sf, self.bw, self.cr) + 999) // 1000
        if self.air is not None:
            self.air(payload, self.freq, self.sf, self.bw, self.cr, self.power)

    def _tick(self):
        if self._tx_end is not None and self.clock_ms() >= self._tx_end:
            self._tx_end = None
            self._raise(0x0001)  # TxDone
            self.mode = _MODE_STBY_RC

    def settings(self):
        return self.freq, self.sf, self.bw, self.cr

    # -------------------------------------------------------------- the air's side

    def _raise(self, flags):
        self.irq |= flags & self.irq_mask

    def hear(self):
        # A packet's preamble detected (its end comes with deliver): PreambleDetected, in RX only (the air says when:
        # protocols/lora.py DETECT_SYMBOLS into the frame)
        if self.mode != _MODE_RX:
            return False
        self._raise(0x0004)
        return True

    def deliver(self, payload, rssi_dbm, snr_db, crc_ok=True):
        if self.mode != _MODE_RX:
            return False
        start = self.bases[1]
        for index in range(len(payload)):
            self.buffer[(start + index) & 0xFF] = payload[index]
        snr4 = round(snr_db * 4)
        self._rx = (len(payload), start, max(0, min(255, round(-rssi_dbm * 2))), snr4 & 0xFF)
        self._raise(0x0002 | 0x0010 | (0 if crc_ok else 0x0040))  # RxDone, HeaderValid, CrcErr
        return True
