# Street light: a dimmable LED luminaire. `dim` moves the lamp to a level over a
# fade; the lamp model gives the power drawn at a level, counts burning hours
# (kept on flash) and watches the lamp's health: a failed lamp draws nothing and
# is reported at once as an event. The lamp driver (the HAL's) takes a level in
# % and says whether the lamp is alight: a PWM pin and a fault input on a board
# (firmware/pwm_lamp.py), firmware/emulated_streetlight.py on the unix port.
from micropython import const

from protocols import messages

_RATED_DW = const(600)  # deciwatts at 100 %: a 60 W LED luminaire
_FLOOR_DW = const(60)  # what its driver draws whenever the lamp is lit, at any level
_CHECK_MS = const(500)  # lamp health read this often: a failure is an event within half a second
_SAVE_S = const(3600)  # burning seconds between flash writes: ~4,000 writes a year, at most an hour lost


class StreetLight:
    CHANNELS = (("level", "%", 0), ("power", "W", -1), ("lamp_ok", "", 0), ("hours", "h", -3))
    COMMANDS = {"dim": "level u0-100! fade_s u0-600"}

    def __init__(self, lamp, storage, save_s=_SAVE_S):
        self._lamp = lamp
        self._storage = storage
        self._save_s = save_s
        saved = storage.settings("lamp.json")
        level = saved.get("level", 100)  # after a power cut, the last level commanded (a new lamp: full)
        burned = saved.get("burned_s", 0)
        self.level = self._from = self._target = level if isinstance(level, int) and 0 <= level <= 100 else 100
        self._burned_s = self._saved_s = burned if isinstance(burned, int) and burned >= 0 else 0
        self._burned_ms = 0  # below a second, not yet in _burned_s
        self._fade_start = self._fade_ms = self._last_ms = self._checked_ms = 0  # _fade_ms 0: no fade under way
        # _told_ok: what the last event said; told again until an event goes out (node.event gives None when it cannot).
        self.ok = self._told_ok = lamp.ok()
        lamp.set(self.level)

    def read(self):
        lit = self.ok and self.level  # a failed or dark lamp draws nothing
        power = _FLOOR_DW + (_RATED_DW - _FLOOR_DW) * self.level // 100 if lit else 0  # deciwatts
        return (self.level, power, 1 if self.ok else 0, self._burned_s * 5 // 18)  # milli-hours: s * 1000 / 3600

    def command(self, node, name, args):  # dim, its args checked by the node
        self._from = self.level
        self._target = args["level"]
        self._fade_ms = args.get("fade_s", 0) * 1000
        self._fade_start = self._last_ms
        self._save()  # the level a power cut brings back: once per command, rare enough for the flash
        if not self._fade_ms:
            self.level = self._target
            self._lamp.set(self._target)
        if not self.ok:
            return messages.OUTCOME_FAILED, "lamp failed", self._target  # the level is kept for a new lamp
        return messages.OUTCOME_OK, None, self._target

    def poll(self, node, now_ms):
        if self._fade_ms:
            elapsed = now_ms - self._fade_start
            level = self._target
            if elapsed < self._fade_ms:
                level = self._from + (self._target - self._from) * elapsed // self._fade_ms
            else:
                self._fade_ms = 0
            if level != self.level:  # the lamp's output moves in whole percent
                self.level = level
                self._lamp.set(level)
        if self.ok and self.level:
            self._burned_ms += now_ms - self._last_ms
            if self._burned_ms >= 1000:
                self._burned_s += self._burned_ms // 1000
                self._burned_ms %= 1000
                if self._burned_s - self._saved_s >= self._save_s:
                    self._save()
        self._last_ms = now_ms
        if now_ms - self._checked_ms >= _CHECK_MS:
            self._checked_ms = now_ms
            self.ok = self._lamp.ok()
        if self.ok != self._told_ok and node.event(self, self.read()) is not None:  # lamp_ok 0 (1 once replaced), its power now
            self._told_ok = self.ok

    def _save(self):
        # A flash that fails raises: the node answers the command FAILED, or prints what poll() raised and goes on.
        self._saved_s = self._burned_s  # a failed write is not tried again before the next period
        self._storage.put("lamp.json", b'{"level": %d, "burned_s": %d}' % (self._target, self._burned_s))
