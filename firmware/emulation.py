# Emulated hardware for the unix port: what cannot exist on a PC (an I2C
# sensor, an ADC probe in a stream, a rain gauge) modelled deterministically.
# Everything here sits behind the HAL; the drivers above it are the real ones.
import math
import struct

from firmware import bme280

# Calibration of the datasheet's worked example (BME280 datasheet, 8.1/8.2).
_CAL_T = (27504, 26435, -1000)
_CAL_P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
_CAL_H = (75, 362, 0, 313, 50, 30)


class Model:
    # Seeded, smooth, repeatable: a daily temperature cycle, humidity opposite
    # to it, weather-scale pressure drift, and a flood wave on the stream.
    def __init__(self, seed, clock):
        self.seed = seed
        self.clock = clock  # seconds since the node booted (float)
        self.phase = (seed * 7919) % 86400

    def _day(self):
        return math.sin(2 * math.pi * (self.clock() + self.phase) / 86400)

    def temperature(self):  # degC
        return 12.0 + 6.0 * self._day() + (self.seed % 7) * 0.3

    def humidity(self):  # %RH
        return 65.0 - 20.0 * self._day()

    def pressure(self):  # Pa
        return 101325.0 + 800.0 * math.sin(self.clock() / 20000.0 + self.seed)

    def water_level(self):  # m: base flow plus a flood wave every 6 hours
        t = (self.clock() + self.seed * 600) % 21600
        return 0.35 + 1.8 * math.exp(-(((t - 7200) / 1800.0) ** 2))


def _invert(function, target, low, high):
    # Smallest raw value whose compensated output reaches target (outputs rise with raw).
    while low < high:
        middle = (low + high) // 2
        if function(middle) < target:
            low = middle + 1
        else:
            high = middle
    return low


class EmulatedBME280:
    # Answers register reads as the chip would; raw ADC values are found by
    # inverting the real compensation, so the driver reads back the model.
    def __init__(self, model):
        self._model = model
        calib = struct.pack("<Hhh", *_CAL_T) + struct.pack("<Hhhhhhhhh", *_CAL_P)
        h1, h2, h3, h4, h5, h6 = _CAL_H
        self._regs = {
            0xD0: bytes([bme280.CHIP_ID]),
            0x88: calib,
            0xA1: bytes([h1]),
            0xE1: struct.pack("<hB", h2, h3)
            + bytes([(h4 >> 4) & 0xFF, (h4 & 0x0F) | ((h5 & 0x0F) << 4), (h5 >> 4) & 0xFF])
            + struct.pack("b", h6),
        }

    def measure(self):
        t_target = int(self._model.temperature() * 100)
        adc_t = _invert(lambda raw: bme280.compensate_t(_CAL_T, raw)[1], t_target, 0, (1 << 20) - 1)
        t_fine = bme280.compensate_t(_CAL_T, adc_t)[0]
        # Pressure falls as the raw value rises: invert on the negated output.
        adc_p = _invert(lambda raw: -bme280.compensate_p(_CAL_P, t_fine, raw), -int(self._model.pressure()), 0, (1 << 20) - 1)
        adc_h = _invert(lambda raw: bme280.compensate_h(_CAL_H, t_fine, raw), int(self._model.humidity() * 1024), 0, 65535)
        return bytes(
            [
                adc_p >> 12,
                (adc_p >> 4) & 0xFF,
                (adc_p & 0x0F) << 4,
                adc_t >> 12,
                (adc_t >> 4) & 0xFF,
                (adc_t & 0x0F) << 4,
                adc_h >> 8,
                adc_h & 0xFF,
            ]
        )

    def read(self, register, count):
        if register == 0xF7:
            return self.measure()[:count]
        return self._regs.get(register, bytes(count))[:count]


class EmulatedI2C:
    # The subset of machine.I2C the drivers use.
    def __init__(self, devices):
        self._devices = devices  # address -> device

    def _device(self, address):
        if address not in self._devices:
            raise OSError(19)  # ENODEV, as machine.I2C raises for a missing device
        return self._devices[address]

    def readfrom_mem(self, address, register, count):
        return self._device(address).read(register, count)

    def readfrom_mem_into(self, address, register, buffer):
        data = self._device(address).read(register, len(buffer))
        buffer[: len(data)] = data

    def writeto_mem(self, address, register, data):
        self._device(address)


class EmulatedADC:
    # A 0-5 m pressure probe: 4 mA (zero) .. 20 mA mapped onto read_u16().
    def __init__(self, model, zero=6553, full_scale_mm=5000):
        self._model = model
        self._zero = zero
        self._full = full_scale_mm

    def read_u16(self):
        mm = self._model.water_level() * 1000
        return min(65535, int(self._zero + mm * (65535 - self._zero) / self._full + 0.5))


class EmulatedPin:
    # A rain gauge: the HAL calls tick() once per second; it fires the IRQ handler per tip.
    def __init__(self, model):
        self._model = model
        self._handler = None
        self._second = -1

    def irq(self, handler=None, trigger=0):
        self._handler = handler

    def tick(self):
        second = int(self._model.clock())
        if second == self._second:
            return
        self._second = second
        if self._handler and second % (3 + self._model.seed % 5) == 0:
            self._handler(self)
