# HAL for real boards (ESP32, RP2040): machine.UART, the board's flash
# filesystem, machine.WDT, machine.unique_id, and sensors on I2C/ADC/pins
# as wired in the node's config, /data/node.json: its "role" says what the
# node is (sensor, streetlight, gauge, parking, lora_sensor, lora_bridge), the
# other keys how it is wired. A LoRa chip (firmware/sx1276.py, firmware/sx1262.py)
# on SPI: "radio": "sx1276" or "sx1262", "spi": [id, sck, mosi, miso], "cs",
# "reset", and for the SX1262 "busy" (pin numbers); then firmware/radio_link.py's
# keys ("sf", "power", "channels", "freq"), and "sleep": 0 for a radio node that must
# not light-sleep (on the bench, its USB console up).
import os
import select
import time

import machine
from machine import WDT  # noqa: F401  (main.py arms it first thing)

from firmware.storage import Storage, report
from firmware.uptime import Uptime

_LIGHT_SLEEP_MIN_MS = 10  # a shorter wait is not worth falling asleep and waking for
_AWAKE_AFTER_BOOT_MS = 60000  # awake this long after boot: `edgegw fw flash` (mpremote's Ctrl-C) can get in then


def _sleeps(model):
    # The boards whose light sleep wakes on its timer: the classic ESP32 and the RP2040/RP2350 (MicroPython's own
    # test of it, 2026: an ESP32-S3 or -C6 did not wake without an external event, and would sleep until the watchdog)
    return model.endswith("with ESP32") or "RP2040" in model or "RP2350" in model


def _idle(config, model):
    # A radio node's wait between its radio's moments (firmware/radio_port.py `wait`, at most the node loop's 100 ms):
    # in light sleep, which keeps RAM, the radio chip's state and ticks_ms (ESP32, RP2040), at a fraction of the
    # current of time.sleep_ms awake (ESP32: 0.8 mA against 20-31 mA; a Pico about 1 mA: hil/energy.py). Its link
    # is the radio, whose chip receives on its own: no UART byte needs to wake it. Not where node.json has
    # "sleep": 0 (on the bench: a UART console hears nothing while the CPU sleeps, and USB may drop), nor where
    # a source needs the CPU or its clocks between steps (a pulse counter's pin interrupts, a lamp's PWM: both stop
    # in light sleep), nor in the first minute after boot (a reset, then `edgegw fw flash`, reaches a node that
    # sleeps), nor on a board whose light sleep may not wake (_sleeps), nor on a port without lightsleep or one
    # that refuses it (then never again).
    lightsleep = getattr(machine, "lightsleep", None) if _sleeps(model) else None
    if lightsleep is None or not config.get("sleep", 1) or "pulse_pin" in config or "lamp_pin" in config:
        return time.sleep_ms
    refused = []  # type: list[Exception]
    booted = [time.ticks_ms()]  # emptied once the first minute is over

    def idle(ms):
        if booted and time.ticks_diff(time.ticks_ms(), booted[0]) >= _AWAKE_AFTER_BOOT_MS:
            booted.clear()
        if ms < _LIGHT_SLEEP_MIN_MS or refused or booted:
            time.sleep_ms(ms)
            return
        try:
            lightsleep(ms)
        except (NotImplementedError, OSError) as error:
            refused.append(error)
            print("edgegw-node: light sleep refused, the node stays awake: %r" % error)
            time.sleep_ms(ms)

    return idle


class Uart:
    def __init__(self, uart_id, baud, tx=None, rx=None):
        if tx is None:
            self._uart = machine.UART(uart_id, baudrate=baud, timeout=0)
        else:
            self._uart = machine.UART(uart_id, baudrate=baud, tx=machine.Pin(tx), rx=machine.Pin(rx), timeout=0)
        self._poll = select.poll()  # machine.UART is a stream select can wait on (ESP32, RP2040)
        self._poll.register(self._uart, select.POLLIN)

    def read_available(self, buffer):
        count = self._uart.readinto(buffer)
        return count or 0

    def write(self, data):
        self._uart.write(data)

    def wait(self, ms):
        # Until a byte is there or ms have passed: the node's loop idles here.
        self._poll.poll(ms)


_RESET_CAUSES = {}
for _name, _code in (("PWRON_RESET", 1), ("HARD_RESET", 2), ("WDT_RESET", 3), ("DEEPSLEEP_RESET", 4), ("SOFT_RESET", 5)):
    if hasattr(machine, _name):
        _RESET_CAUSES[getattr(machine, _name)] = _code


def _number(config, key, default):
    value = config.get(key, default)
    if isinstance(value, (int, float)) and value > 0:
        return value
    report("node.json", key)
    return default


