# Semtech SX1262 LoRa transceiver over SPI (its command interface; "DS" = the SX1261/2 datasheet rev. 1.2,
# sections 8 (host interface), 13 (commands) and 14 (operation)), written from the datasheet in the shape of
# micropython-lib's lora drivers and with the same calls as firmware/sx1276.py: begin, configure, send /
# tx_done, start_receive / poll / receiving. LoRa only, explicit header, CRC on; I/Q standard, or inverted for
# a downlink (a bridge sending, a node's receive window). Every command waits for
# BUSY low first (DS 8.3.1). Works with machine.SPI, a CS pin and a BUSY pin, and with the emulated chip of
# the unix HAL (firmware/emulated_sx1262.py), which tests it command by command (tests/portable/sx1262_check.py).
import time

from micropython import const

from protocols.airtime import symbol_us

_SET_STANDBY = const(0x80)
_SET_PACKET_TYPE = const(0x8A)
_SET_RF_FREQUENCY = const(0x86)  # RfFreq = f * 2^25 / 32 MHz, 4 bytes (DS 13.4.1)
_SET_PA_CONFIG = const(0x95)
_SET_TX_PARAMS = const(0x8E)
_SET_MODULATION_PARAMS = const(0x8B)
_SET_PACKET_PARAMS = const(0x8C)
_SET_BUFFER_BASE = const(0x8F)
_SET_DIO_IRQ_PARAMS = const(0x08)
_SET_DIO2_AS_RF_SWITCH = const(0x9D)
_CALIBRATE_IMAGE = const(0x98)
_WRITE_REGISTER = const(0x0D)
_READ_REGISTER = const(0x1D)
_REG_IQ_POLARITY = const(0x0736)  # DS 15.4: bit 2 cleared for inverted I/Q, set for standard
_WRITE_BUFFER = const(0x0E)
_READ_BUFFER = const(0x1E)
_SET_TX = const(0x83)
_SET_RX = const(0x82)
_GET_IRQ_STATUS = const(0x12)
_CLEAR_IRQ_STATUS = const(0x02)
_GET_RX_BUFFER_STATUS = const(0x13)
_GET_PACKET_STATUS = const(0x14)
_GET_STATUS = const(0xC0)
_SET_SLEEP = const(0x84)
IRQ_TX_DONE = const(0x0001)
IRQ_RX_DONE = const(0x0002)
IRQ_PREAMBLE = const(0x0004)
IRQ_HEADER_VALID = const(0x0010)
IRQ_HEADER_ERROR = const(0x0020)
IRQ_CRC_ERROR = const(0x0040)
# TxDone, RxDone, PreambleDetected, HeaderValid, HeaderErr, CrcErr, Timeout: a flag whose bit is clear here is never
# raised (DS 13.3.1)
_IRQ_USED = const(0x0277)
_HEADER_SYMBOLS = const(24)  # a header follows a detected preamble within 8 + 4.25 + 8 symbols: 24 with margin
_REG_SYNC_WORD = const(0x0740)
_SYNC_PRIVATE = const(0x1424)  # a private network's word, not LoRaWAN's public 0x3444 (DS 6.2.2)
_BANDWIDTHS = {125000: 0x04, 250000: 0x05, 500000: 0x06}  # DS 13.4.5.2
_BUSY_TIMEOUT_MS = const(100)
# SetPaConfig (paDutyCycle, hpMax) for the SX1262 at its best efficiency per power (DS 13.1.14.1, table 13-21)
_PA = ((22, 0x04, 0x07), (20, 0x03, 0x05), (17, 0x02, 0x03), (14, 0x02, 0x02))


