"""The city scenarios' parts of a scenario file: node roles, commands, the emulated world, pass criteria.

    [[roles]]                 # nodes by role, numbered in the order given (node indexes 0..N-1)
    role = "streetlight"      # one of ROLES; "sensor" is the classic node with no role
    count = 50
    [[commands]]              # one request per node, published at `at` on .../nodes/{node}/command
    at = 5
    id = "dim40"              # the request id is "{id}-{node index}"
    name = "dim"
    args = { level = 40 }
    nodes = "streetlight"     # a role, "all" (default) or a list of node indexes
    within_s = 30             # pass: every one `succeeded` within this long of its publish
    [[world]]                 # what happens in the emulated world (hil/world.py writes it for the nodes)
    kind = "water_wave"       # water_wave, cars or lamp_failure
    at = 20
    [pass]                    # thresholds; each criterion is computed from observations (hil/outcomes.py)
    event_p99_s = 2.0
    [gateway]                 # the gateway's buffer for this scenario
    max_bytes = 600000
    [air]                     # the nodes are on the air, behind LoRa bridges on the gateway's serial lines
    bridges = [{ x = 0, y = 0, sf = 9 }, { x = 3000, y = 0, sf = 9 }]   # metres; SF and channel each listens on
    boot_spread_s = 60        # the nodes are switched on one after another over this long (default 0)

With [air], every node of [[roles]] is a radio node (firmware/radio_port.py) placed at a seeded random bearing
from (0, 0), `distance_m = [near, far]` of its group away (default 200-1500 m), sending at `sf` (an SF, or an
array of SFs its group's nodes take in turn; default the first bridge's).

Sans-I/O: this module only parses and checks; every error names the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from protocols.lora import UPLINK_CHANNELS

ROLES = ("sensor", "streetlight", "gauge", "parking", "lora_sensor")  # firmware/roles; "sensor": the classic node
DISTANCE_M = (200.0, 1500.0)  # a radio group's default ring around the bridges' origin
WORLD_KINDS = {"water_wave": "gauge", "cars": "parking", "lamp_failure": "streetlight"}  # kind -> the role it acts on
COMMAND_ID = re.compile(r"^[A-Za-z0-9._-]{1,56}$")  # 64 with the "-{index}" suffix


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the key and what was expected."""


@dataclass(frozen=True)
class RoleGroup:
    role: str
    count: int
    config: dict[str, Any] = field(default_factory=dict)  # more keys of the node's node.json (hil/world.py)
    interval: float | None = None  # these nodes' sampling interval; None: the scenario's
    sf: tuple[int, ...] = ()  # on the air: the SFs its nodes take in turn; (): the first bridge's
    distance_m: tuple[float, float] = DISTANCE_M  # on the air: how far from (0, 0) its nodes are placed


@dataclass(frozen=True)
class BridgeSpot:
    x: float
    y: float
    sf: int = 9
    freq: int = 868100000


@dataclass(frozen=True)
class AirLayout:
    """The [air] table: the bridges; the nodes' places come from their groups (hil/radio_rig.py places them)."""

    bridges: tuple[BridgeSpot, ...]
    boot_spread_s: float = 0.0  # the nodes are switched on one after another over this long


@dataclass(frozen=True)
class CommandStep:
    at: float
    id: str
    name: str
    args: dict[str, Any]
    nodes: tuple[int, ...]
    ttl_s: int | None = None
    within_s: float | None = None  # pass: succeeded this long after the publish at the latest; None: by the end

    def request_id(self, index: int) -> str:
        return "%s-%d" % (self.id, index)


@dataclass(frozen=True)
class WorldStep:
    kind: str
    at: float
    nodes: tuple[int, ...]
    duration: float = 0.0  # water_wave: rise and fall; cars: the window the arrivals fall in
    base_m: float = 0.3  # water_wave: the stream's level before and after, metres
    peak_m: float = 2.0  # water_wave: the crest
    stagger_s: float = 0.0  # water_wave: each gauge's wave comes this much after the previous one's (down the stream)
    fraction: float = 0.8  # cars: the share of the bays that change state
    changes: int = 1  # cars: state changes per bay that changes (arrive, leave, arrive ...)

    @property
    def end(self) -> float:
        return self.at + self.duration + self.stagger_s * max(0, len(self.nodes) - 1)


