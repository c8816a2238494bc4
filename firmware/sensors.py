# Channel sources. Each has CHANNELS = ((name, SenML unit, scale), ...) and
# read() -> a tuple of integers in the same order (scaled by 10**-scale).
# The BME280 driver (firmware/bme280.py) is one too.
class WaterLevelSource:
    # An ADC pressure probe at the stream bed: level in mm = (raw - zero) * span / full.
    CHANNELS = (("water_level", "m", -3),)

    def __init__(self, adc, zero=6553, full_scale_mm=5000):
        self._adc = adc
        self._zero = zero
        self._full = full_scale_mm

    def read(self):
        raw = self._adc.read_u16()
        level = (raw - self._zero) * self._full // (65535 - self._zero)
        return (level if level > 0 else 0,)


class PulseSource:
    # Counts edges on a pin (rain gauge, flow meter) with an IRQ; reports the running total.
    CHANNELS = (("pulses", "count", 0),)

    def __init__(self, pin, trigger):
        self.count = 0
        pin.irq(handler=self._edge, trigger=trigger)

    def _edge(self, pin):
        self.count += 1

    def read(self):
        return (self.count,)


class SampleNumber:
    # The `counter` channel: 1, 2, 3, ... per sampling round; end-to-end tests prove nothing was lost with it.
    # Persisted ahead in blocks like the frame counter: it never repeats after a reboot.
    CHANNELS = (("counter", "", 0),)

    def __init__(self, storage):
        from firmware.storage import PersistentCounter

        self._counter = PersistentCounter(storage, "samples")

    def read(self):
        return (self._counter.take(),)