class Hal:
    heap_reserved = 0  # a board's code is in its flash, off the heap, or on it as the node's own

    def __init__(self):
        self.storage = Storage("/data")
        self.config = config = self.storage.settings("node.json")  # written by `edgegw fw flash`
        self.interval = _number(config, "interval", 10)
        self.status_interval = _number(config, "status_interval", 60)
        self.uart = Uart(config.get("uart_id", 1), config.get("baud", 115200), config.get("tx"), config.get("rx"))
        self._uptime = Uptime()
        self.unique_id = machine.unique_id()
        self.hw_model = os.uname().machine
        self.reset_cause = _RESET_CAUSES.get(machine.reset_cause(), 0)
        self.role = config.get("role", "sensor")
        self.radio = None
        if config.get("radio"):
            self._radio(config)

    def _radio(self, config):
        try:
            self.radio = _chip(config)
        except (KeyError, ValueError, TypeError, OSError) as error:  # miswired or absent: said, the node runs on its UART
            report("node.json", "radio %s: %r" % (config.get("radio"), error))
            return
        if self.role != "lora_bridge":  # the radio is the node's link; a bridge relays it over its UART
            from firmware import radio_link

            self.uart = radio_link.port(self.radio, config, self.uptime_ms, _idle(config, self.hw_model))

    def uptime_ms(self):
        return self._uptime.update()

    def sources(self, role):
        wiring = self.config
        if role == "lora_bridge" and self.radio is not None:
            from firmware import radio_link

            return [radio_link.bridge(self.radio, wiring)]
        if role == "lora_sensor":  # a battery probe: its climate sensor, as the "sensor" role wires one
            role = "sensor"
        try:
            if role == "streetlight":  # "lamp_pin", "fault_pin": firmware/pwm_lamp.py
                from firmware.pwm_lamp import PwmLamp
                from firmware.roles.streetlight import StreetLight

                return [StreetLight(PwmLamp(wiring["lamp_pin"], wiring.get("fault_pin")), self.storage, wiring.get("save_s", 3600))]
            if role == "gauge":  # "adc": the probe's ADC pin (4-20 mA over a shunt, 0-5 m)
                from firmware.roles.gauge import Gauge

                return [Gauge(machine.ADC(machine.Pin(wiring["adc"])), self.storage)]
            if role == "parking":  # "i2c": [SCL, SDA] of the magnetometer, firmware/qmc5883.py
                from firmware.qmc5883 import QMC5883
                from firmware.roles.parking import Parking

                scl, sda = wiring["i2c"]
                return [Parking(QMC5883(machine.I2C(0, scl=machine.Pin(scl), sda=machine.Pin(sda))), self.storage)]
        except KeyError as missing:  # a role without its wiring: said on the console, the node runs without it
            report("node.json", "role %s needs %s" % (role, missing))
            return []
        from firmware import bme280, sensors

        found: list = []
        if "i2c" in wiring:
            scl, sda = wiring["i2c"]
            found.append(bme280.BME280(machine.I2C(0, scl=machine.Pin(scl), sda=machine.Pin(sda))))
        if "adc" in wiring:
            found.append(sensors.WaterLevelSource(machine.ADC(machine.Pin(wiring["adc"]))))
        if "pulse_pin" in wiring:
            pin = machine.Pin(wiring["pulse_pin"], machine.Pin.IN, machine.Pin.PULL_UP)
            found.append(sensors.PulseSource(pin, machine.Pin.IRQ_FALLING))
        return found

    def tick(self):
        pass

    def reset(self):
        machine.reset()


def _chip(config):
    # The chip on its SPI bus, reset and found (begin() raises OSError if it does not answer as it should).
    spi_id, sck, mosi, miso = config["spi"]
    Pin = machine.Pin
    spi = machine.SPI(spi_id, baudrate=1000000, polarity=0, phase=0, sck=Pin(sck), mosi=Pin(mosi), miso=Pin(miso))
    cs = Pin(config["cs"], Pin.OUT, value=1)
    if "reset" in config:  # NRESET low for over 100 us, then the chip's start-up (DS: 5 ms SX1276, 3.5 ms SX1262)
        reset = Pin(config["reset"], Pin.OUT, value=0)
        time.sleep_ms(1)
        reset(1)
        time.sleep_ms(10)
    chip = config["radio"]
    if chip == "sx1262":
        from firmware.sx1262 import SX1262

        sx1262 = SX1262(spi, cs, Pin(config["busy"], Pin.IN))
        sx1262.begin()
        return sx1262
    if chip == "sx1276":
        from firmware.sx1276 import SX1276

        sx1276 = SX1276(spi, cs)
        sx1276.begin()
        return sx1276
    raise ValueError("radio: sx1276 or sx1262")
