"""The air between the emulated radios, in real time: hil/radio.py's Medium behind pseudo-terminals.

Each radio (a node's or a bridge's emulated SX1276, firmware/emulated_air.py) opens the slave side of a
pty this object holds the master of, and speaks the line protocol documented there: `T` when a
transmission starts, `L`/`S` when its receiver starts and stops listening. The medium judges every
transmission when it ends and each receiver that was listening on its channel and SF from its start gets
what the physics gives it: `H` at the start if it is strong enough to be detected and is listening for its
I/Q sense (downlinks are inverted, as LoRaWAN's: no node hears another's uplink in its window), then `P`
(received) or `C` (destroyed by a collision: a CRC error). Time is the monotonic clock of this process, read when a
line arrives: a transmission starts when its `T` is read. A thread serves every pty; `transmissions`
keeps what went on air (sender, start, channel, SF, airtime), which a test checks the duty cycle on.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
import time
import tty
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .radio import COLLISION, DELIVERED, SENSITIVITY_DBM, Medium, Transmission

_TICK_S = 0.005  # how often ended transmissions are judged (their end is known to this much)


@dataclass
class _Radio:
    name: str
    master: int
    slave: int
    line: bytearray = field(default_factory=bytearray)
    listening: tuple[int, int, int] | None = None  # (freq, sf, bw) while its receiver is on
    iq: int = 0  # 1: its receiver is set for inverted I/Q (a node's receive window)
    heard: set[int] = field(default_factory=set)  # ids of transmissions it got a header of


class Air:
    def __init__(self, medium: Medium) -> None:
        self.medium = medium
        self.radios: dict[str, _Radio] = {}
        self.transmissions: list[Transmission] = []
        self._inverted: dict[int, int] = {}  # id(transmission) -> 1 if sent with inverted I/Q
        self.malformed = 0  # lines from a radio this protocol does not know
        self.received: Counter[tuple[str, str]] = Counter()  # (sender, receiver) -> frames delivered
        self.on_transmit: Callable[[Transmission], None] | None = None  # told of each transmission, in the air's thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, x: float, y: float) -> str:
        """A radio at (x, y) metres; the path of the pty its node opens (node.json "air")."""
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.medium.place(name, x, y, always=False)
        self.radios[name] = _Radio(name, master, slave)
        return os.ttyname(slave)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="air", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for radio in self.radios.values():
            for fd in (radio.master, radio.slave):
                os.close(fd)
        self.radios.clear()

    # ------------------------------------------------------------ the thread

    def _serve(self) -> None:
        by_fd = {radio.master: radio for radio in self.radios.values()}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(by_fd), [], [], _TICK_S)
            now = time.monotonic()
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except (BlockingIOError, OSError):
                    continue
                radio = by_fd[fd]
                radio.line += data
                while b"\n" in radio.line:
                    line, _, rest = bytes(radio.line).partition(b"\n")
                    radio.line = bytearray(rest)
                    self._line(radio, line.decode(errors="replace").split(), now)
            for reception in self.medium.outcomes(time.monotonic()):
                self._outcome(reception.receiver, reception.transmission, reception.outcome, reception.rssi_dbm, reception.snr_db)

    def _line(self, radio: _Radio, parts: list[str], now: float) -> None:
        try:
            if parts[0] == "T":
                freq, sf, bw, power, iq = (int(value) for value in parts[1:6])
                payload = bytes.fromhex(parts[6])
                transmission = Transmission(radio.name, now, freq, sf, len(payload), float(power), bw, 1, payload)
                self._inverted[id(transmission)] = iq
                self._transmit(transmission)
            elif parts[0] == "L":
                freq, sf, bw, iq = (int(value) for value in parts[1:5])
                radio.listening = (freq, sf, bw)
                radio.iq = iq
                self.medium.window(radio.name, now, math.inf, freq, sf)
            elif parts[0] == "S":
                radio.listening = None
                self.medium.close_windows(radio.name, now)
            else:
                raise ValueError(parts[0])
        except (ValueError, IndexError):
            self.malformed += 1

    def _transmit(self, transmission: Transmission) -> None:
        self.transmissions.append(transmission)
        if self.on_transmit is not None:
            self.on_transmit(transmission)
        self.medium.transmit(transmission)
        for radio in self.radios.values():
            if (
                radio.name == transmission.sender
                or radio.listening is None
                or radio.listening[:2] != (transmission.channel, transmission.sf)
                or radio.iq != self._inverted[id(transmission)]  # set for the other I/Q sense: it hears nothing of it
            ):
                continue
            if self.medium.rssi_dbm(transmission, self.medium.radios[radio.name]) >= SENSITIVITY_DBM[transmission.sf]:
                radio.heard.add(id(transmission))
                self._write(radio, b"H\n")

    def _outcome(self, name: str, transmission: Transmission, outcome: str, rssi: float, snr: float) -> None:
        radio = self.radios.get(name)
        if radio is None:
            return
        heard = id(transmission) in radio.heard
        radio.heard.discard(id(transmission))
        if not heard:  # not listening for it from its start, or for the other I/Q sense, or too weak to detect
            return
        if outcome == DELIVERED:
            self.received[(transmission.sender, name)] += 1
        if outcome in (DELIVERED, COLLISION):
            kind = b"P" if outcome == DELIVERED else b"C"
            self._write(radio, b"%s %.1f %.1f %s\n" % (kind, rssi, snr, transmission.payload.hex().encode()))

    def _write(self, radio: _Radio, data: bytes) -> None:
        # A node that is not reading (stopped) misses what a switched-off radio misses
        with contextlib.suppress(OSError):
            os.write(radio.master, data)