class SX1262:
    def __init__(self, spi, cs, busy):
        self._spi = spi
        self._cs = cs
        self._busy = busy
        self.crc_errors = 0  # received packets with a bad header or payload CRC: dropped here, counted
        self.freq = 0
        self._iq = 0x00
        self.sf = 0
        self.bw = 0
        self.cr = 0
        # Asleep, as far as this object knows: a board restarted without its reset pin finds the chip as the node left
        # it (asleep since RadioPort put it to sleep, BUSY high); a wake pulse does an awake chip no harm
        self._asleep = True
        self._preamble_at = None  # ticks_ms when PreambleDetected was first seen without a header after it

    # -------------------------------------------------------------- commands

    def _command(self, data, answer=0):
        # One command; `answer` bytes read back after the opcode and its status byte. Asleep, the chip holds BUSY
        # high until NSS falls, which wakes it (DS 13.1.1): woken first, or the wait below would time out
        if self._asleep:
            self._asleep = False
            self._cs(0)
            self._cs(1)
        deadline = time.ticks_add(time.ticks_ms(), _BUSY_TIMEOUT_MS)
        while self._busy():
            if time.ticks_diff(deadline, time.ticks_ms()) < 0:
                raise OSError("SX1262 stays BUSY")
        out = bytearray(len(data) + (1 + answer if answer else 0))
        out[: len(data)] = data
        self._cs(0)
        try:
            self._spi.write_readinto(out, out)
        finally:
            self._cs(1)
        return bytes(out[len(data) + 1 :]) if answer else None

    # -------------------------------------------------------------- setting up

    def begin(self):
        # Standby on the RC oscillator, LoRa packets, DIO2 switching the antenna (as on most modules),
        # the image calibrated for 863-870 MHz (DS 9.2.1), the interrupts this driver reads.
        self._command(bytes((_SET_STANDBY, 0)))
        if (self.status() >> 4) & 0x07 != 0x02:
            raise OSError("no SX1262 in standby on the SPI bus (status 0x%02x)" % self.status())
        self._command(bytes((_SET_PACKET_TYPE, 0x01)))
        self._command(bytes((_SET_DIO2_AS_RF_SWITCH, 0x01)))
        self._command(bytes((_CALIBRATE_IMAGE, 0xD7, 0xDB)))
        self._command(bytes((_SET_DIO_IRQ_PARAMS, _IRQ_USED >> 8, _IRQ_USED & 0xFF, _IRQ_USED >> 8, _IRQ_USED & 0xFF, 0, 0, 0, 0)))
        self._command(bytes((_WRITE_REGISTER, _REG_SYNC_WORD >> 8, _REG_SYNC_WORD & 0xFF, _SYNC_PRIVATE >> 8, _SYNC_PRIVATE & 0xFF)))

    def status(self):
        # GetStatus: the chip mode in bits 6:4, the last command's status in bits 3:1 (DS 13.5.1)
        out = bytearray((_GET_STATUS, 0))
        self._cs(0)
        try:
            self._spi.write_readinto(out, out)
        finally:
            self._cs(1)
        return out[1]

    def configure(self, freq, sf, bw=125000, cr=1, power_dbm=14, preamble=8, invert_iq=False):
        # invert_iq: for downlinks (a bridge sending, a node's receive window), as firmware/sx1276.py says
        if not 7 <= sf <= 12 or bw not in _BANDWIDTHS or not 1 <= cr <= 4 or not -9 <= power_dbm <= 22:
            raise ValueError("SX1262: SF7-12, 125/250/500 kHz, CR 1-4, -9..22 dBm")
        if not 150000000 <= freq <= 960000000:
            raise ValueError("SX1262: %d Hz is out of its range" % freq)
        self._command(bytes((_SET_STANDBY, 0)))
        rf = (freq << 25) // 32000000
        self._command(bytes((_SET_RF_FREQUENCY, rf >> 24, (rf >> 16) & 0xFF, (rf >> 8) & 0xFF, rf & 0xFF)))
        duty, hp_max = 0x02, 0x02
        for top, pa_duty, pa_hp in _PA:
            if power_dbm <= top:
                duty, hp_max = pa_duty, pa_hp
        self._command(bytes((_SET_PA_CONFIG, duty, hp_max, 0x00, 0x01)))  # deviceSel 0: SX1262
        self._command(bytes((_SET_TX_PARAMS, power_dbm & 0xFF, 0x04)))  # ramp 200 us
        ldro = 1 if symbol_us(sf, bw) >= 16384 else 0
        self._command(bytes((_SET_MODULATION_PARAMS, sf, _BANDWIDTHS[bw], cr, ldro)))
        self._preamble = preamble
        self._iq = 0x01 if invert_iq else 0x00
        self._command(bytes((_SET_BUFFER_BASE, 0, 0)))
        self.freq, self.sf, self.bw, self.cr = freq, sf, bw, cr

    def _packet_params(self, length):
        # Preamble, explicit header, payload length (the maximum when receiving), CRC on, I/Q standard or inverted
        self._command(bytes((_SET_PACKET_PARAMS, self._preamble >> 8, self._preamble & 0xFF, 0x00, length, 0x01, self._iq)))
        # DS 15.4 (known limitations): the chip's default loses packets received with inverted I/Q (a node's
        # windows) unless register 0x0736 bit 2 is cleared after SetPacketParams, and set again for standard I/Q
        value = self._command(bytes((_READ_REGISTER, _REG_IQ_POLARITY >> 8, _REG_IQ_POLARITY & 0xFF)), 1)[0]
        value = value & 0xFB if self._iq else value | 0x04
        self._command(bytes((_WRITE_REGISTER, _REG_IQ_POLARITY >> 8, _REG_IQ_POLARITY & 0xFF, value)))

    def _clear(self, mask=0xFFFF):
        self._command(bytes((_CLEAR_IRQ_STATUS, mask >> 8, mask & 0xFF)))

    def _irq(self):
        answer = self._command(bytes((_GET_IRQ_STATUS,)), 2)
        return answer[0] << 8 | answer[1]

    # -------------------------------------------------------------- sending and receiving

    def send(self, payload):
        if not 1 <= len(payload) <= 255:
            raise ValueError("SX1262: a payload is 1-255 bytes")
        self._command(bytes((_SET_STANDBY, 0)))
        self._clear()
        self._packet_params(len(payload))
        self._command(bytes((_WRITE_BUFFER, 0)) + bytes(payload))
        self._command(bytes((_SET_TX, 0, 0, 0)))  # no timeout: the chip ends the packet itself

    def tx_done(self):
        if not self._irq() & IRQ_TX_DONE:
            return False
        self._clear(IRQ_TX_DONE)  # the chip is back in standby by itself
        return True

    def start_receive(self):
        self._command(bytes((_SET_STANDBY, 0)))
        self._clear()
        self._packet_params(255)
        self._command(bytes((_SET_RX, 0xFF, 0xFF, 0xFF)))  # continuous (DS 13.1.5)

    def poll(self):
        # (payload, rssi dBm, snr dB) of a packet received, or None. A CRC or header error is counted and dropped.
        irq = self._irq()
        if not irq & (IRQ_RX_DONE | IRQ_HEADER_ERROR):
            return None
        self._clear(IRQ_RX_DONE | IRQ_CRC_ERROR | IRQ_HEADER_ERROR | IRQ_HEADER_VALID | IRQ_PREAMBLE)  # the next anew
        if irq & (IRQ_CRC_ERROR | IRQ_HEADER_ERROR):
            self.crc_errors += 1
            return None
        length, start = self._command(bytes((_GET_RX_BUFFER_STATUS,)), 2)
        payload = self._command(bytes((_READ_BUFFER, start)), length)
        rssi, snr, _signal = self._command(bytes((_GET_PACKET_STATUS,)), 3)
        snr = snr - 256 if snr > 127 else snr
        return payload, -rssi / 2, snr / 4  # DS 13.5.3: RssiPkt = -value / 2, SnrPkt = value / 4

    def receiving(self):
        # A packet is coming (PreambleDetected, a few symbols in: HeaderValid comes only after the preamble and header,
        # at SF12 past a 500 ms window, protocols/lora.py DETECT_SYMBOLS) or came and waits to be read (RxDone, set
        # after the last poll): a node's receive window stays open for it (firmware/radio_port.py), as on the SX1276.
        # The flag stays set until cleared: a preamble no header followed (another network's sync word on 869.525
        # MHz, noise) is cleared after _HEADER_SYMBOLS, or it would hold the window open until the node's cap
        irq = self._irq()
        if irq & (IRQ_HEADER_VALID | IRQ_RX_DONE) or not irq & IRQ_PREAMBLE:
            self._preamble_at = None
            return bool(irq & (IRQ_HEADER_VALID | IRQ_RX_DONE))
        now = time.ticks_ms()
        if self._preamble_at is None:
            self._preamble_at = now
        elif time.ticks_diff(now, self._preamble_at) > _HEADER_SYMBOLS * symbol_us(self.sf, self.bw) // 1000:
            self._clear(IRQ_PREAMBLE)
            self._preamble_at = None
            return False
        return True

    def sleep(self):
        self._command(bytes((_SET_SLEEP, 0x04)))
        self._asleep = True  # warm start: the configuration is kept
