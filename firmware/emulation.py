# Emulated hardware for the unix port: what cannot exist on a PC (an I2C
# sensor, an ADC probe in a stream, a rain gauge) modelled deterministically.
# Everything here sits behind the HAL; the ADC and pin drivers above it are
# the real ones, the BME280 is emulated at its channels (see EmulatedBME280).
import math


class Model:
    # Seeded, smooth, repeatable: a daily temperature cycle, humidity opposite
    # to it, weather-scale pressure drift, and a flood wave on the stream.
    # hang_s: the I2C bus locks up that many seconds after boot (a fault to test the watchdog with).
    def __init__(self, seed, uptime_ms, hang_s=None):
        self.seed = seed
        self._uptime_ms = uptime_ms
        self.phase = (seed * 7919) % 86400
        self.hang_s = hang_s

    def clock(self):  # seconds since the node booted
        return self._uptime_ms() / 1000

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


class EmulatedBME280:
    # The BME280's channels straight from the model, rounded as the driver
    # rounds them. Chip-level emulation of the same sensor, which exercises
    # the real driver, is firmware/emulated_chip.py (tests/test_firmware.py).
    CHANNELS = (("temperature", "Cel", -2), ("humidity", "%RH", -2), ("pressure", "Pa", 0))  # as bme280.BME280

    def __init__(self, model):
        self._model = model

    def read(self):
        model = self._model
        while model.hang_s is not None and model.clock() >= model.hang_s:
            pass  # a device holding SCL low: the read never returns, only the watchdog ends it
        return int(model.temperature() * 100), int(model.humidity() * 100), int(model.pressure())


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
