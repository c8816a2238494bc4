# HAL for MicroPython's unix port (emulation): a pseudo-terminal path is the
# UART, a directory is the flash, the sensors are the models of emulation.py.
import select
import termios

from firmware.storage import Storage
from firmware.uptime import Uptime


class Uart:
    def __init__(self, path):
        self._file = open(path, "r+b")
        termios.setraw(self._file.fileno())
        self._poll = select.poll()
        self._poll.register(self._file, select.POLLIN)

    def read_available(self, buffer):
        # Bytes waiting, without blocking. FileIO.read(n) on this port blocks for
        # all n bytes, so take them one by one while poll says more are there.
        count = 0
        size = len(buffer)
        while count < size and self._poll.poll(0):
            byte = self._file.read(1)
            if not byte:
                break
            buffer[count] = byte[0]
            count += 1
        return count

    def write(self, data):
        self._file.write(data)


class Hal:
    hw_model = "unix-emulation"

    def __init__(self, uart_path, folder, seed):
        self.uart = Uart(uart_path)
        self.storage = Storage(folder)
        self.seed = seed
        self.unique_id = bytes([0xE1, 0]) + seed.to_bytes(6, "big")  # "e1" marks an emulated node
        self.reset_cause = 5 if self.storage.get("counter") else 1  # soft reset after a first boot, else power-on
        self._uptime = Uptime()
        self._pins = []

    def watchdog(self, timeout_ms):
        # The unix port has no hardware watchdog: the HAL stands in, and feeding it does nothing.
        return self

    def feed(self):
        pass

    def uptime_ms(self):
        return self._uptime.update()

    def sources(self, role):
        from firmware import emulation, sensors

        model = emulation.Model(self.seed, self.uptime_ms)
        pin = emulation.EmulatedPin(model)
        self._pins.append(pin)
        return [
            emulation.EmulatedBME280(model),
            sensors.WaterLevelSource(emulation.EmulatedADC(model)),
            sensors.PulseSource(pin, 0),
        ]

    def tick(self):
        for pin in self._pins:
            pin.tick()
