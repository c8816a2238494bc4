"""The EU868 duty cycle, kept by whoever transmits: a node, a bridge (ETSI EN 300 220-2, LoRaWAN RP002 EU868).

Sub-bands and their limits (the share of any period a transmitter may be on air):

    868.0 - 868.6 MHz    1 %    (h1.4: LoRaWAN's 868.1, 868.3, 868.5)
    868.7 - 869.2 MHz    0.1 %  (h1.5)
    869.4 - 869.65 MHz  10 %    (h1.6: LoRaWAN's RX2, 869.525)
    869.7 - 870.0 MHz    1 %    (h1.7)

Any other frequency is refused: a transmitter here never guesses a limit. Two rules, per sub-band:
the one LoRaWAN devices keep, after a transmission of T on air the sub-band is closed for T * (100 / d - 1)
(d in percent), so between the starts of two transmissions lie at least T * 100 / d (no bursts); and
ETSI's own, no hour holds more than d of it on air (the time-off alone lets a window hold one frame
more), checked against the airtime of the last 61 minutes kept by minute. A node keeps both; a bridge
(`DutyCycle(time_off=False)`) ETSI's alone, as a LoRaWAN gateway's downlinks are scheduled. Sans-I/O: the caller passes
its clock (monotonic milliseconds, the firmware's uptime) and the airtime (protocols/airtime.py);
nothing here sleeps. Small enough for a node: 61 small integers per sub-band it transmits in.
"""

from ._compat import const

# (lowest Hz, highest Hz, limit in parts of _WHOLE of the time: 1 % = 1000)
BANDS = (
    (868000000, 868600000, 1000),
    (868700000, 869200000, 100),
    (869400000, 869650000, 10000),
    (869700000, 870000000, 1000),
)
_WHOLE = const(100000)  # the limits above are parts of this
_HOUR_MS = const(3600000)  # ETSI's observation period
_MINUTE_MS = const(60000)
_MINUTES = const(61)


def band(freq: int) -> int:
    """The index of the sub-band a channel lies in; ValueError outside every EU868 sub-band."""
    for index in range(len(BANDS)):
        low, high, _limit = BANDS[index]
        if low <= freq <= high:
            return index
    raise ValueError("%d Hz is in no EU868 sub-band this transmitter may use" % freq)


class DutyCycle:
    def __init__(self, time_off: bool = True) -> None:
        # time_off False: ETSI's hourly rule alone, as a bridge keeps it (a gateway's downlinks go in its nodes'
        # receive windows, which a time-off after each would often close; LoRaWAN's network servers schedule a
        # gateway's duty cycle over the hour alike). A node keeps both (LoRaWAN RP002's end-device rule).
        self.time_off = time_off
        bands = len(BANDS)
        self.free_at = [0] * bands  # ms: when each sub-band may be used again (the time-off after a transmission)
        self.on_air_ms = [0] * bands  # ms on air per sub-band since start (for STATUS)
        # Per sub-band, ms on air in each of the last _MINUTES minutes (a ring, by minute number % _MINUTES):
        # the hour any transmission ends is checked whole, not hoped for from the time-off alone. Made at the
        # sub-band's first transmission: a node uses one or two of the four (a gateway keeps two per radio node)
        self._minutes: list = [None] * bands
        self._minute = [0] * bands  # the newest minute each ring holds
        self.refused = 0  # transmissions asked for while their sub-band was closed (waited for or dropped)

    def wait_ms(self, freq: int, now_ms: int) -> int:
        """0 if a transmission on `freq` may start now (the time-off is over), else how long until it may."""
        wait = self.free_at[band(freq)] - now_ms
        return wait if wait > 0 else 0

    def spend(self, freq: int, airtime_us: int, now_ms: int) -> bool:
        """Account a transmission starting now; False (nothing accounted, counted in `refused`) if the sub-band
        is closed (its time-off, or its last hour full): the caller waits or drops the frame, never transmits."""
        index = band(freq)
        on_air = (airtime_us + 999) // 1000
        if self.free_at[index] > now_ms or self._hour_ms(index, now_ms) + on_air > _HOUR_MS * BANDS[index][2] // _WHOLE:
            self.refused += 1
            return False
        self.on_air_ms[index] += on_air
        ring = self._minutes[index]
        if ring is None:
            ring = self._minutes[index] = [0] * _MINUTES
            self._minute[index] = now_ms // _MINUTE_MS
        ring[(now_ms // _MINUTE_MS) % _MINUTES] += on_air
        if self.time_off:
            self.free_at[index] = now_ms + on_air * _WHOLE // BANDS[index][2]  # start to start: T * 100 / d
        return True

    def budget_ms(self, freq: int, now_ms: int) -> int:
        """Airtime the sub-band of `freq` still allows in the hour ending now (what a bridge reports in STATUS and
        the gateway schedules downlinks against)."""
        index = band(freq)
        left = _HOUR_MS * BANDS[index][2] // _WHOLE - self._hour_ms(index, now_ms)
        return left if left > 0 else 0

    def _hour_ms(self, index: int, now_ms: int) -> int:
        """Ms on air in the sub-band over the minutes covering the last hour (61 of them: the hour before any
        moment within the current minute is inside them, so the check errs on the safe side)."""
        minute = now_ms // _MINUTE_MS
        ring = self._minutes[index]
        if ring is None:  # nothing sent in it yet
            return 0
        gap = minute - self._minute[index]
        if gap > 0:  # minutes with nothing sent since the ring was last used: cleared
            for step in range(1, (gap if gap < _MINUTES else _MINUTES) + 1):
                ring[(self._minute[index] + step) % _MINUTES] = 0
            self._minute[index] = minute
        total = 0
        for value in ring:
            total += value
        return total
