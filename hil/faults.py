"""Faults on the serial line between a node and the gateway, on a timeline.

Sans-I/O, like the protocol core: bytes and a clock reading go in, bytes and the
time they may be delivered come out. The rig's relay does the I/O. Everything
random comes from one `random.Random` per node and direction, seeded from the
scenario seed, and is drawn per byte position (not per read), so a seed gives
the same damage however the operating system happens to chunk the reads.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

LINE_KINDS = ("drop", "bitflip", "garbage", "latency", "throttle", "unplug")
SYSTEM_KINDS = ("broker_down", "broker_restart", "gateway_kill", "node_reboot")
INSTANT_KINDS = ("broker_restart", "node_reboot")  # done at `at`, nothing to undo at the end
UP, DOWN = "up", "down"  # node -> gateway, gateway -> node


class FaultError(ValueError):
    """A fault description that cannot be applied (unknown kind, missing or bad parameter)."""


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # seconds after the flow started
    duration: float = 0.0
    rate: float = 0.0  # drop: probability per byte; bitflip: bit-error rate
    size: int = 64  # garbage: bytes per burst
    every: float = 1.0  # garbage: seconds between bursts
    ms: float = 0.0  # latency added to every byte
    baud: int = 0  # throttle: line speed (10 bits per byte, 8N1)
    direction: str = "both"  # up, down or both
    nodes: tuple[int, ...] | None = None  # node indexes; None: every node

    def __post_init__(self) -> None:
        if self.kind not in LINE_KINDS + SYSTEM_KINDS:
            raise FaultError("unknown fault kind %r (expected one of %s)" % (self.kind, ", ".join(LINE_KINDS + SYSTEM_KINDS)))
        if self.at < 0 or self.duration < 0:
            raise FaultError("%s: 'at' and 'duration' must not be negative" % self.kind)
        if self.direction not in ("up", "down", "both"):
            raise FaultError("%s: direction must be up, down or both, not %r" % (self.kind, self.direction))
        if self.kind in ("drop", "bitflip") and not 0 < self.rate < 1:
            raise FaultError("%s: rate must be between 0 and 1, not %r" % (self.kind, self.rate))
        if self.kind == "garbage" and (self.size < 1 or self.every <= 0):
            raise FaultError("garbage: size must be at least 1 and every above 0")
        if self.kind == "latency" and self.ms <= 0:
            raise FaultError("latency: ms must be above 0")
        if self.kind == "throttle" and self.baud < 10:
            raise FaultError("throttle: baud must be at least 10")

    @property
    def end(self) -> float:
        return self.at + self.duration

    def active(self, t: float) -> bool:
        return self.at <= t < self.end

    def applies(self, node: int, direction: str | None = None) -> bool:
        if self.nodes is not None and node not in self.nodes:
            return False
        return direction is None or self.direction in ("both", direction)

    def describe(self) -> str:
        detail = {
            "drop": "p=%g per byte" % self.rate,
            "bitflip": "BER %g" % self.rate,
            "garbage": "%d bytes every %g s" % (self.size, self.every),
            "latency": "+%g ms" % self.ms,
            "throttle": "%d baud" % self.baud,
        }.get(self.kind, "")
        where = "" if self.nodes is None else " nodes %s" % ",".join(str(n) for n in self.nodes)
        return "%s%s%s at %g s for %g s" % (self.kind, " (%s)" % detail if detail else "", where, self.at, self.duration)


class _Direction:
    """The damage state of one direction of one node's line."""

    def __init__(self, seed: int) -> None:
        # One generator per kind of damage: each is drawn in byte order, whatever the chunks.
        self.drop_rng = random.Random(seed * 3)
        self.flip_rng = random.Random(seed * 3 + 1)
        self.garbage_rng = random.Random(seed * 3 + 2)
        self.position = 0  # bytes seen so far
        self.next_drop = -1  # byte position of the next drop/flip, drawn when a fault starts
        self.next_flip = -1
        self.free_at = 0.0  # throttle: when the line is free again
        self.next_garbage = 0.0

    @staticmethod
    def gap(rng: random.Random, per_byte: float) -> int:
        """Bytes until the next event for a per-byte probability (geometric: one draw per event, not per byte)."""
        u = rng.random()
        return int(math.log(1.0 - u) / math.log(1.0 - per_byte)) if per_byte < 1 else 0


class LineFaults:
    """What the faults of a timeline do to one node's line."""

    def __init__(self, faults: list[Fault] | tuple[Fault, ...], node: int, seed: int) -> None:
        self.node = node
        self.faults = [f for f in faults if f.kind in LINE_KINDS and f.applies(node)]
        self._state = {UP: _Direction(seed * 1000003 + node * 2), DOWN: _Direction(seed * 1000003 + node * 2 + 1)}
        self.damage = {"bits_flipped": 0, "bytes_dropped": 0, "garbage_bytes": 0}  # proof a fault really hit

    def _active(self, kind: str, direction: str, t: float) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind and f.active(t) and f.applies(self.node, direction)]

    def unplugged(self, t: float) -> bool:
        return any(f.kind == "unplug" and f.active(t) for f in self.faults)

    def process(self, direction: str, data: bytes, t: float) -> tuple[bytes, float]:
        """The bytes that survive, and the earliest time they may be delivered."""
        state = self._state[direction]
        out = bytearray(data)
        drops = self._active("drop", direction, t)
        flips = self._active("bitflip", direction, t)
        if drops or flips:
            out = self._damage(state, out, drops[0].rate if drops else 0.0, flips[0].rate if flips else 0.0)
        else:
            state.next_drop = state.next_flip = -1
        state.position += len(data)
        deliver_at = t
        for fault in self._active("latency", direction, t):
            deliver_at += fault.ms / 1000.0
        for fault in self._active("throttle", direction, t):
            start = max(deliver_at, state.free_at)
            state.free_at = start + len(out) * 10.0 / fault.baud
            deliver_at = state.free_at
        return bytes(out), deliver_at

    def _damage(self, state: _Direction, data: bytearray, drop_rate: float, ber: float) -> bytearray:
        start = state.position
        end = start + len(data)
        flip_rate = 1.0 - (1.0 - ber) ** 8 if ber else 0.0  # a byte with at least one bad bit
        if drop_rate and state.next_drop < start:
            state.next_drop = start + state.gap(state.drop_rng, drop_rate)
        if flip_rate and state.next_flip < start:
            state.next_flip = start + state.gap(state.flip_rng, flip_rate)
        while flip_rate and state.next_flip < end:
            data[state.next_flip - start] ^= 1 << state.flip_rng.randrange(8)
            self.damage["bits_flipped"] += 1
            state.next_flip += 1 + state.gap(state.flip_rng, flip_rate)
        dropped = []
        while drop_rate and state.next_drop < end:
            dropped.append(state.next_drop - start)
            state.next_drop += 1 + state.gap(state.drop_rng, drop_rate)
        for index in reversed(dropped):
            del data[index]
        self.damage["bytes_dropped"] += len(dropped)
        return data

    def garbage(self, direction: str, t: float) -> bytes:
        """A burst of random bytes, when one is due."""
        state = self._state[direction]
        for fault in self._active("garbage", direction, t):
            if t >= state.next_garbage:
                state.next_garbage = max(t, fault.at) + fault.every
                self.damage["garbage_bytes"] += fault.size
                return bytes(state.garbage_rng.getrandbits(8) for _ in range(fault.size))
        return b""
