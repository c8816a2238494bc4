# protocols/airtime.py and protocols/dutycycle.py on fixed inputs, printed as JSON. Portable: imported by
# pytest on CPython (run()) and run on the MicroPython unix port; tests/test_radio.py compares the two.
import json

from protocols.airtime import airtime_us, payload_symbols
from protocols.dutycycle import DutyCycle


def run():
    out = []
    for sf in (7, 8, 9, 10, 11, 12):
        for length in (0, 1, 13, 25, 51, 120, 222, 255):
            out.append([sf, length, payload_symbols(length, sf), airtime_us(length, sf), airtime_us(length, sf, 250000, 4)])
    duty = DutyCycle()
    now = 0
    for step in range(200):
        now += 37 * step % 1000 + 1
        freq = (868100000, 868300000, 869525000, 868800000)[step % 4]
        on_air = airtime_us(10 + step % 50, 7 + step % 6)
        out.append([now, duty.wait_ms(freq, now), duty.spend(freq, on_air, now), duty.budget_ms(freq, now)])
    out.append([duty.refused, duty.free_at, duty.on_air_ms])
    return out


if __name__ == "__main__":
    print(json.dumps(run()))
