# Water-level gauge: a pressure probe at the bottom of a stream (an ADC, read as
# firmware/sensors.py's WaterLevelSource reads it). Two alarms, each sent at once
# as an event when it starts and when it ends: `flood` (the level at or above the
# flood mark; it ends 5 cm below it) and `rise` (the level rose
# faster than a rate over the last minute; it ends below half that rate).
# `set_threshold` moves the mark and the rate; they are kept on flash.
from micropython import const

from firmware.sensors import WaterLevelSource
from protocols import messages

_SAMPLE_MS = const(500)  # the level is read this often: an alarm is an event within half a second
_SLOT_MS = const(5000)  # rate of rise: one level kept every 5 s ...
_SLOTS = const(13)  # ... over the last minute (13 levels span 60 s)
_MIN_SPAN_MS = const(30000)  # no rate from less than 30 s of levels: +-1 mm of noise over 10 s is 720 mm/h
_MARK_MM = const(1500)  # defaults until set_threshold
_HYST_MM = const(50)  # a flood ends 5 cm below the mark: waves on the water do not make a string of alarms
_RISE_MM_H = const(600)  # 10 mm a minute


class Gauge:
    CHANNELS = (("level", "m", -3), ("rate", "mm/h", 0), ("flood", "", 0), ("rise", "", 0))
    COMMANDS = {"set_threshold": "mm u1-5000! rise u1-99999"}  # the flood mark (the probe reads 0-5 m), the rate in mm/h

    def __init__(self, adc, storage):
        self._probe = WaterLevelSource(adc)
        self._storage = storage
        saved = storage.settings("gauge.json")
        self.mark = _number(saved, "mm", _MARK_MM)
        self.rise_mm_h = _number(saved, "rise", _RISE_MM_H)
        self.level = self._probe.read()[0]
        # _told: flood + 2 x rise of the last event; told again until an event goes out (node.event gives None when it cannot).
        self.rate = self.flood = self.rise = self._told = 0
        self._levels = []  # a level every _SLOT_MS, oldest first, at most _SLOTS
        self._sampled_ms = self._slotted_ms = 0  # _slotted_ms: when the newest of _levels was read

    def read(self):
        return (self.level, self.rate, self.flood, self.rise)

    def command(self, node, name, args):  # set_threshold, its args checked by the node
        self.mark = args["mm"]
        self.rise_mm_h = args.get("rise", self.rise_mm_h)
        self._storage.put("gauge.json", b'{"mm": %d, "rise": %d}' % (self.mark, self.rise_mm_h))  # raises: FAILED
        self.poll(node, self._sampled_ms)  # a mark moved under the water is a flood now, not at the next reading
        return messages.OUTCOME_OK, None, None

    def poll(self, node, now_ms):
        if now_ms - self._sampled_ms >= _SAMPLE_MS:
            self._sampled_ms = now_ms
            self.level = level = self._probe.read()[0]
            levels = self._levels
            if not levels or now_ms - self._slotted_ms >= _SLOT_MS:
                self._slotted_ms = self._slotted_ms + _SLOT_MS if levels else now_ms  # a steady cadence
                levels.append(level)
                if len(levels) > _SLOTS:
                    levels.pop(0)
            span = (len(levels) - 1) * _SLOT_MS + now_ms - self._slotted_ms
            if span >= _MIN_SPAN_MS:
                self.rate = (level - levels[0]) * 3600000 // span
        if self.level >= self.mark:
            self.flood = 1
        elif self.level < self.mark - _HYST_MM:
            self.flood = 0
        if self.rate >= self.rise_mm_h:
            self.rise = 1
        elif self.rate < self.rise_mm_h // 2:
            self.rise = 0
        state = self.flood + 2 * self.rise
        if state != self._told and node.event(self, self.read()) is not None:
            self._told = state


def _number(saved, key, default):
    value = saved.get(key, default)
    return value if isinstance(value, int) and value >= 0 else default
