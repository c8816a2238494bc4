# Semtech SX1276/77/78/79 LoRa transceiver over SPI (register interface; "DS" = the SX1276/77/78/79
# datasheet rev. 7, section 4.1 LoRa modem and 6.4 registers), written from the datasheet in the shape
# of micropython-lib's lora drivers: configure once, then send() / start_receive() / poll(). LoRa mode
# only, explicit header, CRC on, the HF port (862-1020 MHz: EU868). Works with machine.SPI and a CS pin,
# and with the emulated chip of the unix HAL (firmware/emulated_sx1276.py), which tests it register by
# register (tests/portable/sx1276_check.py).
from micropython import const

from protocols.airtime import symbol_us

_REG_FIFO = const(0x00)
_REG_OPMODE = const(0x01)
_LONG_RANGE = const(0x80)  # LoRa mode: changed only in SLEEP (DS 4.1.1)
_MODE_SLEEP = const(0x00)
_MODE_STDBY = const(0x01)
_MODE_TX = const(0x03)
_MODE_RX_CONTINUOUS = const(0x05)
_REG_FRF_MSB = const(0x06)  # Frf = f * 2^19 / 32 MHz, 3 bytes (DS 4.1.4)
_REG_PA_CONFIG = const(0x09)
_PA_BOOST = const(0x80)  # PaSelect: the PA_BOOST pin, +2 .. +17 dBm as OutputPower + 2 (DS 5.4.2)
_REG_FIFO_ADDR_PTR = const(0x0D)
_REG_FIFO_TX_BASE = const(0x0E)
_REG_FIFO_RX_BASE = const(0x0F)
_REG_FIFO_RX_CURRENT = const(0x10)
_REG_IRQ_FLAGS = const(0x12)  # write 1 to clear
_REG_MODEM_STAT = const(0x18)  # bit 0 signal detected, 1 signal synchronized (DS 4.1.6, RegModemStat)
_SIGNAL = const(0x03)
IRQ_RX_DONE = const(0x40)
IRQ_CRC_ERROR = const(0x20)
IRQ_TX_DONE = const(0x08)
IRQ_VALID_HEADER = const(0x10)
_REG_RX_NB_BYTES = const(0x13)
_REG_PKT_SNR = const(0x19)  # signed, quarter dB
_REG_PKT_RSSI = const(0x1A)  # packet RSSI = -157 + value on the HF port (DS 5.5.5)
_REG_MODEM_CONFIG1 = const(0x1D)  # Bw 7:4, CodingRate 3:1, ImplicitHeaderModeOn 0
_REG_MODEM_CONFIG2 = const(0x1E)  # SpreadingFactor 7:4, RxPayloadCrcOn 2
_REG_PREAMBLE_MSB = const(0x20)
_REG_PAYLOAD_LENGTH = const(0x22)
_REG_MODEM_CONFIG3 = const(0x26)  # LowDataRateOptimize 3, AgcAutoOn 2
_REG_SYNC_WORD = const(0x39)
_REG_INVERT_IQ = const(0x33)
_REG_INVERT_IQ2 = const(0x3B)
_REG_VERSION = const(0x42)
VERSION = const(0x12)
_RSSI_HF = const(-157)
_BANDWIDTHS = {125000: 7, 250000: 8, 500000: 9}  # ModemConfig1 Bw codes (DS 6.4)
_SYNC_PRIVATE = const(0x12)  # not LoRaWAN's public 0x34: edgegw's radio frames are not LoRaWAN's


