"""The agent's one metrics registry: every number `edgegw status`, the MQTT status topic and /metrics show.

It is a prometheus_client CollectorRegistry, so /metrics is its exposition and nothing is translated twice. The
numbers come two ways, each named here once:

- counted as they happen, by instruments the layers call: publishes and their PUBACK round trips (the
  forwarder), commits and their latency (the committer), commands that ended (gateway/commands.py);
- read when asked, from what the layers keep anyway as state: the ports' frames and bad frames, the nodes
  (last seen, readings, gaps, radio), the buffer, the uplink. A `Reader` per layer is called at each
  collection, so a number is never kept in two places that could disagree.

`Metrics.snapshot()` gives every sample by name; gateway/status.py builds the status document from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# PUBACK round trips and commits take milliseconds to seconds (an SD card's fsync can take a second)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = dict[str, str]
Reader = Callable[[], Iterable[Metric]]


@dataclass(frozen=True)
class Snapshot:
    """Every sample of one collection: sample name (`edgegw_port_frames_total`) -> [(labels, value)]."""

    samples: dict[str, list[tuple[Labels, float]]]

    def value(self, name: str, default: float = 0.0, **labels: str) -> float:
        """The sample with exactly these labels among its own (others may be there too), or default."""
        for have, value in self.samples.get(name, []):
            if all(have.get(key) == wanted for key, wanted in labels.items()):
                return value
        return default

    def rows(self, name: str) -> list[tuple[Labels, float]]:
        return list(self.samples.get(name, []))

    def by(self, name: str, label: str) -> dict[str, float]:
        """label value -> value, for a family with one label that varies (others fixed or absent)."""
        return {labels[label]: value for labels, value in self.samples.get(name, []) if label in labels}


class _Readers:
    """The registry's collector for what is read when asked (one per registry; readers are added as layers start)."""

    def __init__(self) -> None:
        self.readers: list[Reader] = []

    def collect(self) -> Iterator[Metric]:
        for reader in self.readers:
            yield from reader()


