# An emulated BME280 chip on an emulated I2C bus, for testing the real driver
# (firmware/bme280.py) on the unix port without the chip: it answers the
# driver's register reads with the datasheet's calibration and raw values
# found by inverting the real compensation, so the driver reads back a model.
# Not loaded by an emulated node (its heap is too small to carry both the
# driver and this): the node's emulated BME280 is emulation.EmulatedBME280.
import struct

from firmware import bme280

# Calibration of the datasheet's worked example (BME280 datasheet, 8.1/8.2).
_CAL_T = (27504, 26435, -1000)
_CAL_P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
_CAL_H = (75, 362, 0, 313, 50, 30)


def _invert(function, target, high):
    # Smallest raw value in [0, high) whose compensated output reaches target (outputs rise with raw).
    low = 0
    high -= 1
    while low < high:
        middle = (low + high) // 2
        if function(middle) < target:
            low = middle + 1
        else:
            high = middle
    return low


class EmulatedBME280Chip:
    # An I2C bus with one BME280 on it, answering the machine.I2C calls the
    # driver makes. Raw ADC values are found by inverting the real compensation,
    # so the real driver reads back the model.
    def __init__(self, model, address=bme280.ADDRESS):
        self._model = model
        self._address = address
        h1, h2, h3, h4, h5, h6 = _CAL_H
        self._regs = {
            0xD0: bytes([bme280.CHIP_ID]),
            0x88: struct.pack("<Hhh", *_CAL_T) + struct.pack("<Hhhhhhhhh", *_CAL_P),
            0xA1: bytes([h1]),
            0xE1: struct.pack("<hBBBBb", h2, h3, (h4 >> 4) & 0xFF, (h4 & 0x0F) | ((h5 & 0x0F) << 4), (h5 >> 4) & 0xFF, h6),
        }

    def _measure(self):
        model = self._model
        adc_t = _invert(lambda raw: bme280.compensate_t(_CAL_T, raw)[1], int(model.temperature() * 100), 1 << 20)
        t_fine = bme280.compensate_t(_CAL_T, adc_t)[0]
        # Pressure falls as the raw value rises: invert on the negated output.
        adc_p = _invert(lambda raw: -bme280.compensate_p(_CAL_P, t_fine, raw), -int(model.pressure()), 1 << 20)
        adc_h = _invert(lambda raw: bme280.compensate_h(_CAL_H, t_fine, raw), int(model.humidity() * 1024), 1 << 16)
        # Data registers 0xF7..0xFE: pressure and temperature as 20 bits in 3 bytes, humidity 16 bits.
        return struct.pack(">I", adc_p << 4)[1:] + struct.pack(">I", adc_t << 4)[1:] + struct.pack(">H", adc_h)

    def readfrom_mem(self, address, register, count):
        if address != self._address:
            raise OSError(19)  # ENODEV, as machine.I2C raises for a missing device
        return (self._measure() if register == 0xF7 else self._regs.get(register, bytes(count)))[:count]

    def readfrom_mem_into(self, address, register, buffer):
        data = self.readfrom_mem(address, register, len(buffer))
        buffer[: len(data)] = data

    def writeto_mem(self, address, register, data):
        self.readfrom_mem(address, register, 0)
