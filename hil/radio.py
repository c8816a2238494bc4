"""An emulated LoRa radio medium: the air between antennas, which cannot exist here. Sans-I/O.

Transmissions go in (`transmit`), each with its sender, start, channel, spreading factor, power and
length; what every receiver got comes out (`outcomes`): a `Reception` per receiver that was listening
on that channel and SF, delivered (with RSSI and SNR) or lost, and why. Time is the caller's (seconds,
any float clock), so a test can step it and a HIL run can feed it the monotonic clock; nothing here
sleeps, reads a clock or draws randomness it was not seeded with.

The physics, each a documented model:

- **Airtime** by the Semtech formula (protocols/airtime.py).
- **Path loss**: log-distance, PL(d) = PL(d0) + 10 n log10(d / d0) + X, with X a zero-mean normal of
  sigma dB drawn once per pair of spots from the seed (shadowing: a building between them stays
  there, and shadows every radio at either spot alike: radios placed at one spot, such as a cabinet's
  bridges, share their draws). Defaults from a measurement in a city (Petajajarvi et al. 2015, Oulu: d0 = 1 km, PL(d0) =
  128.95 dB, n = 2.32, sigma = 7.8 dB); `PathLoss` takes others (LoRaSim's, Bor et al. 2016, indoors
  and near: 40 m, 127.41 dB, 2.08, 3.57 dB).
- **Sensitivity and SNR floor** per SF at 125 kHz (SX1276 datasheet: -123 ... -137 dBm; demodulator
  SNR floor -7.5 ... -20 dB), noise floor -174 dBm/Hz + 10 log10(BW) + a 6 dB noise figure.
- **Collisions**: two transmissions interfere where they overlap in time on the same channel. Same SF:
  with `capture` on, the frame survives if it is at least CAPTURE_DB stronger than the other, or if the
  other ended before the last 5 symbols of its preamble (the receiver locks on late enough: LoRaSim's
  timing rule); with `capture` off every overlap destroys both (the pure ALOHA channel). Different
  SFs are not perfectly orthogonal: the frame survives an interferer only if it is stronger by the SIR
  threshold for that pair of SFs (Goursaud & Gorce 2015, as ns-3's lorawan
  module uses them), unless `orthogonal` says to ignore other SFs.
- **Half duplex**: a radio that transmits during any part of a frame does not receive it.
- **Listening**: a receiver hears a channel and the SFs it listens on (`Receiver.listens`: a bridge
  with one SX1262 listens on one SF; a multi-SF concentrator on several). A node listens only in the
  windows it opens (`window`): a downlink must start inside one, or it is missed.

tests/test_radio.py checks the airtime against worked values, and the collision model against theory:
with capture off on one channel and SF, Poisson traffic of load G delivers e^(-2G) (pure ALOHA).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import random
from dataclasses import dataclass, field

from protocols.airtime import PREAMBLE, airtime_us, symbol_us
from protocols.lora import SNR_FLOOR_DB10

CAPTURE_DB = 6.0  # same SF: a frame this much stronger survives the overlap (LoRaSim, Bor et al. 2016)
NOISE_FIGURE_DB = 6.0
SENSITIVITY_DBM = {7: -123.0, 8: -126.0, 9: -129.0, 10: -132.0, 11: -134.5, 12: -137.0}  # SX1276, 125 kHz
SNR_FLOOR_DB = {sf: SNR_FLOOR_DB10[sf - 7] / 10 for sf in range(7, 13)}  # -7.5 ... -20 dB
# SIR a frame of SF (row, 7-12) needs over an interferer of SF (column, 7-12); the diagonal is the capture.
SIR_DB = (
    (6, -16, -18, -19, -19, -20),
    (-24, 6, -20, -22, -22, -22),
    (-27, -27, 6, -23, -25, -25),
    (-30, -30, -30, 6, -26, -28),
    (-33, -33, -33, -33, 6, -29),
    (-36, -36, -36, -36, -36, 6),
)
LATE_LOCK_SYMBOLS = 5  # a receiver needs the last this many preamble symbols clean to lock on

DELIVERED, NOT_LISTENING, TOO_WEAK, COLLISION, HALF_DUPLEX = "delivered", "not_listening", "too_weak", "collision", "half_duplex"


@dataclass(frozen=True)
class PathLoss:
    # Petajajarvi et al. 2015, measured in the city of Oulu from a gateway on a 24 m mast: 128.95 dB at
    # 1 km, exponent 2.32, shadowing 7.8 dB. At 14 dBm: SF7 reaches about 2.2 km, SF12 about 8.9 km.
    d0_m: float = 1000.0
    loss_d0_db: float = 128.95
    exponent: float = 2.32
    sigma_db: float = 7.8

    def loss_db(self, distance_m: float, shadowing_db: float) -> float:
        return self.loss_d0_db + 10 * self.exponent * math.log10(max(distance_m, 1.0) / self.d0_m) + shadowing_db


@dataclass
class Receiver:
    name: str
    x: float
    y: float
    listens: set[tuple[int, int]] = field(default_factory=set)  # (channel Hz, SF) heard at once
    always: bool = True  # listening whenever not transmitting (a bridge); False: only in its windows (a node)
    gain_db: float = 0.0
    windows: list[tuple[float, float, int, int]] = field(default_factory=list)  # (from, until, channel, SF)


@dataclass(frozen=True)
class Transmission:
    sender: str
    start: float  # s, the caller's clock
    channel: int  # Hz
    sf: int
    length: int  # payload bytes
    power_dbm: float = 14.0
    bw: int = 125000
    cr: int = 1
    payload: bytes = b""  # what the receivers get (the medium does not look at it)

    @property
    def airtime(self) -> float:
        return _airtime_s(self.length, self.sf, self.bw, self.cr)

    @property
    def end(self) -> float:
        return self.start + _airtime_s(self.length, self.sf, self.bw, self.cr)


@functools.cache
def _airtime_s(length: int, sf: int, bw: int, cr: int) -> float:
    """Once per (length, SF, bandwidth, coding rate): the medium looks at `end` in every comparison that orders
    its frames, and a capacity run makes hundreds of thousands of them."""
    return airtime_us(length, sf, bw, cr) / 1e6


@dataclass(frozen=True)
class Reception:
    transmission: Transmission
    receiver: str
    outcome: str  # DELIVERED or why not
    rssi_dbm: float
    snr_db: float


class Medium:
    def __init__(self, seed: int = 1, path_loss: PathLoss | None = None, *, capture: bool = True, orthogonal: bool = False) -> None:
        self.seed = seed
        self.path_loss = path_loss or PathLoss()
        self.capture = capture
        self.orthogonal = orthogonal  # True: other SFs never interfere (an idealisation, for comparisons)
        self.radios: dict[str, Receiver] = {}
        self._listeners: dict[str, Receiver] = {}  # radios that ever listen: only they are judged for a frame
        self._shadowing: dict[tuple[str, str], float] = {}
        self._spots: dict[tuple[float, float], str] = {}  # a spot -> the first radio placed there (its draws' name)
        self._spot_of: dict[str, str] = {}  # a radio -> the name its shadowing is drawn by
        self._pending: list[Transmission] = []  # by end: not yet judged
        self._recent: list[Transmission] = []  # by start: judged or not, kept while they can still overlap one
        self._starts: list[float] = []
        self._longest = 0.0
        self.counts: dict[str, int] = {}  # outcome -> receptions, over the whole run

    # ------------------------------------------------------------ set-up

    def place(self, name: str, x: float, y: float, listens: set[tuple[int, int]] | None = None, always: bool = True) -> Receiver:
        """A radio at (x, y) metres. listens: (channel, SF) pairs it demodulates at once (none: it only sends).
        Once per name: its spot decides its shadowing draws, and a radio moved would leave others sharing them."""
        if name in self.radios:
            raise ValueError("a radio named %r is placed already" % name)
        radio = self.radios[name] = Receiver(name, x, y, set(listens or ()), always)
        self._spot_of[name] = self._spots.setdefault((x, y), name)
        if radio.listens:
            self._listeners[name] = radio
        return radio

    def window(self, name: str, start: float, until: float, channel: int, sf: int) -> None:
        """A node opens a receive window: a frame on (channel, SF) that starts within [start, until] is heard."""
        radio = self.radios[name]
        radio.windows.append((start, until, channel, sf))
        self._listeners[name] = radio

    def close_windows(self, name: str, at: float) -> None:
        """A radio stopped listening at `at`: its windows open past it end there (hil/air.py: a receiver
        switched on and off in real time opens a window with no end)."""
        radio = self.radios[name]
        radio.windows = [(start, min(until, at), channel, sf) for start, until, channel, sf in radio.windows]

    # ------------------------------------------------------------ the physics

    def shadowing_db(self, a: str, b: str) -> float:
        """The pair's shadowing, drawn once from the seed and the two names (the same whichever way). A radio
        placed where another already stood draws by that one's name: what stands between two spots shadows
        every radio at them alike (a cabinet's four bridges see one probe through the same trees). A name not
        yet placed draws by itself (hil/radio_rig.py asks before it places a node)."""
        a, b = self._spot_of.get(a, a), self._spot_of.get(b, b)
        if a == b:
            return 0.0  # one spot: nothing stands between
        pair = (a, b) if a <= b else (b, a)
        value = self._shadowing.get(pair)
        if value is None:
            digest = hashlib.sha256(("%d\x00%s\x00%s" % (self.seed, pair[0], pair[1])).encode()).digest()
            value = self._shadowing[pair] = random.Random(digest).gauss(0.0, self.path_loss.sigma_db)
        return value

    def rssi_dbm(self, transmission: Transmission, receiver: Receiver) -> float:
        sender = self.radios[transmission.sender]
        distance = math.hypot(sender.x - receiver.x, sender.y - receiver.y)
        loss = self.path_loss.loss_db(distance, self.shadowing_db(sender.name, receiver.name))
        return transmission.power_dbm + sender.gain_db + receiver.gain_db - loss

    @staticmethod
    def noise_dbm(bw: int) -> float:
        return -174.0 + 10 * math.log10(bw) + NOISE_FIGURE_DB

    # ------------------------------------------------------------ running

    def transmit(self, transmission: Transmission) -> None:
        """A frame goes on air. Transmissions may be given in any order of start, but each before `outcomes`
        is asked for a time past its start."""
        if transmission.sender not in self.radios:
            raise KeyError("transmitter %r was never placed" % transmission.sender)
        index = bisect.bisect(self._starts, transmission.start)
        self._starts.insert(index, transmission.start)
        self._recent.insert(index, transmission)
        bisect.insort(self._pending, transmission, key=lambda t: t.end)
        self._longest = max(self._longest, transmission.airtime)

    def outcomes(self, now: float) -> list[Reception]:
        """What every listening radio got of each transmission that ended by `now`, in order of end."""
        done: list[Reception] = []
        while self._pending and self._pending[0].end <= now:
            transmission = self._pending.pop(0)
            done += self._judge(transmission)
        self._forget(now)
        for reception in done:
            self.counts[reception.outcome] = self.counts.get(reception.outcome, 0) + 1
        return done

    def _overlapping(self, transmission: Transmission) -> list[Transmission]:
        """Every other transmission on air at some moment of this one (starts are sorted: a bounded scan)."""
        first = bisect.bisect_left(self._starts, transmission.start - self._longest)
        last = bisect.bisect_right(self._starts, transmission.end)
        return [
            other
            for other in self._recent[first:last]
            if other is not transmission and other.start < transmission.end and other.end > transmission.start
        ]

    def _judge(self, transmission: Transmission) -> list[Reception]:
        others = self._overlapping(transmission)
        out = []
        for receiver in self._listeners.values():
            if receiver.name == transmission.sender or not self._hears(receiver, transmission):
                continue
            rssi = self.rssi_dbm(transmission, receiver)
            snr = rssi - self.noise_dbm(transmission.bw)
            outcome = DELIVERED
            if any(other.sender == receiver.name for other in others):
                outcome = HALF_DUPLEX
            elif rssi < SENSITIVITY_DBM[transmission.sf] or snr < SNR_FLOOR_DB[transmission.sf]:
                outcome = TOO_WEAK
            elif any(self._destroys(other, transmission, receiver, rssi) for other in others):
                outcome = COLLISION
            out.append(Reception(transmission, receiver.name, outcome, round(rssi, 1), round(snr, 1)))
        return out

    def _hears(self, receiver: Receiver, transmission: Transmission) -> bool:
        if (transmission.channel, transmission.sf) in receiver.listens and receiver.always:
            return True
        return any(
            start <= transmission.start <= until and channel == transmission.channel and sf == transmission.sf
            for start, until, channel, sf in receiver.windows
        )

    def _destroys(self, other: Transmission, wanted: Transmission, receiver: Receiver, rssi: float) -> bool:
        """Whether `other`, overlapping `wanted` in time, keeps `receiver` from decoding it."""
        if other.channel != wanted.channel:
            return False
        if other.sf != wanted.sf:
            if self.orthogonal:
                return False
            return rssi - self.rssi_dbm(other, receiver) < SIR_DB[wanted.sf - 7][other.sf - 7]
        if not self.capture:
            return True
        if rssi - self.rssi_dbm(other, receiver) >= CAPTURE_DB:
            return False  # the stronger one is captured
        # Only the first preamble symbols were hit: the receiver locks on the last LATE_LOCK_SYMBOLS, clean
        return other.end > wanted.start + (PREAMBLE - LATE_LOCK_SYMBOLS) * symbol_us(wanted.sf, wanted.bw) / 1e6

    def _forget(self, now: float) -> None:
        """Transmissions that can overlap nothing still to be judged leave the bookkeeping."""
        horizon = min([t.start for t in self._pending] + [now]) - self._longest
        cut = bisect.bisect_left(self._starts, horizon)
        if cut:
            del self._starts[:cut]
            del self._recent[:cut]
        for radio in self._listeners.values():
            if radio.windows:
                radio.windows = [w for w in radio.windows if w[1] >= horizon]
