# The gauge's stream on the unix port (firmware/roles/gauge.py): a pressure probe
# on an ADC (the mapping of emulation.EmulatedADC: 4-20 mA over 0-5 m) in water
# whose level follows a profile the HIL writes into the data directory:
#   water.txt   lines "UNIX_SECONDS LEVEL_MM": the level between two points is
#               on the straight line between them, before the first the first,
#               after the last the last; no file: a calm stream at 350 mm
# plus the probe's noise of +-1 mm.
from micropython import const

from firmware.emulated_world import Noise, WorldFile, now


def role(hal):  # the unix HAL's gauge (firmware/hal_unix.py)
    from firmware.roles.gauge import Gauge

    return Gauge(EmulatedWaterADC(hal.storage.folder, hal.seed), hal.storage)


_CALM_MM = const(350)
_POINTS = const(64)
_ZERO = const(6553)  # ADC counts at 4 mA (0 mm)
_FULL_MM = const(5000)  # ... and at 20 mA


class EmulatedWaterADC:
    def __init__(self, folder, seed, clock=now):
        self._clock = clock
        self._file = WorldFile(folder + "/water.txt", _POINTS)
        self._points = []
        self._noise = Noise(seed)

    def level_mm(self):
        if self._file.changed():
            self._points = [row for row in self._file.rows() if len(row) == 2]
        points = self._points
        if not points:
            return _CALM_MM
        t = self._clock()
        if t <= points[0][0]:
            return points[0][1]
        for index in range(1, len(points)):
            t1, mm1 = points[index]
            if t < t1:
                t0, mm0 = points[index - 1]
                return mm0 + (mm1 - mm0) * (t - t0) / (t1 - t0)
        return points[-1][1]

    def read_u16(self):
        mm = self.level_mm() + self._noise.next(1)
        return max(0, min(65535, int(_ZERO + mm * (65535 - _ZERO) / _FULL_MM + 0.5)))
