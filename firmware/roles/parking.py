# Parking bay: a magnetometer under the bay sees a car as a change of the
# earth's field (tens of microtesla against about two of noise). Occupancy has
# hysteresis twice over: a car must move the field past ON to arrive and back
# within OFF to leave, each for several readings in a row, so a car wobbling in
# and out while it parks is one arrival. Every change is an event, sent at once
# and in order. The empty bay's field is learned (at the first start, and with
# `calibrate`), kept on flash, and followed slowly while the bay is empty.
# The magnetometer driver (the HAL's) returns the field's magnitude in 0.1 uT.
from micropython import const

from protocols import messages

_SAMPLE_MS = const(200)
_ON = const(100)  # 10 uT from the empty bay's field: a car
_OFF = const(50)  # within 5 uT: empty
_ON_COUNT = const(3)  # readings in a row beyond a limit before the state changes (0.6 s)
_OFF_COUNT = const(5)  # (1 s: a car leaving wobbles longer than one arriving)
_LEARN = const(8)  # readings averaged to learn the empty bay's field
_FOLLOW = const(6)  # while empty, the learned field moves 1/64 of the way to each reading (drift, temperature)


class Parking:
    CHANNELS = (("occupied", "", 0), ("field", "T", -7))
    COMMANDS = {"calibrate": ""}

    def __init__(self, magnetometer, storage):
        self._sensor = magnetometer
        self._storage = storage
        base = storage.settings("parking.json").get("base")
        base = base if isinstance(base, int) and base > 0 else 0  # 0: learn it
        self._base64 = base << _FOLLOW  # the empty bay's field x 64: followed without rounding drift
        self._learning = 0 if base else _LEARN
        self._sum = 0
        self.occupied = 0
        self.field = 0
        self._run = 0  # readings in a row that disagree with the state
        self._sampled_ms = 0
        self._told = 0  # occupancy of the last event: told again until an event goes out (node.event gives None when it cannot)

    def read(self):
        return (self.occupied, self.field)

    def command(self, node, name, args):  # calibrate
        if self.occupied:
            return messages.OUTCOME_BUSY, "bay occupied", None
        self._learning = _LEARN  # from the next readings: the bay is empty now
        self._sum = 0
        return messages.OUTCOME_OK, None, None

    def poll(self, node, now_ms):
        if self.occupied != self._told and node.event(self, self.read()) is not None:
            self._told = self.occupied
        if now_ms - self._sampled_ms < _SAMPLE_MS:
            return
        self._sampled_ms = now_ms
        self.field = field = self._sensor.read()
        if self._learning:
            self._sum += field
            self._learning -= 1
            if not self._learning:
                base = self._sum // _LEARN
                self._base64 = base << _FOLLOW
                self._storage.put("parking.json", b'{"base": %d}' % base)  # raises: printed by the node, learned all the same
            return
        base = self._base64 >> _FOLLOW
        away = field - base if field > base else base - field
        if self.occupied:
            changing = away < _OFF
            needed = _OFF_COUNT
        else:
            changing = away >= _ON
            needed = _ON_COUNT
            if not changing:
                self._base64 += field - base
        self._run = self._run + 1 if changing else 0
        if self._run >= needed:
            self._run = 0
            self.occupied ^= 1
            if node.event(self, self.read()) is not None:
                self._told = self.occupied
