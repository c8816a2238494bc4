# The gauge's stream on the unix port (firmware/roles/gauge.py): a pressure probe
# on an ADC (the mapping of emulation.EmulatedADC: 4-20 mA over 0-5 m) in water
# whose level follows a profile the HIL writes into the data directory:
#   water.txt   lines "UNIX_SECONDS LEVEL_MM": the level between two points is
#               on the straight line between them, before the first the first,
#               after the last the last; no file: a calm stream at 350 mm
# plus the probe's noise of +-1 mm.
from micropython import const

from firmware.emulated_world import World


def role(hal):  # the unix HAL's gauge (firmware/hal_unix.py)
    from firmware.roles.gauge import Gauge

    return Gauge(EmulatedWaterADC(hal.storage.folder + "/water.txt", hal.seed), hal.storage)


_CALM_MM = const(350)
_ZERO = const(6553)  # ADC counts at 4 mA (0 mm)
_FULL_MM = const(5000)  # ... and at 20 mA


class EmulatedWaterADC(World):
    def level_mm(self):
        t = self.now()
        points = self.rows  # [unix_s, mm]
        if not points:
            return _CALM_MM
        if t <= points[0][0]:
            return points[0][1]
        for index in range(1, len(points)):
            t1, mm1 = points[index]
            if t < t1:
                t0, mm0 = points[index - 1]
                return mm0 + (mm1 - mm0) * (t - t0) / (t1 - t0)
        return points[-1][1]

    def read_u16(self):
        mm = self.level_mm() + self.noise(1)
        return max(0, min(65535, int(_ZERO + mm * (65535 - _ZERO) / _FULL_MM + 0.5)))
