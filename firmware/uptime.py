# Milliseconds since boot as a growing integer. time.ticks_ms() wraps (every
# 2**30 ms, about 12 days, on ESP32 and RP2040) and ticks_diff() only spans half
# of that, so the count is advanced in small steps; update() must run at least
# every few days, and the node's I/O loop calls it at least every 100 ms.
# Integers, not floats: the boards' single-precision floats have 128 s steps at
# Unix times.
import time


class Uptime:
    def __init__(self):
        self._last = time.ticks_ms()
        self.ms = 0

    def update(self):
        now = time.ticks_ms()
        self.ms += time.ticks_diff(now, self._last)
        self._last = now
        return self.ms
