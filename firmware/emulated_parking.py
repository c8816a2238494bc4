# The parking bay's magnetometer on the unix port (firmware/roles/parking.py):
# the earth's field (about 48 uT, a little different per bay), +-1.5 uT of
# noise, now and then a car passing in the lane (one reading, +12 uT), and the
# cars the HIL parks on the bay through the data directory:
#   cars.txt    lines "ARRIVE DEPART" (Unix seconds; no DEPART: it stays)
# A parked car moves the field by 15-40 uT (up or down, per car); for the two
# seconds it takes to park or pull out the field wobbles between a fifth and
# all of that, crossing the node's thresholds several times.
import math

from micropython import const

from firmware.emulated_world import World


def role(hal):  # the unix HAL's parking bay (firmware/hal_unix.py)
    from firmware.roles.parking import Parking

    return Parking(EmulatedMagnetometer(hal.storage.folder + "/cars.txt", hal.seed), hal.storage)


_MANOEUVRE_S = const(2)


class EmulatedMagnetometer(World):
    def read(self):
        # The field's magnitude in 0.1 uT, as the board's driver returns it.
        t = self.now()
        seed = self.seed
        field = 470 + seed % 21 + self.noise(15)  # the earth's field here
        if int(t * 5) % (37 + seed % 11) == 0:
            field += 120  # a car passing in the lane: a fifth of a second
        for car in self.rows:  # [arrive, depart] or [arrive]
            arrive = car[0]
            depart = car[1] if len(car) > 1 else t + _MANOEUVRE_S + 1
            if arrive <= t < depart + _MANOEUVRE_S:
                key = (seed * 31 + int(arrive)) % 501
                pull = (150 + key % 251) * (1 if key & 1 else -1)
                if t < arrive + _MANOEUVRE_S or t >= depart:  # parking or pulling out
                    pull = int(pull * (0.6 + 0.4 * math.sin(9 * t)))
                if t >= depart:
                    pull = int(pull * (depart + _MANOEUVRE_S - t) / _MANOEUVRE_S)
                field += pull
        return field
