# HAL for real boards (ESP32, RP2040): machine.UART, the board's flash
# filesystem, machine.WDT, machine.unique_id, and sensors on I2C/ADC/pins
# as wired in the node's config.
import os
import time

import machine

from firmware.storage import Storage
from firmware.uptime import Uptime


class Uart:
    def __init__(self, uart_id, baud, tx=None, rx=None):
        if tx is None:
            self._uart = machine.UART(uart_id, baudrate=baud, timeout=0)
        else:
            self._uart = machine.UART(uart_id, baudrate=baud, tx=machine.Pin(tx), rx=machine.Pin(rx), timeout=0)

    def read_available(self, buffer):
        count = self._uart.readinto(buffer)
        return count or 0

    def write(self, data):
        self._uart.write(data)


_RESET_CAUSES = {}
for _name, _code in (("PWRON_RESET", 1), ("HARD_RESET", 2), ("WDT_RESET", 3), ("DEEPSLEEP_RESET", 4), ("SOFT_RESET", 5)):
    if hasattr(machine, _name):
        _RESET_CAUSES[getattr(machine, _name)] = _code


class Hal:
    def __init__(self, config):
        self.config = config
        self.uart = Uart(config.get("uart_id", 1), config.get("baud", 115200), config.get("tx"), config.get("rx"))
        self.storage = Storage("/data")
        self._uptime = Uptime()
        # Ports that count time.time() from 2000-01-01 (SPEC.md 5.6).
        self.epoch_offset = 946684800 if time.gmtime(0)[0] == 2000 else 0

    def unique_id(self):
        return machine.unique_id()

    def hw_model(self):
        return os.uname().machine

    def reset_cause(self):
        return _RESET_CAUSES.get(machine.reset_cause(), 0)

    def watchdog(self, timeout_ms):
        return machine.WDT(timeout=timeout_ms)

    def uptime_ms(self):
        return self._uptime.update()

    def clock(self):
        # Seconds since boot, for the sensor models; protocol time uses uptime_ms().
        return self._uptime.update() / 1000

    def sources(self, role):
        from firmware import sensors

        found: list = []
        wiring = self.config
        if "i2c" in wiring:
            scl, sda = wiring["i2c"]
            found.append(sensors.Bme280Source(machine.I2C(0, scl=machine.Pin(scl), sda=machine.Pin(sda))))
        if "adc" in wiring:
            found.append(sensors.WaterLevelSource(machine.ADC(machine.Pin(wiring["adc"]))))
        if "pulse_pin" in wiring:
            pin = machine.Pin(wiring["pulse_pin"], machine.Pin.IN, machine.Pin.PULL_UP)
            found.append(sensors.PulseSource(pin, machine.Pin.IRQ_FALLING))
        return found

    def tick(self):
        pass
