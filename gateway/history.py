"""The last hour, for the status page's sparklines: each node's readings and the buffer, sampled from the metrics
registry once a minute (the registry holds totals; a sparkline wants what happened in each minute).

Bounded: STEPS samples per series, and a node gone from the registry (never: nodes stay until a restart) costs
one deque. 1,000 nodes x 61 samples is well under a megabyte.
"""

from __future__ import annotations

from collections import deque
from itertools import pairwise

from .metrics import Snapshot

STEP_S = 60.0  # one sample a minute
STEPS = 60  # an hour of them


class History:
    def __init__(self, steps: int = STEPS) -> None:
        self._steps = steps
        self._readings: dict[str, deque[float]] = {}  # node -> its readings total at each sample, oldest first
        self._buffer: deque[float] = deque(maxlen=steps + 1)
        self._samples: deque[float] = deque(maxlen=steps + 1)  # when each was taken (unix s)
        self._buffer_peak = 0.0  # the most readings buffered since the last sample (note_buffer, every few seconds)

    def sample(self, snapshot: Snapshot, now: float) -> None:
        self._samples.append(now)
        self._buffer.append(max(self._buffer_peak, snapshot.value("edgegw_buffer_readings")))
        self._buffer_peak = 0.0
        seen = snapshot.by("edgegw_node_readings_total", "node")
        for node, total in seen.items():
            series = self._readings.get(node)
            if series is None:
                # A node first seen now: zeros before (the series line up with the samples' times)
                series = self._readings[node] = deque([0.0] * (len(self._samples) - 1), maxlen=self._steps + 1)
            series.append(total)
        for node, series in self._readings.items():
            if node not in seen:
                series.append(series[-1] if series else 0.0)

    def note_buffer(self, readings: float) -> None:
        """The buffer's size now (the agent's sampling every few seconds): a minute's sample keeps its most, so a
        backlog that came and drained within the minute still shows."""
        self._buffer_peak = max(self._buffer_peak, readings)

    def per_minute(self, node: str, live: float | None = None, now: float | None = None) -> list[float]:
        """Readings in each minute of the last hour, oldest first; `live` (its total `now`) adds the minute under
        way, scaled to a whole minute (once 5 s of it passed: a rate from less says little)."""
        series = list(self._readings.get(node, ()))
        minutes = [max(0.0, later - earlier) for earlier, later in pairwise(series)]
        if live is not None and now is not None and series and self._samples and now - self._samples[-1] >= 5.0:
            minutes.append(max(0.0, live - series[-1]) * STEP_S / (now - self._samples[-1]))
        return minutes

    def buffer(self, live: float | None = None) -> list[float]:
        """The buffer's readings at each sample (the most within its minute), oldest first, and now."""
        return [*self._buffer, *([] if live is None else [max(live, self._buffer_peak)])]
