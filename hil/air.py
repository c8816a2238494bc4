"""The air between the emulated radios, in real time: hil/radio.py's Medium behind pseudo-terminals.

Each radio (a node's or a bridge's emulated SX1276, firmware/emulated_air.py) opens the slave side of a
pty this object holds the master of, and speaks the line protocol documented there: `T` when a
transmission starts, `L`/`S` when its receiver starts and stops listening. The medium judges every
transmission when it ends and each receiver that was listening on its channel and SF from its start gets
what the physics gives it: `H` when its preamble is detected, DETECT_SYMBOLS symbols after the start
(protocols/lora.py), if it is strong enough and the receiver is still listening for its I/Q sense then (downlinks
are inverted, as LoRaWAN's: no node hears another's uplink in its window; a window closed before misses it), then `P`
(received) or `C` (destroyed by a collision: a CRC error). Time is the monotonic clock of this process, read when a
line arrives: a transmission starts when its `T` is read. A thread serves every pty; `transmissions`
keeps what went on air (sender, start, channel, SF, airtime), which a test checks the duty cycle on.

In-process radios live on the same air next to the pty ones, for many light radios driven from one thread
(hil/swarm.py): no process, no pty, no line protocol, and the same physics (the medium judges both kinds
alike; only how a radio is told differs).

- `antenna(name, x, y)` places one and gives its `Antenna`: `transmit(freq, sf, payload, power_dbm=,
  invert_iq=)` is a `T`, `listen(freq, sf, invert_iq=)` an `L`, `sleep()` an `S`. What it hears comes back
  as calls, in the air's thread: `on_header()` for `H`, `on_frame(payload, rssi, snr)` for `P`,
  `on_crc_error(rssi, snr)` for `C`.
- `every_tick(callback)`: callback(now) is called from the air's thread on every turn of its loop (every
  few ms) with the monotonic time: whoever drives antennas does it there, so nothing of the air is shared
  between threads and no lock is needed. An antenna's time is the monotonic clock when it is called.
- `on_reception(reception, heard)` is told of every reception the medium judged (hil/radio.py's Reception:
  receiver, transmission, outcome), with whether the receiver detected its preamble (listening for it from its
  start to its detection, for its I/Q sense, strong enough): only then does its radio get it (`P`, `C`). In the air's
  thread: a run can tell what a bridge's radio made of each of its frames, and why one was lost.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import select
import threading
import time
import tty
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.lora import detect_ms

from .radio import COLLISION, DELIVERED, SENSITIVITY_DBM, Medium, Reception, Transmission

_TICK_S = 0.005  # how often ended transmissions are judged (their end is known to this much)


def chip_freq(freq: int) -> int:
    """The frequency an SX1276 transmits and listens on when set to `freq` Hz: Frf = f * 2^19 / 32 MHz, rounded down
    (firmware/sx1276.py sets it so, firmware/emulated_sx1276.py reports it back), so 868.1 MHz is 868 099 975 Hz."""
    return (((freq << 19) // 32000000) * 32000000) >> 19


@dataclass
class _Radio:
    name: str
    listening: tuple[int, int, int] | None = None  # (freq, sf, bw) while its receiver is on
    iq: int = 0  # 1: its receiver is set for inverted I/Q (a node's receive window)
    heard: dict[int, float] = field(default_factory=dict)  # id -> end of the transmissions whose preamble it detected
    turns: int = 0  # its receiver switched on or off so far: a preamble is detected only by one listening throughout

    def header(self) -> None:
        raise NotImplementedError

    def got(self, delivered: bool, rssi: float, snr: float, payload: bytes) -> None:
        raise NotImplementedError


@dataclass
class _PtyRadio(_Radio):
    master: int = -1
    slave: int = -1
    line: bytearray = field(default_factory=bytearray)

    def header(self) -> None:
        self.write(b"H\n")

    def got(self, delivered: bool, rssi: float, snr: float, payload: bytes) -> None:
        self.write(b"%s %.1f %.1f %s\n" % (b"P" if delivered else b"C", rssi, snr, payload.hex().encode()))

    def write(self, data: bytes) -> None:
        # A node that is not reading (stopped) misses what a switched-off radio misses
        with contextlib.suppress(OSError):
            os.write(self.master, data)


class Antenna(_Radio):
    """An in-process radio (see the module's docstring); made by Air.antenna."""

    def __init__(self, air: Air, name: str) -> None:
        super().__init__(name)
        self._air = air
        self.on_header: Callable[[], None] | None = None
        self.on_frame: Callable[[bytes, float, float], None] | None = None
        self.on_crc_error: Callable[[float, float], None] | None = None

    def transmit(
        self, freq: int, sf: int, payload: bytes, *, power_dbm: int = 14, bw: int = 125000, invert_iq: bool = False
    ) -> Transmission:
        transmission = Transmission(self.name, time.monotonic(), chip_freq(freq), sf, len(payload), float(power_dbm), bw, 1, bytes(payload))
        self._air._transmit(transmission, int(invert_iq))
        return transmission

    def listen(self, freq: int, sf: int, *, bw: int = 125000, invert_iq: bool = True) -> None:
        self._air._listen(self, time.monotonic(), chip_freq(freq), sf, bw, int(invert_iq))

    def sleep(self) -> None:
        self._air._sleep(self, time.monotonic())

    def header(self) -> None:
        if self.on_header is not None:
            self.on_header()

    def got(self, delivered: bool, rssi: float, snr: float, payload: bytes) -> None:
        if delivered and self.on_frame is not None:
            self.on_frame(payload, rssi, snr)
        elif not delivered and self.on_crc_error is not None:
            self.on_crc_error(rssi, snr)


class Air:
    def __init__(self, medium: Medium) -> None:
        self.medium = medium
        self.radios: dict[str, _Radio] = {}
        self._listening: dict[str, _Radio] = {}  # the radios whose receiver is on: those a transmission may reach
        self.transmissions: list[Transmission] = []
        self.malformed = 0  # lines from a radio this protocol does not know
        self.observer_error: str | None = None  # the first error of on_transmit, for a report
        self.received: Counter[tuple[str, str]] = Counter()  # (sender, receiver) -> frames delivered
        self.on_transmit: Callable[[Transmission], None] | None = None  # told of each transmission, in the air's thread
        self._ticks: list[Callable[[float], None]] = []  # called every turn of the air's loop, in its thread
        # (when, order, receiver, its turns then, transmission): preambles to be detected, by the loop (_detect)
        self._detecting: list[tuple[float, int, str, int, Transmission]] = []
        self._order = itertools.count()
        self.on_reception: Callable[[Reception, bool], None] | None = None  # every reception judged, and if it was heard
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, x: float, y: float) -> str:
        """A radio at (x, y) metres; the path of the pty its node opens (node.json "air")."""
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.medium.place(name, x, y, always=False)
        self.radios[name] = _PtyRadio(name, master=master, slave=slave)
        return os.ttyname(slave)

    def antenna(self, name: str, x: float, y: float) -> Antenna:
        """An in-process radio at (x, y) metres (before `start`, or from the air's thread: every_tick)."""
        if name in self.radios:
            raise ValueError("a radio named %r is on the air already" % name)
        self.medium.place(name, x, y, always=False)
        antenna = self.radios[name] = Antenna(self, name)
        return antenna

    def every_tick(self, callback: Callable[[float], None]) -> None:
        """callback(now) on every turn of the air's loop, in its thread, from its next turn on."""
        self._ticks.append(callback)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="air", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for radio in self.radios.values():
            if isinstance(radio, _PtyRadio):
                for fd in (radio.master, radio.slave):
                    os.close(fd)
        self.radios.clear()
        self._listening.clear()

    # ------------------------------------------------------------ the thread

    def _serve(self) -> None:
        by_fd = {radio.master: radio for radio in self.radios.values() if isinstance(radio, _PtyRadio)}
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
            for tick in self._ticks:
                tick(time.monotonic())
            now = time.monotonic()  # one moment for both: a frame detected and ended within one turn is still heard
            self._detect(now)
            for reception in self.medium.outcomes(now):
                self._outcome(reception)

    def _line(self, radio: _PtyRadio, parts: list[str], now: float) -> None:
        try:
            if parts[0] == "T":
                freq, sf, bw, power, iq = (int(value) for value in parts[1:6])
                payload = bytes.fromhex(parts[6])
                self._transmit(Transmission(radio.name, now, freq, sf, len(payload), float(power), bw, 1, payload), iq)
            elif parts[0] == "L":
                freq, sf, bw, iq = (int(value) for value in parts[1:5])
                self._listen(radio, now, freq, sf, bw, iq)
            elif parts[0] == "S":
                self._sleep(radio, now)
            else:
                raise ValueError(parts[0])
        except (ValueError, IndexError):
            self.malformed += 1

    def _listen(self, radio: _Radio, now: float, freq: int, sf: int, bw: int, iq: int) -> None:
        radio.turns += 1
        radio.listening = (freq, sf, bw)
        radio.iq = iq
        self._listening[radio.name] = radio
        self.medium.window(radio.name, now, math.inf, freq, sf)

    def _sleep(self, radio: _Radio, now: float) -> None:
        # A receiver switched off misses the frames it was receiving: their end finds it asleep (a window that closed
        # after another frame's CRC error, hil/radio.py judging a later, stronger one delivered by capture)
        radio.heard = {key: end for key, end in radio.heard.items() if end <= now}
        radio.turns += 1
        radio.listening = None
        self._listening.pop(radio.name, None)
        self.medium.close_windows(radio.name, now)

    def _transmit(self, transmission: Transmission, iq: int) -> None:
        self.transmissions.append(transmission)
        self.medium.transmit(transmission)
        if self.on_transmit is not None:
            try:
                self.on_transmit(transmission)
            except Exception as error:  # an observer's fault must not take the air down with it
                self.observer_error = self.observer_error or "%s: %s" % (type(error).__name__, error)
        # Its preamble is detected DETECT_SYMBOLS into it, by a receiver still listening then (a window that closed
        # first misses it, as a node's does at SF12 if the downlink starts late in it)
        detected = transmission.start + detect_ms(transmission.sf, transmission.bw) / 1000
        for radio in list(self._listening.values()):
            if (
                radio.name == transmission.sender
                or radio.listening is None
                or radio.listening[:2] != (transmission.channel, transmission.sf)
                or radio.iq != iq  # set for the other I/Q sense: it hears nothing of it
            ):
                continue
            if self.medium.rssi_dbm(transmission, self.medium.radios[radio.name]) >= SENSITIVITY_DBM[transmission.sf]:
                heapq.heappush(self._detecting, (detected, next(self._order), radio.name, radio.turns, transmission))

    def _detect(self, now: float) -> None:
        """The preambles detected by now: each receiver that has listened since the frame started (no S or L between)
        gets it."""
        while self._detecting and self._detecting[0][0] <= now:
            _at, _order, name, turns, transmission = heapq.heappop(self._detecting)
            radio = self._listening.get(name)
            if radio is None or radio.turns != turns:
                continue
            radio.heard[id(transmission)] = transmission.end
            radio.header()

    def _outcome(self, reception: Reception) -> None:
        radio = self.radios.get(reception.receiver)
        if radio is None:
            return
        transmission = reception.transmission
        heard = id(transmission) in radio.heard
        radio.heard.pop(id(transmission), None)
        if self.on_reception is not None:
            self.on_reception(reception, heard)
        if not heard:  # not listening for it from its start, or for the other I/Q sense, or too weak to detect
            return
        if reception.outcome == DELIVERED:
            self.received[(transmission.sender, radio.name)] += 1
        if reception.outcome in (DELIVERED, COLLISION):
            radio.got(reception.outcome == DELIVERED, reception.rssi_dbm, reception.snr_db, transmission.payload)
