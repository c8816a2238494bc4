"""The real BME280 driver against the emulated chip, on MicroPython (portable).

Prints one JSON line: for a few model times, what the driver read and what the
model says; whether a missing chip raised OSError; and whether the emulated
node's channel-level BME280 announces the driver's channels. pytest compares.
"""

import json
import sys


def main(seed):
    from firmware import emulation
    from firmware.bme280 import BME280
    from firmware.emulated_chip import EmulatedBME280Chip

    readings = []
    for seconds in (0, 3600, 21600, 43200, 64800):
        model = emulation.Model(seed, lambda s=seconds: s * 1000)
        driver = BME280(EmulatedBME280Chip(model))
        temperature, humidity, pressure = driver.read()
        readings.append(
            {
                "read": [temperature, humidity, pressure],
                "model": [model.temperature() * 100, model.humidity() * 100, model.pressure()],
            }
        )
    absent = BME280(EmulatedBME280Chip(emulation.Model(seed, lambda: 0), address=0x77))
    try:
        absent.read()
        missing = "no error"
    except OSError:
        missing = "OSError"
    same_channels = emulation.EmulatedBME280.CHANNELS == BME280.CHANNELS
    print(json.dumps({"readings": readings, "missing": missing, "same_channels": same_channels}))


main(int(sys.argv[1]))
