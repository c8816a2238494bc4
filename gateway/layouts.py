"""Channel layouts: which node a stored frame came from, and what its channels meant when it arrived.

Frames are stored as the nodes sent them and turned into SenML when they are
published, maybe hours later and after the node announced other channels (a
firmware update). So every distinct channel set a node announces gets an id,
each stored frame carries the id it arrived under, and a layout is written
to disk in the same transaction as the first frame that needs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .senml import Channel


@dataclass(frozen=True)
class Layout:
    id: int
    node: str  # node id, 16 hex digits
    channels: tuple[Channel, ...]

    def channels_json(self) -> str:
        return json.dumps([{"name": c.name, "unit": c.unit, "scale": c.scale} for c in self.channels])

    @classmethod
    def from_json(cls, layout_id: int, node: str, text: str) -> Layout:
        return cls(layout_id, node, tuple(Channel(c["name"], c["unit"], c.get("scale", 0)) for c in json.loads(text)))


class Layouts:
    """Every layout by id, each node's current one, and those not yet on disk."""

    def __init__(self, stored: Iterable[Layout] = ()) -> None:
        self.by_id: dict[int, Layout] = {}
        self.current: dict[str, Layout] = {}
        self.unsaved: dict[int, Layout] = {}
        for layout in sorted(stored, key=lambda known: known.id):
            self.by_id[layout.id] = self.current[layout.node] = layout
        self._next_id = max(self.by_id, default=0) + 1

    def announce(self, node: str, channels: Sequence[Channel]) -> Layout:
        """The node's layout for these channels: its current one if they did not change, else a new one."""
        layout = self.current.get(node)
        if layout is not None and layout.channels == tuple(channels):
            return layout
        layout = Layout(self._next_id, node, tuple(channels))
        self._next_id += 1
        self.by_id[layout.id] = self.current[node] = self.unsaved[layout.id] = layout
        return layout

    def saved(self, layout_ids: Iterable[int]) -> None:
        for layout_id in layout_ids:
            self.unsaved.pop(layout_id, None)

    def evicted(self, layout_ids: Iterable[int]) -> None:
        """The store deleted these with their idle node: written again with the next frame that needs one."""
        for layout_id in layout_ids:
            layout = self.by_id.get(layout_id)
            if layout is not None:
                self.unsaved[layout_id] = layout
