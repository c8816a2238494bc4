# The street light's lamp on the unix port (firmware/roles/streetlight.py; on a
# board, firmware/pwm_lamp.py). The HIL sees and drives it through the data
# directory:
#   lamp.log    one line "UNIX_MS LEVEL" each time the lamp's level changes
#               (not when it is set to the level it has: a node's reboot that
#               restores the level adds nothing)
#   lamp.fault  while this file exists the lamp has failed: dark, no current
import os
import time


def role(hal):  # the unix HAL's street light (firmware/hal_unix.py)
    from firmware.roles.streetlight import StreetLight

    return StreetLight(EmulatedLamp(hal.storage.folder), hal.storage, hal.storage.settings("node.json").get("save_s", 3600))


class EmulatedLamp:
    def __init__(self, folder, clock=time.time):  # the wall clock, as firmware/emulated_world.py says why
        self._clock = clock
        self._log = folder + "/lamp.log"
        self._fault = folder + "/lamp.fault"
        self._level = self._last_logged()

    def _last_logged(self):
        # The lamp outlives the node's process: its level is the log's last line.
        try:
            size = os.stat(self._log)[6]
            with open(self._log) as handle:
                handle.seek(max(0, size - 32))
                return int(handle.read().split()[-1])
        except (OSError, ValueError, IndexError):
            return None

    def set(self, level):
        if level != self._level:
            self._level = level
            with open(self._log, "a") as handle:
                handle.write("%d %d\n" % (int(self._clock() * 1000), level))

    def ok(self):
        try:
            os.stat(self._fault)
            return False
        except OSError:
            return True
