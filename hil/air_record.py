"""What became of every frame on the emulated air: per transmission, what each bridge that could hear it got (and,
of a bridge's downlink, each node listening).

The medium judges each transmission for every radio listening on its channel and SF from its start
(hil/radio.py); the air tells an observer (`Air.on_reception`) of each judgement, with whether the radio
detected its preamble. An `AirRecord` is that observer for a city run: it keeps the outcome per receiver, so
that the report can say why a node's uplinks were lost (collision, half duplex, too weak, a bridge that
did not detect its preamble, or no bridge listening on its channel and SF at all), and `write` puts the whole
record in a file, a line a transmission, for the question the report does not answer.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

from protocols import messages

from .radio import COLLISION, DELIVERED, HALF_DUPLEX, NOT_LISTENING, TOO_WEAK, Reception, Transmission

# the medium delivered it, but the radio did not detect its preamble: not listening from its start to DETECT_SYMBOLS into
# it (a node's window closed first: a downlink aimed late at SF11-12), or for the other I/Q sense
DEAF = "deaf"
UNHEARD = "unheard"  # no radio of interest listened on its channel and SF when it started
FATES = (DELIVERED, COLLISION, HALF_DUPLEX, DEAF, TOO_WEAK, NOT_LISTENING, UNHEARD)  # best first
_TYPE = 1  # a frame's header (protocols/frame.py): its type, its flags, the node it is from or to
_FLAGS = 2
_NODE = slice(3, 11)
_COUNTER = slice(11, 15)


class AirRecord:
    """Air.on_reception for a run: called in the air's thread, read from another (a lock between them).

    bridges: the bridges' names on the air; an uplink's fate is the best any of them had of it. Other
    receivers (nodes in their windows) are kept for the bridges' transmissions (their downlinks) only: a swarm
    of 2,000 nodes has dozens of windows open during every uplink, on the air's own thread."""

    def __init__(self, bridges: set[str]) -> None:
        self.bridges = bridges
        self._got: dict[int, dict[str, str]] = {}  # id(transmission) -> receiver -> outcome
        self._lock = threading.Lock()

    def __call__(self, reception: Reception, heard: bool) -> None:
        if reception.receiver not in self.bridges and reception.transmission.sender not in self.bridges:
            return  # a node's receiver is kept for downlinks only: another node's uplink it was not set for says nothing
        outcome = DEAF if reception.outcome == DELIVERED and not heard else reception.outcome
        with self._lock:
            self._got.setdefault(id(reception.transmission), {})[reception.receiver] = outcome

    def got(self, transmission: Transmission) -> dict[str, str]:
        with self._lock:
            return dict(self._got.get(id(transmission), {}))

    def fate(self, transmission: Transmission) -> str:
        """An uplink's: the best outcome at any bridge."""
        at_bridges = [outcome for receiver, outcome in self.got(transmission).items() if receiver in self.bridges]
        return min(at_bridges, key=FATES.index) if at_bridges else UNHEARD

    def fates(self, transmissions: list[Transmission], senders: set[str]) -> dict[str, Counter[str]]:
        """sender -> how many of its transmissions met each fate."""
        found: dict[str, Counter[str]] = {}
        for transmission in transmissions:
            if transmission.sender in senders:
                found.setdefault(transmission.sender, Counter())[self.fate(transmission)] += 1
        return found

    def write(self, path: Path, transmissions: list[Transmission], names: dict[str, str]) -> None:
        """A JSON line per transmission, in order of start: seconds from the first, its sender (name on the air),
        the node in its header, its type, flags and counter, channel, SF, bytes, power, airtime, and what each receiver got.
        names: name on the air -> node hex."""
        if not transmissions:
            Path(path).write_text("")
            return
        first = transmissions[0].start
        with open(path, "w") as out:
            for t in transmissions:
                payload = t.payload or b""
                kind = messages.NAMES.get(payload[_TYPE], "?") if len(payload) > _TYPE else "?"
                line = {
                    "t": round(t.start - first, 3),
                    "from": t.sender,
                    "from_node": names.get(t.sender),
                    "node": bytes(payload[_NODE]).hex() if len(payload) >= _NODE.stop else None,
                    "type": kind,
                    "flags": payload[_FLAGS] if len(payload) > _FLAGS else None,
                    "counter": int.from_bytes(payload[_COUNTER], "big") if len(payload) >= _COUNTER.stop else None,
                    "freq": t.channel,
                    "sf": t.sf,
                    "bytes": t.length,
                    "dbm": t.power_dbm,
                    "ms": round(t.airtime * 1000, 1),
                    "got": self.got(t),
                }
                out.write(json.dumps(line) + "\n")