class SX1276:
    def __init__(self, spi, cs):
        self._spi = spi
        self._cs = cs
        self._one = bytearray(2)  # reused: a register access is two bytes on the wire
        self.crc_errors = 0  # received packets whose payload CRC failed: dropped here, counted
        self.freq = 0
        self.sf = 0
        self.bw = 0
        self.cr = 0

    # -------------------------------------------------------------- registers

    def _transfer(self, out, into):
        self._cs(0)
        try:
            self._spi.write_readinto(out, into)
        finally:
            self._cs(1)

    def read(self, register):
        one = self._one
        one[0] = register & 0x7F
        one[1] = 0
        self._transfer(one, one)
        return one[1]

    def write(self, register, value):
        one = self._one
        one[0] = register | 0x80
        one[1] = value
        self._transfer(one, one)

    def _burst(self, register, data):
        out = bytearray(1 + len(data))
        out[0] = register | 0x80
        out[1:] = data
        self._transfer(out, bytearray(len(out)))

    def _mode(self, mode):
        self.write(_REG_OPMODE, _LONG_RANGE | mode)

    # -------------------------------------------------------------- setting up

    def begin(self):
        # The chip answers with its version, and is put in LoRa mode (which only SLEEP allows).
        version = self.read(_REG_VERSION)
        if version != VERSION:
            raise OSError("no SX1276 on the SPI bus (version register 0x%02x)" % version)
        self.write(_REG_OPMODE, _MODE_SLEEP)
        self._mode(_MODE_SLEEP)
        self._mode(_MODE_STDBY)
        if self.read(_REG_OPMODE) != _LONG_RANGE | _MODE_STDBY:
            raise OSError("the SX1276 did not enter LoRa standby")

    def configure(self, freq, sf, bw=125000, cr=1, power_dbm=14, preamble=8, invert_iq=False):
        # Channel, spreading factor 7-12, bandwidth, coding rate 4/(4+cr), output power 2-17 dBm on PA_BOOST.
        # invert_iq: downlinks (a bridge sending, a node's receive window) use inverted I/Q, as LoRaWAN's do, so
        # that a node listening for its answer never hears another node's uplink, nor a bridge another's answer.
        if not 7 <= sf <= 12 or bw not in _BANDWIDTHS or not 1 <= cr <= 4 or not 2 <= power_dbm <= 17:
            raise ValueError("SX1276: SF7-12, 125/250/500 kHz, CR 1-4, 2-17 dBm")
        if not 862000000 <= freq <= 1020000000:
            raise ValueError("SX1276: %d Hz is not on the HF port" % freq)
        self._mode(_MODE_STDBY)
        frf = (freq << 19) // 32000000
        self._burst(_REG_FRF_MSB, bytes(((frf >> 16) & 0xFF, (frf >> 8) & 0xFF, frf & 0xFF)))
        self.write(_REG_PA_CONFIG, _PA_BOOST | 0x70 | (power_dbm - 2))
        self.write(_REG_MODEM_CONFIG1, _BANDWIDTHS[bw] << 4 | cr << 1)  # explicit header
        self.write(_REG_MODEM_CONFIG2, sf << 4 | 0x04)  # CRC on
        ldro = 0x08 if symbol_us(sf, bw) >= 16384 else 0  # DS 4.1.1.6: symbols of 16 ms or more
        self.write(_REG_MODEM_CONFIG3, ldro | 0x04)  # AGC on
        self._burst(_REG_PREAMBLE_MSB, bytes((preamble >> 8, preamble & 0xFF)))
        self.write(_REG_SYNC_WORD, _SYNC_PRIVATE)
        # RegInvertIQ: bit 6 set inverts receiving, bit 0 clear inverts sending (0x27 after reset: neither), the
        # other bits at their reset value; RegInvertIQ2 0x19 inverted, 0x1D normal (as Semtech's LoRaMac-node sets them)
        self.write(_REG_INVERT_IQ, 0x66 if invert_iq else 0x27)
        self.write(_REG_INVERT_IQ2, 0x19 if invert_iq else 0x1D)
        self.write(_REG_FIFO_TX_BASE, 0)
        self.write(_REG_FIFO_RX_BASE, 0)
        self.freq, self.sf, self.bw, self.cr = freq, sf, bw, cr

    # -------------------------------------------------------------- sending and receiving

    def send(self, payload):
        # Starts the transmission; tx_done() says when it ended (the caller kept the duty cycle).
        if not 1 <= len(payload) <= 255:
            raise ValueError("SX1276: a payload is 1-255 bytes")
        self._mode(_MODE_STDBY)
        self.write(_REG_IRQ_FLAGS, 0xFF)
        self.write(_REG_FIFO_ADDR_PTR, 0)
        self._burst(_REG_FIFO, payload)
        self.write(_REG_PAYLOAD_LENGTH, len(payload))
        self._mode(_MODE_TX)

    def tx_done(self):
        if not self.read(_REG_IRQ_FLAGS) & IRQ_TX_DONE:
            return False
        self.write(_REG_IRQ_FLAGS, IRQ_TX_DONE)  # the chip is back in standby by itself (DS 4.1.6)
        return True

    def start_receive(self):
        self._mode(_MODE_STDBY)
        self.write(_REG_IRQ_FLAGS, 0xFF)
        self._mode(_MODE_RX_CONTINUOUS)

    def poll(self):
        # (payload, rssi dBm, snr dB) of a packet received, or None. A CRC error is counted and dropped.
        flags = self.read(_REG_IRQ_FLAGS)
        if not flags & IRQ_RX_DONE:
            return None
        self.write(_REG_IRQ_FLAGS, IRQ_RX_DONE | IRQ_CRC_ERROR | IRQ_VALID_HEADER)
        if flags & IRQ_CRC_ERROR:
            self.crc_errors += 1
            return None
        length = self.read(_REG_RX_NB_BYTES)
        self.write(_REG_FIFO_ADDR_PTR, self.read(_REG_FIFO_RX_CURRENT))
        out = bytearray(1 + length)
        out[0] = _REG_FIFO
        self._transfer(out, out)
        snr4 = self.read(_REG_PKT_SNR)
        snr4 = snr4 - 256 if snr4 > 127 else snr4
        rssi = _RSSI_HF + self.read(_REG_PKT_RSSI) + (snr4 // 4 if snr4 < 0 else 0)  # DS 5.5.5, below the noise
        return bytes(out[1:]), rssi, snr4 / 4

    def receiving(self):
        # A packet is coming (its preamble detected, RegModemStat, a few symbols in: ValidHeader comes only after the
        # preamble and header, at SF12 past a 500 ms window, protocols/lora.py DETECT_SYMBOLS) or came and waits to be
        # read (RxDone, set after the last poll): a receive window stays open for it.
        return bool(self.read(_REG_MODEM_STAT) & _SIGNAL or self.read(_REG_IRQ_FLAGS) & IRQ_RX_DONE)

    def sleep(self):
        self._mode(_MODE_SLEEP)