@dataclass(frozen=True)
class PassCriteria:
    changes_per_command: str | None = None  # a node record field: each command changes it exactly once, to args[field]
    event_p99_s: float | None = None  # world change -> event at the subscriber, p99
    events_in_order: bool = True  # per node, events arrive in the order the world changed
    events_from: str | None = None  # the event channel each world change must produce ("flood", "occupied", "lamp_ok")
    readings_lost_allowed: bool = True  # a city scenario may evict readings (drop_oldest); False: none may be lost
    buffer_full: bool = False  # the gateway must have said its buffer was full (the scenario tests eviction)
    during_drain: bool = False  # some changes judged by latency must come after a broker_down, before its backlog drained
    battery_estimates: bool = False  # on the air: every node's battery life must be estimated (two STATUS or more)


@dataclass(frozen=True)
class GatewayOptions:
    max_bytes: int = 200_000_000
    when_full: str = "drop_oldest"
    inflight: int = 64


_GROUP_TYPES: dict[str, tuple[type, ...]] = {
    "role": (str,),
    "count": (int,),
    "config": (dict,),
    "interval": (int, float),
    "sf": (int, list),
    "distance_m": (list,),
}
_BRIDGE_TYPES: dict[str, tuple[type, ...]] = {"x": (int, float), "y": (int, float), "sf": (int,), "freq": (int,)}
_COMMAND_TYPES: dict[str, tuple[type, ...]] = {
    "at": (int, float),
    "id": (str,),
    "name": (str,),
    "args": (dict,),
    "nodes": (str, list),
    "ttl_s": (int,),  # the gateway takes whole seconds
    "within_s": (int, float),
}
_WORLD_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "at": (int, float),
    "nodes": (str, list),
    "duration": (int, float),
    "base_m": (int, float),
    "peak_m": (int, float),
    "stagger_s": (int, float),
    "fraction": (int, float),
    "changes": (int,),
}
_PASS_TYPES: dict[str, tuple[type, ...]] = {
    "changes_per_command": (str,),
    "event_p99_s": (int, float),
    "events_in_order": (bool,),
    "events_from": (str,),
    "readings_lost_allowed": (bool,),
    "buffer_full": (bool,),
    "during_drain": (bool,),
    "battery_estimates": (bool,),
}
_GATEWAY_TYPES: dict[str, tuple[type, ...]] = {"max_bytes": (int,), "when_full": (str,), "inflight": (int,)}


def check_types(table: dict[str, Any], types: dict[str, tuple[type, ...]], where: str) -> None:
    """Unknown keys and wrong types, each named (bool is not a number here, though Python says it is)."""
    for key, value in table.items():
        if key not in types:
            raise ScenarioError("%s: unknown key %r (expected one of %s)" % (where, key, ", ".join(sorted(types))))
        wanted = types[key]
        if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
            expected = " or ".join({"dict": "table", "list": "array"}.get(t.__name__, t.__name__) for t in wanted)
            raise ScenarioError("%s: %r must be %s, not %r" % (where, key, expected, value))