class Metrics:
    def __init__(self, gateway_id: str, version: str, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.started = clock()
        self._clock = clock
        r = self.registry
        self._readers = _Readers()
        r.register(self._readers)  # type: ignore[arg-type]  # a collector needs only collect()
        self.reader(lambda: [_gauge("edgegw_start_time_seconds", "when the agent started (unix time)", [({}, self.started)])])
        self.reader(
            lambda: [
                _gauge("edgegw_info", "the gateway's id and version (value 1)", [({"gateway_id": gateway_id, "version": version}, 1.0)])
            ]
        )
        self.reader(_process_io)
        self.publishes = Counter("edgegw_uplink_publishes", "messages handed to the broker, by kind", ["kind"], registry=r)
        self.puback = Histogram(
            "edgegw_uplink_puback_seconds", "from a readings publish to the broker's PUBACK", buckets=LATENCY_BUCKETS, registry=r
        )
        self.commit = Histogram("edgegw_commit_seconds", "one buffer transaction, fsync included", buckets=LATENCY_BUCKETS, registry=r)
        self.commit_failures = Counter("edgegw_commit_failures", "buffer transactions that failed", registry=r)
        self.commands_ended = Counter("edgegw_commands_ended", "commands that reached a final state, by it", ["state"], registry=r)

    def reader(self, reader: Reader) -> None:
        self._readers.readers.append(reader)

    def snapshot(self) -> Snapshot:
        samples: dict[str, list[tuple[Labels, float]]] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
        return Snapshot(samples)

    def exposition(self) -> bytes:
        """The Prometheus text format (version 0.0.4) of everything."""
        return bytes(generate_latest(self.registry))


def _family(kind: type[Metric], name: str, documentation: str, rows: Iterable[tuple[Labels, float]], labels: tuple[str, ...]) -> Metric:
    rows = list(rows)
    names = list(labels or (rows[0][0].keys() if rows else ()))
    family = kind(name, documentation, labels=names)  # type: ignore[call-arg]
    for have, value in rows:
        family.add_metric([have[key] for key in names], value)  # type: ignore[attr-defined]
    return family


def _gauge(name: str, documentation: str, rows: Iterable[tuple[Labels, float]], labels: tuple[str, ...] = ()) -> Metric:
    return _family(GaugeMetricFamily, name, documentation, rows, labels)


def _counter(name: str, documentation: str, rows: Iterable[tuple[Labels, float]], labels: tuple[str, ...] = ()) -> Metric:
    """name without `_total`: prometheus_client adds it to the sample."""
    return _family(CounterMetricFamily, name, documentation, rows, labels)


def _process_io() -> list[Metric]:
    """What this process wrote to storage (/proc/self/io write_bytes: the SD card's wear, sqlite's WAL and fsyncs
    included); nothing where /proc has no io file."""
    try:
        with open("/proc/self/io", "rb") as handle:
            fields = dict(line.split(b":", 1) for line in handle.read().splitlines() if b":" in line)
        written = float(int(fields[b"write_bytes"]))
    except (OSError, KeyError, ValueError):
        return []
    return [_counter("edgegw_storage_written_bytes", "bytes this process wrote to storage (/proc/self/io)", [({}, written)])]


# ------------------------------------------------------------ the layers' state, read when asked


class PortView(Protocol):
    path: str
    frames: int
    bytes_in: int
    duplicates: int
    errors: Any  # Counter[str]: bad frames and refusals by reason
    downlink: Any  # .dropped: Counter[str] of replies dropped by reason


def port_reader(links: Callable[[], Iterable[PortView]]) -> Reader:
    def read() -> list[Metric]:
        open_links = list(links())
        return [
            _gauge(
                "edgegw_port_open", "a serial port the agent has open (1)", [({"port": link.path}, 1.0) for link in open_links], ("port",)
            ),
            _counter("edgegw_port_frames", "good frames read", [({"port": link.path}, link.frames) for link in open_links], ("port",)),
            _counter("edgegw_port_bytes", "bytes read", [({"port": link.path}, link.bytes_in) for link in open_links], ("port",)),
            _counter(
                "edgegw_port_duplicates",
                "frames a node sent again",
                [({"port": link.path}, link.duplicates) for link in open_links],
                ("port",),
            ),
            _counter(
                "edgegw_port_bad_frames",
                "bad frames and refusals, by reason",
                [({"port": link.path, "reason": reason}, count) for link in open_links for reason, count in sorted(link.errors.items())],
                ("port", "reason"),
            ),
            _counter(
                "edgegw_port_replies_dropped",
                "replies to nodes dropped (the port's queue full, or stale), by reason",
                [
                    ({"port": link.path, "reason": reason}, count)
                    for link in open_links
                    for reason, count in sorted(link.downlink.dropped.items())
                ],
                ("port", "reason"),
            ),
        ]

    return read


class NodeView(Protocol):
    hex: str
    last_seen: float
    last_port: str | None
    readings: int
    status: dict[str, Any]
    radio: dict[str, Any]

    @property
    def missing(self) -> int: ...


def node_reader(nodes: Callable[[], Iterable[NodeView]]) -> Reader:
    def read() -> list[Metric]:
        known = list(nodes())
        seen = [({"node": node.hex}, node.last_seen) for node in known]
        # where it was last heard, apart: a node that moves port changes this series only (Prometheus' info pattern)
        port = [({"node": node.hex, "port": node.last_port or ""}, 1.0) for node in known]
        radio = [node for node in known if node.radio]

        def radio_rows(key: str) -> list[tuple[Labels, float]]:
            return [({"node": node.hex}, float(node.radio[key])) for node in radio if isinstance(node.radio.get(key), int | float)]

        battery = [({"node": node.hex}, node.status["battery_mv"] / 1000.0) for node in known if type(node.status.get("battery_mv")) is int]
        return [
            _gauge("edgegw_node_last_seen_seconds", "when a frame of the node was last read (unix time)", seen, ("node",)),
            _gauge("edgegw_node_port_info", "the port the node was last heard on (value 1)", port, ("node", "port")),
            _counter("edgegw_node_readings", "readings stored or published", [({"node": n.hex}, n.readings) for n in known], ("node",)),
            _gauge(  # a gauge: a gap a resent frame fills later is taken back
                "edgegw_node_missing_frames",
                "frame counters the node skipped since the agent started and that have not arrived since",
                [({"node": n.hex}, n.missing) for n in known],
                ("node",),
            ),
            _gauge("edgegw_node_battery_volts", "the node's battery (its latest STATUS)", battery, ("node",)),
            _gauge("edgegw_node_rssi_dbm", "a radio node's latest frame, at the bridge that heard it best", radio_rows("rssi"), ("node",)),
            _gauge("edgegw_node_snr_db", "a radio node's latest frame's SNR", radio_rows("snr"), ("node",)),
            _gauge("edgegw_node_spreading_factor", "a radio node's latest frame's SF", radio_rows("sf"), ("node",)),
            _gauge("edgegw_node_delivery_ratio", "a radio node's frames heard / sent, from counter gaps", radio_rows("pdr"), ("node",)),
        ]

    return read


class BufferView(Protocol):
    @property
    def pending_readings(self) -> int: ...

    @property
    def pending_events(self) -> int: ...

    @property
    def used_bytes(self) -> int: ...


@dataclass
class BufferTrend:
    """The buffer's size over the last minute, sampled by the agent (SAMPLE_S): its net drain rate, and the age of
    its oldest reading (read on the store's thread, so sampled rather than read when asked)."""

    window_s: float = 60.0
    oldest_age_s: float = 0.0
    _points: list[tuple[float, int]] | None = None

    def add(self, now: float, readings: int) -> None:
        points = self._points = [*(self._points or []), (now, readings)]
        while len(points) > 2 and now - points[1][0] >= self.window_s:
            points.pop(0)

    def oldest(self, received: float | None, wall: float) -> None:
        """The oldest chunk's time of receipt (None: the buffer is empty)."""
        self.oldest_age_s = max(0.0, wall - received) if received is not None else 0.0

    def drain_per_s(self) -> float:
        """Readings leaving the buffer per second, net of those coming in, over the window; 0 when it is not shrinking."""
        points = self._points or []
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return 0.0
        rate = (points[0][1] - points[-1][1]) / (points[-1][0] - points[0][0])
        return max(0.0, rate)


def buffer_reader(store: Callable[[], BufferView], trend: BufferTrend) -> Reader:
    def read() -> list[Metric]:
        buffer = store()
        return [
            _gauge("edgegw_buffer_readings", "readings on disk not yet acknowledged by the broker", [({}, buffer.pending_readings)]),
            _gauge("edgegw_buffer_events", "events among them", [({}, buffer.pending_events)]),
            _gauge("edgegw_buffer_bytes", "database pages in use", [({}, buffer.used_bytes)]),
            _gauge("edgegw_buffer_oldest_age_seconds", "age of the oldest reading on disk (0: none)", [({}, trend.oldest_age_s)]),
            _gauge(
                "edgegw_buffer_drain_per_second", "net readings leaving the buffer per second, last minute", [({}, trend.drain_per_s())]
            ),
        ]

    return read


class UplinkView(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def connections(self) -> int: ...

    @property
    def connected_since(self) -> float | None: ...


def uplink_reader(uplink: UplinkView, host: str, port: int) -> Reader:
    def read() -> list[Metric]:
        since = uplink.connected_since
        return [
            _gauge(
                "edgegw_uplink_connected",
                "connected to the broker (1) or not (0)",
                [({"broker": "%s:%d" % (host, port)}, float(uplink.connected))],
            ),
            _gauge("edgegw_uplink_connected_since_seconds", "when the connection up now began (unix time; 0: none)", [({}, since or 0.0)]),
            _counter("edgegw_uplink_connections", "connections the broker accepted since start", [({}, uplink.connections)]),
        ]

    return read


def counts_reader(name: str, documentation: str, read_counts: Callable[[], dict[str, int]], label: str, counter: bool = True) -> Reader:
    """A family of counts by one label (frames acknowledged by how, commands by state)."""
    make = _counter if counter else _gauge

    def read() -> list[Metric]:
        return [make(name, documentation, [({label: key}, float(value)) for key, value in sorted(read_counts().items())], (label,))]

    return read


def value_reader(name: str, documentation: str, read: Callable[[], float], counter: bool = True) -> Reader:
    """One number without labels (events published, nodes with a key)."""
    make = _counter if counter else _gauge

    def collect() -> list[Metric]:
        return [make(name, documentation, [({}, float(read()))])]

    return collect
