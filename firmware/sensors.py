# Channel sources. Each has channels() -> [(name, SenML unit, scale)] and
# read() -> a tuple of integers in the same order (scaled by 10**-scale).
class Bme280Source:
    # The chip is looked for on every read until found, so a sensor missing at
    # boot (or a BMP280 fitted by mistake) costs its channels, not the node.
    def __init__(self, i2c):
        self._i2c = i2c
        self._chip = None

    def channels(self):
        return (("temperature", "Cel", -2), ("humidity", "%RH", -2), ("pressure", "Pa", 0))

    def read(self):
        if self._chip is None:
            from firmware.bme280 import BME280

            self._chip = BME280(self._i2c)  # OSError while absent: sample() skips the channels
        return self._chip.read()


class WaterLevelSource:
    # An ADC pressure probe at the stream bed: level in mm = (raw - zero) * span / full.
    def __init__(self, adc, zero=6553, full_scale_mm=5000):
        self._adc = adc
        self._zero = zero
        self._full = full_scale_mm

    def channels(self):
        return (("water_level", "m", -3),)

    def read(self):
        raw = self._adc.read_u16()
        level = (raw - self._zero) * self._full // (65535 - self._zero)
        return (level if level > 0 else 0,)


class PulseSource:
    # Counts edges on a pin (rain gauge, flow meter) with an IRQ; reports the running total.
    def __init__(self, pin, trigger):
        self.count = 0
        pin.irq(handler=self._edge, trigger=trigger)

    def _edge(self, pin):
        self.count += 1

    def channels(self):
        return (("pulses", "count", 0),)

    def read(self):
        return (self.count,)


class SampleNumber:
    # The `counter` channel: 1, 2, 3, ... per sampling round; end-to-end tests prove nothing was lost with it.
    # Persisted ahead in blocks like the frame counter: it never repeats after a reboot.
    def __init__(self, storage):
        from firmware.counter import PersistentCounter

        self._counter = PersistentCounter(storage, "samples")

    def channels(self):
        return (("counter", "", 0),)

    def read(self):
        return (self._counter.take(),)