def _entries(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    raw = data.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        raise ScenarioError("scenario: %r must be an array of tables ([[%s]])" % (key, key))
    return raw


def parse_roles(data: dict[str, Any]) -> list[RoleGroup]:
    groups = []
    for number, raw in enumerate(_entries(data, "roles"), 1):
        where = "roles #%d" % number
        check_types(raw, _GROUP_TYPES, where)
        if "role" not in raw or "count" not in raw:
            raise ScenarioError("%s: needs 'role' and 'count'" % where)
        if raw["role"] not in ROLES:
            raise ScenarioError("%s: 'role' must be one of %s, not %r" % (where, ", ".join(ROLES), raw["role"]))
        if raw["count"] < 1:
            raise ScenarioError("%s: 'count' must be at least 1" % where)
        if raw.get("interval", 1) <= 0:
            raise ScenarioError("%s: 'interval' must be above 0" % where)
        sfs = raw.get("sf", [])
        sfs = [sfs] if isinstance(sfs, int) else sfs
        if not all(isinstance(sf, int) and not isinstance(sf, bool) and 7 <= sf <= 12 for sf in sfs):
            raise ScenarioError("%s: 'sf' must be a spreading factor 7..12 or an array of them, not %r" % (where, raw["sf"]))
        distance = raw.get("distance_m", DISTANCE_M)
        if len(distance) != 2 or not all(_number(d) for d in distance) or not 0 < distance[0] <= distance[1]:
            raise ScenarioError("%s: 'distance_m' must be [near, far] in metres, 0 < near <= far, not %r" % (where, distance))
        group = RoleGroup(raw["role"], raw["count"], dict(raw.get("config", {})), raw.get("interval"), tuple(sfs), tuple(distance))
        groups.append(group)
    return groups


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_air(data: dict[str, Any], groups: list[RoleGroup]) -> AirLayout | None:
    """The [air] table, or None: the nodes are on cables. Radio keys of [[roles]] need it."""
    raw = data.get("air")
    if raw is None:
        radio_keys = [n for n, g in enumerate(groups, 1) if g.sf or g.distance_m != DISTANCE_M]
        if radio_keys:
            raise ScenarioError("roles #%d: 'sf' and 'distance_m' place nodes on the air, which needs an [air] table" % radio_keys[0])
        return None
    if not isinstance(raw, dict):
        raise ScenarioError("scenario: 'air' must be a table ([air])")
    check_types(raw, {"bridges": (list,), "boot_spread_s": (int, float)}, "air")
    if raw.get("boot_spread_s", 0) < 0:
        raise ScenarioError("air: 'boot_spread_s' must be 0 or more seconds, not %r" % raw["boot_spread_s"])
    if not groups:
        raise ScenarioError("air: needs [[roles]] (the nodes on the air)")
    bridges = []
    for number, spot in enumerate(raw.get("bridges", []), 1):
        where = "air: bridges #%d" % number
        if not isinstance(spot, dict):
            raise ScenarioError("%s: must be a table such as { x = 0, y = 0, sf = 9 }" % where)
        check_types(spot, _BRIDGE_TYPES, where)
        if "x" not in spot or "y" not in spot:
            raise ScenarioError("%s: needs 'x' and 'y' (metres)" % where)
        if not 7 <= spot.get("sf", 9) <= 12:
            raise ScenarioError("%s: 'sf' must be 7..12, not %r" % (where, spot["sf"]))
        if spot.get("freq", 868100000) not in UPLINK_CHANNELS:
            channels = ", ".join(map(str, UPLINK_CHANNELS))
            raise ScenarioError("%s: 'freq' must be an uplink channel (%s), not %r" % (where, channels, spot["freq"]))
        bridges.append(BridgeSpot(float(spot["x"]), float(spot["y"]), spot.get("sf", 9), spot.get("freq", 868100000)))
    if not bridges:
        raise ScenarioError("air: 'bridges' must list at least one bridge, such as [{ x = 0, y = 0, sf = 9 }]")
    return AirLayout(tuple(bridges), float(raw.get("boot_spread_s", 0)))


def node_roles(groups: list[RoleGroup]) -> list[str]:
    """The role of each node index."""
    return [group.role for group in groups for _ in range(group.count)]


def _select(value: Any, roles: list[str], where: str, default_role: str | None = None) -> tuple[int, ...]:
    """'all', a role name, or a list of node indexes -> node indexes."""
    if value is None:
        value = default_role or "all"
    if isinstance(value, str):
        if value == "all":
            return tuple(range(len(roles)))
        if value not in ROLES:
            raise ScenarioError(
                "%s: 'nodes' must be \"all\", a role (%s) or a list of node indexes, not %r" % (where, ", ".join(ROLES), value)
            )
        chosen = tuple(index for index, role in enumerate(roles) if role == value)
        if not chosen:
            raise ScenarioError("%s: 'nodes' names the role %r, but no [[roles]] entry has it" % (where, value))
        return chosen
    if not value or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < len(roles) for n in value):
        raise ScenarioError("%s: 'nodes' must list node indexes 0..%d" % (where, len(roles) - 1))
    return tuple(value)


def parse_commands(data: dict[str, Any], roles: list[str], duration: float) -> list[CommandStep]:
    steps: list[CommandStep] = []
    for number, raw in enumerate(_entries(data, "commands"), 1):
        where = "commands #%d" % number
        check_types(raw, _COMMAND_TYPES, where)
        for key in ("at", "id", "name"):
            if key not in raw:
                raise ScenarioError("%s: needs %r" % (where, key))
        if not COMMAND_ID.match(raw["id"]):
            raise ScenarioError("%s: 'id' must be 1-56 of A-Z a-z 0-9 . _ - (the node index is added), not %r" % (where, raw["id"]))
        if any(step.id == raw["id"] for step in steps):
            raise ScenarioError("%s: 'id' %r is used by an earlier command" % (where, raw["id"]))
        if not 0 <= raw["at"] <= duration:
            raise ScenarioError("%s: 'at' must be within the timeline, 0..%g s" % (where, duration))
        for key in ("ttl_s", "within_s"):
            if key in raw and raw[key] <= 0:
                raise ScenarioError("%s: %r must be above 0" % (where, key))
        steps.append(
            CommandStep(
                float(raw["at"]),
                raw["id"],
                raw["name"],
                dict(raw.get("args", {})),
                _select(raw.get("nodes"), roles, where),
                raw.get("ttl_s"),
                raw.get("within_s"),
            )
        )
    return steps


def parse_world(data: dict[str, Any], roles: list[str], duration: float) -> list[WorldStep]:
    steps = []
    for number, raw in enumerate(_entries(data, "world"), 1):
        where = "world #%d" % number
        check_types(raw, _WORLD_TYPES, where)
        if "kind" not in raw or "at" not in raw:
            raise ScenarioError("%s: needs 'kind' and 'at'" % where)
        kind = raw["kind"]
        if kind not in WORLD_KINDS:
            raise ScenarioError("%s: 'kind' must be one of %s, not %r" % (where, ", ".join(WORLD_KINDS), kind))
        nodes = _select(raw.get("nodes"), roles, where, WORLD_KINDS[kind])
        wrong = [n for n in nodes if roles[n] != WORLD_KINDS[kind]]
        if wrong:
            raise ScenarioError("%s: %s acts on %s nodes; nodes %s are not" % (where, kind, WORLD_KINDS[kind], wrong))
        options = {k: v for k, v in raw.items() if k not in ("kind", "at", "nodes")}
        allowed = {
            "water_wave": {"duration", "base_m", "peak_m", "stagger_s"},
            "cars": {"duration", "fraction", "changes"},
            "lamp_failure": set(),
        }
        extra = sorted(set(options) - allowed[kind])
        if extra:
            raise ScenarioError(
                "%s: %r is not a key of %s (its keys: %s)" % (where, extra[0], kind, ", ".join(sorted(allowed[kind])) or "none")
            )
        step = WorldStep(kind, float(raw["at"]), nodes, **options)
        if step.at < 0 or step.duration < 0 or step.stagger_s < 0:
            raise ScenarioError("%s: 'at', 'duration' and 'stagger_s' must not be negative" % where)
        if kind == "water_wave" and (step.duration <= 0 or step.peak_m <= step.base_m):
            raise ScenarioError("%s: a water_wave needs 'duration' above 0 and 'peak_m' above 'base_m'" % where)
        if kind == "cars" and (not 0 < step.fraction <= 1 or step.changes < 1):
            raise ScenarioError("%s: 'fraction' must be in (0, 1] and 'changes' at least 1" % where)
        if step.end > duration:
            raise ScenarioError("%s: ends at %g s, after the timeline (duration %g s)" % (where, step.end, duration))
        steps.append(step)
    return steps


def parse_pass(data: dict[str, Any]) -> PassCriteria:
    raw = data.get("pass", {})
    if not isinstance(raw, dict):
        raise ScenarioError("scenario: 'pass' must be a table ([pass])")
    check_types(raw, _PASS_TYPES, "pass")
    if raw.get("event_p99_s", 1) <= 0:
        raise ScenarioError("pass: 'event_p99_s' must be above 0")
    return PassCriteria(**raw)


def parse_gateway(data: dict[str, Any]) -> GatewayOptions:
    raw = data.get("gateway", {})
    if not isinstance(raw, dict):
        raise ScenarioError("scenario: 'gateway' must be a table ([gateway])")
    check_types(raw, _GATEWAY_TYPES, "gateway")
    if raw.get("when_full", "drop_oldest") not in ("drop_oldest", "stop_acking"):
        raise ScenarioError("gateway: 'when_full' must be drop_oldest or stop_acking, not %r" % raw["when_full"])
    if raw.get("max_bytes", 512 * 1024) < 512 * 1024:
        raise ScenarioError("gateway: 'max_bytes' must be at least 524288 (the gateway's smallest buffer)")
    if raw.get("inflight", 1) < 1:
        raise ScenarioError("gateway: 'inflight' must be at least 1")
    return GatewayOptions(**raw)
