"""Per-node sessions: what each node said, what it may be told, and when it is acknowledged.

HELLO registers a node (and is answered with ACK and TIME) and its channel
layout, READINGS go to the router (broker first or disk first, gateway/router.py) as the node sent
them and are acknowledged once safe (`safe`), duplicates are re-acknowledged without being
stored or published twice, and a counter that went backwards is handled as SPEC.md §4.3 says.
Node info is kept on disk so a restarted gateway still knows every node's channels.
What the sessions learn is said by gateway/presenter.py (status documents on MQTT); what concerns
the downlink frames (ACKs of them, COMMAND_RESULTs, CONFIG reports, REJECTs of them, a node's link
coming and going) goes to a DownlinkListener (gateway/commands.py), which sends its requests with
`take_counter` and `send_request`. Downlink counters are per node (gateway/counters.py).

What a node says is not trusted (SPEC.md §5.12, §6): a frame that cannot be
accepted from a sender it can name is answered with REJECT, and never uses up
its counter; a node id gets a session only with a valid HELLO, so ids a node
invents cost no more than a bounded table; values go out as valid JSON
(gateway/render.py), and the log escapes whatever text they hold (gateway/logs.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from protocols import CounterWindow, Message, ProtocolError, messages, node_hex, session, upstream
from protocols import errors as perr
from protocols import frame as fr
from protocols.airtime import airtime_us
from protocols.lora import SF_MAX, SF_MIN, SNR_FLOOR_DB10
from protocols.window import DUPLICATE, NEW, STALE

from . import senml
from .air import AirTransport
from .committer import CommitResult, Pending
from .copies import Transmissions
from .counters import DownlinkCounters
from .delivery import DeliveryRatio
from .fast_decode import ReceivedMessage, decode_frame
from .homeassistant import HomeAssistant
from .keystore import Keystore, key_id
from .layouts import Layout, Layouts
from .link_adr import LinkAdaptation
from .logs import Digest, escape
from .presenter import Presenter, RawResults
from .render import json_value
from .replay_journal import ReplayJournal
from .serial_link import Link, RadioLink
from .store import StoredFrame, WindowState

log = logging.getLogger(__name__)

STALE_LOG_INTERVAL_S = 10.0
UNKNOWN_REJECT_INTERVAL_S = 1.0  # a node id with no session is sent at most one REJECT this often (SPEC.md §6.2)
REJECT_INTERVAL_S = 1.0  # a node with a session is sent at most one REJECT this often for one reason (SPEC.md §5.12)
UNKNOWN_REMEMBERED = 1024  # node ids with no session whose last REJECT time is kept, the least recent forgotten first
REJECT_DETAIL_MAX = 80  # characters of a REJECT's detail: the frame stays far below the payload limit
_INFO_FIELDS = ("fw_version", "hw_model", "caps", "proto", "interval", "commands")
_GATEWAY_ONLY = (messages.COMMAND, messages.RADIO_TX)  # types only a gateway sends: a node's are refused (SPEC.md §6.3)
_STATUS_FIELDS = ("uptime", "free_heap", "reset_cause", "battery_mv", "rssi", "snr", "dropped", "retransmits", "rx_errors", "heap_peak")
# A radio node's frame is committed within this long of its arrival (not the [buffer] commit_wait): its ACK must be
# queued before the gateway chooses the frame of the node's second receive window (gateway/air.py, DECIDE_RX2_S)
RADIO_COMMIT_S = 0.5
_REQUESTS_KEPT = 64  # counters of a node's latest requests (send_request) kept, to tell a REJECT stale of one


def link_margin(fields: dict[str, Any]) -> dict[str, Any]:
    """A radio node's link margin on one frame: its SNR less its SF's demodulation floor, dB (what a technician
    reads in the node's status; the SF and power advised to it are gateway/link_adr.py's)."""
    snr = fields["snr"]
    if not isinstance(snr, (int, float)) or snr != snr or not SF_MIN <= fields["sf"] <= SF_MAX:
        return {}
    return {"margin_db": round(snr - SNR_FLOOR_DB10[fields["sf"] - SF_MIN] / 10, 1)}


_GAP_MAX = 256  # a counter that jumps further ahead moved (a restore, a damaged flash): its skip is not frames lost
_GAPS_KEPT = 4096  # a node's gaps remembered to be taken back; older ones stay counted


@dataclass
class Node:
    node_id: bytes
    window: CounterWindow
    layout: Layout | None = None  # None until the node said HELLO, and again once a HELLO of it is refused
    hello_counter: int = -1  # the counter of the HELLO that set the layout: only a newer one changes it
    info: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    status_counter: int = -1  # the counter of the STATUS `status` is from, or of the HELLO after it: an older is not taken
    link: Link | None = None  # the port it was last heard on; None when none (not since start, or that port was lost)
    last_seen: float = 0.0
    waiting: dict[int, list[Link]] = field(default_factory=dict)  # counters not safe yet (broker or disk) -> links to ACK
    # After a counter reset, until the reset window is on disk (a durable fold, Sessions.reset_saved): its
    # frames go disk first (Router), so every frame of the new sequence ACKed before has a chunk holding it.
    reset_unsaved: bool = False
    stale: int = 0
    stale_logged_at: float = -1e9
    rejected_at: dict[int, float] = field(default_factory=dict)  # reason -> when last sent a REJECT (one key per reason code)
    requests: dict[int, None] = field(default_factory=dict)  # counters of the latest requests sent (an ordered set)
    asked: bool = False  # take_counter said None: the listener is told when counters are reserved
    last_port: str | None = None  # the port it was last heard on, kept when that port is lost (a move is logged)
    unauthenticated: int = 0  # frames without a tag dropped because it must send them with one (auth_required)
    key_checked: bytes | None = None  # the current key its info's key_id was last compared with (Sessions._key_seen)
    key_after_reset: bool = False  # a tagged HELLO reset its window: the key is recorded once the reset is on disk
    untagged_moved: bool = False  # untagged frames of this keyed node moved its window (a require_auth = false port)
    radio: dict[str, Any] = field(default_factory=dict)  # heard through a bridge: rssi, snr, sf, freq, bridge (best), pdr
    delivery: DeliveryRatio = field(default_factory=DeliveryRatio)  # its radio status' pdr (gateway/delivery.py)
    transmissions: Transmissions = field(default_factory=Transmissions)  # which bridge's copy counts (gateway/copies.py)
    readings: int = 0  # readings safe (stored or published) since the agent started
    # Frames that never arrived (edgegw status' MISSING): counters skipped between frames that arrived this run,
    # taken back when one arrives late; not what a HELLO skips (a node's counter moves to its next flash block at
    # a reboot, SPEC.md 4.1), nor a jump of more than _GAP_MAX (a counter moved, not frames lost)
    arrival_high: int = -1
    gaps: set[int] = field(default_factory=set)
    gaps_forgotten: int = 0  # gaps too old to keep (beyond _GAPS_KEPT): counted, no longer taken back
    hex: str = field(init=False)  # the node id as shown everywhere; computed once, it is looked up per frame

    def __post_init__(self) -> None:
        self.hex = node_hex(self.node_id)

    @property
    def missing(self) -> int:
        return self.gaps_forgotten + len(self.gaps)

    def arrived(self, counter: int, hello: bool = False) -> None:
        """A frame new to the window arrived (stored, refused or applied alike): the gaps it opens or fills."""
        high = self.arrival_high
        if counter > high:
            if high >= 0 and not hello and counter - high - 1 <= _GAP_MAX:
                self.gaps.update(range(high + 1, counter))
                if len(self.gaps) > _GAPS_KEPT:
                    old = sorted(self.gaps)[: _GAPS_KEPT // 2]
                    self.gaps.difference_update(old)
                    self.gaps_forgotten += len(old)
            self.arrival_high = counter
        else:
            self.gaps.discard(counter)

    @property
    def port(self) -> str | None:
        return self.link.path if self.link is not None else None


@dataclass(frozen=True)
class NodeView:
    """A node as the command life cycle sees it (Sessions.view)."""

    node: str
    commands: dict[str, str] | None  # HELLO key 6 (name -> argument spec, protocols/argspec.py); None: not said (1.0)
    port: str | None  # its link now; None: it cannot be sent to


class DownlinkListener(Protocol):
    """What the sessions tell about the downlink (gateway/commands.py; /work/wt/GW-HOOKS.md has the contract).

    Node ids are 16 hex digits. Called on the event loop from inside frame handling: must not block or raise.
    """

    def hello(self, node: str, commands: dict[str, str] | None) -> None:
        """A new HELLO was accepted (not a resent one): the node (re)started; commands: its HELLO key 6, None when absent."""

    def link_changed(self, node: str, port: str | None) -> None:
        """The node was heard on another port (its path), or its port was lost (None)."""

    def acked(self, node: str, counters: list[int]) -> None:
        """The node acknowledged these downlink counters (resent ACKs included)."""

    def command_result(self, node: str, result: dict[str, Any]) -> None:
        """A new COMMAND_RESULT frame: id, outcome, detail and value as decoded."""

    def config_report(self, node: str, report: dict[str, Any]) -> None:
        """A new CONFIG report: values, errors and id (SPEC 1.1: of the CONFIG set it answers), each when present."""

    def rejected(self, node: str, counter: int, reason: int, detail: str) -> None:
        """The node refused our downlink frame `counter`. For `stale` on a request, the node's counters have moved already."""

    def downlink_ready(self, node: str) -> None:
        """Counters are reserved for a node take_counter said None for."""


def _detail(text: str) -> str:
    """A REJECT detail: printable ASCII (escaped as the log escapes), cut to REJECT_DETAIL_MAX characters."""
    return escape(text).encode("ascii", "backslashreplace").decode("ascii")[:REJECT_DETAIL_MAX]


def _may_answer(node: Node, code: int) -> bool:
    """Whether a REJECT for this reason may go to the node now: at most one per REJECT_INTERVAL_S."""
    now = time.monotonic()
    if now - node.rejected_at.get(code, -1e9) < REJECT_INTERVAL_S:
        return False
    node.rejected_at[code] = now
    return True


def _actions(message: Message, verdict: int) -> int:
    """What the gateway does with a frame from a node with a session, by its type and the window's verdict
    (protocols/session.py's GATEWAY_RX: the ACK policy of SPEC.md §4.2, §4.3 as a table). The window is moved
    here (Sessions._accept, or a new one on a reset), not by the table's Inbox: a READINGS frame enters it only
    once safe, and frames queued before a counter reset keep the window they were admitted by."""
    row = message.type if message.type < len(session.GATEWAY_RX) // 3 else 0  # 3 bytes a type; row 0: any other type
    actions = session.GATEWAY_RX[3 * row + verdict]
    return actions if message.flags & fr.F_ACK_REQ else actions & ~session.A_ACK


def _finite_when_scaled(samples: list[Any], layout: Layout) -> bool:
    """Whether every float reading stays finite once scaled (an integer always does: |2^64 x 10^30| < 10^308)."""
    return all(
        math.isfinite(value * 10.0 ** layout.channels[channel].scale)
        for channel, value in zip(samples[0::3], samples[1::3], strict=True)
        if type(value) is float
    )


class Route(Protocol):
    """Where accepted READINGS go (gateway/router.py; the committer alone would do too)."""

    def submit(self, pending: Pending) -> None: ...


class Sessions:
    """The LinkHandler for every port: one place that knows every node."""

    def __init__(
        self,
        gateway_id: str,
        topic_prefix: str,
        committer: Route,
        layouts: Layouts,
        publish_retained: Callable[[str, bytes], None],
        save_info: Callable[[str, str], None],
        save_reset: Callable[[], None] = lambda: None,
        counters: DownlinkCounters | None = None,
        keys: Keystore | None = None,
    ) -> None:
        """save_reset: asked after a counter reset, to fold the windows (moved_windows) durably soon.
        counters: the downlink counters the ports take (None: in memory only, for tools and tests)."""
        self.topic_base = "%s/%s" % (topic_prefix, gateway_id)
        self._committer = committer
        self._layouts = layouts
        self.presenter = Presenter(self.topic_base, publish_retained)
        self.homeassistant: HomeAssistant | None = None  # [homeassistant] discovery: the latest values as JSON states
        self.listener: DownlinkListener = RawResults(self.presenter)  # replaced by the command life cycle
        self.counters = counters if counters is not None else DownlinkCounters(0, fr.MAX_COUNTER + 1)
        self._save_info = save_info
        self._save_reset = save_reset
        self.nodes: dict[str, Node] = {}
        self._by_id: dict[bytes, Node] = {}  # the same nodes by their 8 id bytes, as frames carry them
        self._hellos = Digest(log, "HELLOs")  # 1,000 nodes powering up write a few lines, not 1,000
        self._unknown: OrderedDict[bytes, float] = OrderedDict()  # ids with no session -> when last sent a REJECT
        # Frames refused or dropped by the rules of SPEC.md §6: a few lines, then a summary every 10 s.
        self._unknown_frames = Digest(log, "frames from nodes that have not said HELLO")
        self._wrong_direction_frames = Digest(log, "frames marked DOWNLINK from the nodes' side", level=logging.WARNING)
        self._unused_frames = Digest(log, "frames this gateway does not use")
        self._moved: dict[str, Node] = {}  # nodes whose window moved since moved_windows() was last asked
        self._reset: set[str] = set()  # ... of them, those whose counter was reset (their window replaces the stored one)
        self.keys = keys  # the node keys (gateway/keystore.py); None: no node has one
        self.journal: ReplayJournal | None = None  # counters of nodes with a key, written before their ACK (the agent's)
        self.next_key_used: Callable[[str], None] = lambda node: None  # a frame came under a rotation's next key (gateway/rekey.py)
        self._unauthenticated_frames = Digest(log, "frames without authentication from nodes that must send it", level=logging.WARNING)
        self._moves = Digest(log, "nodes heard on another port", level=logging.WARNING)
        self._over_duty = Digest(log, "radio frames past twice their node's duty cycle", level=logging.WARNING)
        self._radio_links: dict[str, RadioLink] = {}  # bridge node hex -> the link its radio nodes are heard on
        self._bridge_sf: dict[str, int] = {}  # bridge node hex -> the SF it listens on (RADIO_RX `sf`, STATUS air `sf`)
        self.adr = LinkAdaptation(self._listened)  # the SF and power advised to radio nodes (the agent wires it to send)

    # ------------------------------------------------------------ restoring

    def radio_links(self) -> list[RadioLink]:
        """The links of the nodes each LoRa bridge hears (a port of its own in the status: frames, bad frames on air)."""
        return list(self._radio_links.values())

    def restore(self, windows: dict[str, tuple[int, int]], infos: dict[str, str]) -> None:
        for node_hex_id, (highest, seen) in windows.items():
            node = self._node(bytes.fromhex(node_hex_id))
            node.window = CounterWindow(highest, seen)
            node.delivery = DeliveryRatio.after(highest)  # the last run's span is not this one's
        for node_hex_id, text in infos.items():
            node = self._node(bytes.fromhex(node_hex_id))
            try:
                info = json_value(json.loads(text))  # older versions wrote NaN into it
            except ValueError:
                continue
            if "channels" in info:
                channels = [senml.Channel(c["name"], c["unit"], c.get("scale", 0)) for c in info["channels"]]
                node.layout = self._layouts.announce(node.hex, channels)
                node.hello_counter = node.window.highest  # its HELLO's counter is not kept; a HELLO above it is newer
                node.info = info

    def _node(self, node_id: bytes) -> Node:
        node = self._by_id.get(node_id)
        if node is None:
            node = self._by_id[node_id] = self.nodes[node_hex(node_id)] = Node(node_id, CounterWindow())
            self.counters.open(node_id)  # its downlink counters start above any it may have been sent
        return node

    def moved_windows(self) -> dict[str, WindowState]:
        """The windows that moved since the last call (the agent folds them into the store, Store.save_windows)."""
        moved, self._moved = self._moved, {}
        reset, self._reset = self._reset, set()
        return {name: WindowState(node.window.highest, node.window.seen, name in reset) for name, node in moved.items()}

    def moved_again(self, windows: dict[str, WindowState]) -> None:
        """Windows moved_windows() gave that could not be saved: given again next time."""
        for name, state in windows.items():
            node = self.nodes.get(name)
            if node is not None:
                self._moved[name] = node
                if state.reset:
                    self._reset.add(name)

    def reset_saved(self, windows: dict[str, WindowState]) -> None:
        """These windows (moved_windows) are on disk durably: the reset ones no longer need disk first,
        unless the node's counter was reset again since."""
        for name, state in windows.items():
            node = self.nodes.get(name)
            if state.reset and node is not None and name not in self._reset:
                node.reset_unsaved = False
                if node.key_after_reset:
                    node.key_after_reset = False
                    self._key_seen(node)

    def _accept(self, node: Node, counter: int) -> None:
        """The one place a window takes a counter: what is kept in memory is remembered for the next fold."""
        node.window.accept(counter)
        self._moved[node.hex] = node
        if self.journal is not None and self.keys is not None and self.keys.keyed(node.node_id):
            self.journal.append(((node.node_id, counter),))  # before the ACK: a replay after a kill is a duplicate

    def reported_drops(self) -> dict[str, int]:
        """Node -> frames it says it dropped from its ring since it booted (the `dropped` of its latest STATUS)."""
        return {node.hex: node.status["dropped"] for node in self.nodes.values() if type(node.status.get("dropped")) is int}

    # ------------------------------------------------------------ LinkHandler

    def message(self, link: Link, message: ReceivedMessage) -> None:
        if message.flags & fr.F_DOWNLINK:
            self._wrong_direction(link, message)
            return
        if not message.flags & fr.F_AUTH:
            if self.auth_required(link, message.node_id):
                self._unauthenticated(link, message)
                return
        elif message.key_index == 1:  # the next key of a rotation: the node has it (gateway/rekey.py ends the rotation)
            self.next_key_used(node_hex(message.node_id))
        wrong = self._sent_by_gateway_only(message)
        if wrong:
            self._reject(link, message.node_id, message, wrong[0], wrong[1])
            return
        if message.type == messages.HELLO:
            self._hello(link, message)
            return
        node = self._by_id.get(message.node_id)
        if node is None:  # no session before a valid HELLO: nothing is kept for ids a node may invent (SPEC.md §6.2)
            if message.type != messages.ACK and message.type != messages.REJECT:
                self._unknown_frames.note(
                    {"": message.name, "port": link.path},
                    "node %s: %s on %s before HELLO; answered with REJECT unknown_node",
                    node_hex(message.node_id),
                    message.name,
                    link.path,
                )
                self._reject(link, message.node_id, message, perr.E_UNKNOWN_NODE, "no HELLO from this node; send HELLO")
            return
        if node.link is not link:
            self._linked(node, link)
        node.last_seen = time.time()
        verdict = node.window.check(message.counter)
        if verdict == NEW:
            node.arrived(message.counter)
        if verdict == DUPLICATE:
            link.duplicates += 1  # a resend whose ACK was lost, or a recording played again: answered, never used twice
        actions = _actions(message, verdict)
        if actions & session.A_REJECT_STALE:
            self._refuse_stale(
                link,
                node,
                message,
                "stale",
                "node %s: counter went backwards from %d to %d (%d such frames); rejected until the node says HELLO",
                "; send HELLO",
            )
            return
        if actions & (session.A_ACCEPT | session.A_LATER):  # new to the window (not a duplicate, nor an ACK behind it)
            self._moved_by(node, message)
        if message.type == messages.READINGS:
            self._readings(node, link, message, actions)
            return
        if actions & session.A_ACCEPT:
            self._accept(node, message.counter)  # not a stored frame: no durability to wait for
        if actions & session.A_APPLY:
            self._other(node, link, message)
        if actions & session.A_ACK:
            self._ack(link, node, [message.counter])

    def bad_frame(self, link: Link, error: ProtocolError) -> None:
        """A frame that names its sender is answered with REJECT (SPEC.md §5.12); one damaged before that, not."""
        if error.node_id is None or error.counter is None:
            return
        if error.flags is not None and not error.flags & fr.F_AUTH and self.auth_required(link, error.node_id):
            # Untagged, from a node that must tag its frames: not the node; its errors must not act on the node's
            # session either (a malformed HELLO would make the gateway forget the node's channels)
            self._unauthenticated(link, error)
            return
        if error.flags & fr.F_DOWNLINK:
            self._wrong_direction(link, error)
        elif error.mtype == messages.ACK or error.mtype == messages.REJECT:
            return
        elif error.code == perr.E_AUTH and not self._may_send_auth(error.node_id):
            return  # line damage set the AUTH bit (read before any integrity check): the node sends the frame again
        else:
            self._reject(link, error.node_id, error, error.code, error.detail)
            node = self._by_id.get(error.node_id)
            # Only a header the CRC or a tag vouched for may cost the node its channels: an `auth` error's is as read
            if error.code != perr.E_AUTH and error.mtype == messages.HELLO and node is not None and node.layout is not None:
                self._forget_layout(node, error.counter)

    def _forget_layout(self, node: Node, counter: int) -> None:
        """A known node's HELLO was refused (SPEC.md §5.3): the node drops it and goes on with the channels it meant.

        Its READINGS no longer match the layout kept, so they get REJECT unknown_node until a newer HELLO is accepted.
        """
        log.warning("node %s: HELLO refused; its channels are forgotten until it says a HELLO the gateway accepts", node.hex)
        node.layout = None
        node.hello_counter = max(node.hello_counter, counter)
        node.info.pop("channels", None)
        self._save_info(node.hex, json.dumps(node.info, allow_nan=False))

    def _may_send_auth(self, node_id: bytes) -> bool:
        """Whether a node may send AUTH frames: it announced the capability, or it has not said HELLO yet."""
        node = self._by_id.get(node_id)
        return node is None or node.layout is None or bool(node.info.get("caps", 0) & messages.CAP_AUTH)

    @staticmethod
    def _sent_by_gateway_only(message: Message) -> tuple[int, str] | None:
        """The REJECT reason and detail for a message that only travels gateway -> node (SPEC.md §6.3)."""
        if message.type in _GATEWAY_ONLY:
            return perr.E_TYPE, "%s is sent by the gateway only" % message.name
        if message.type == messages.CONFIG and message.fields["op"] != messages.CONFIG_REPORT:
            return perr.E_SCHEMA, "CONFIG op %d is sent by the gateway only; a node sends op 2" % message.fields["op"]
        return None

    def _wrong_direction(self, link: Link, frame: ReceivedMessage | ProtocolError) -> None:
        """A frame marked DOWNLINK came up: an echo of our own frames, or a confused node. Counted, never answered."""
        link.errors["wrong_direction"] += 1
        mtype = frame.mtype if isinstance(frame, ProtocolError) else frame.type
        name = messages.NAMES.get(mtype, "frame") if mtype is not None else "frame"
        self._wrong_direction_frames.note(
            {"": name, "port": link.path},
            "%s: %s for node %s marked DOWNLINK came from the nodes' side (an echo?); dropped",
            link.path,
            name,
            node_hex(frame.node_id or b""),
        )

    # ------------------------------------------------------------ authentication (SPEC.md §3.4, docs/SECURITY.md)

    def auth_required(self, link: Link, node_id: bytes, bridged: bool = False) -> bool:
        """Whether a frame of this node must carry a tag: always through a radio bridge (anyone in range can
        transmit); else as the port's `require_auth` says, and when it says nothing, if the node has a key."""
        if bridged:
            return True
        if link.require_auth is not None:
            return link.require_auth
        return self.keys is not None and self.keys.keyed(node_id)

    def _unauthenticated(self, link: Link, frame: Message | ProtocolError) -> None:
        """Counted and dropped, no REJECT: the sender is not who it says, and the node itself never sends such a frame."""
        node_id = frame.node_id or b""
        link.errors["auth"] += 1
        node = self._by_id.get(node_id)
        if node is not None:
            node.unauthenticated += 1
        mtype = frame.mtype if isinstance(frame, ProtocolError) else frame.type
        self._unauthenticated_frames.note(
            {"": node_hex(node_id), "port": link.path},
            "node %s: %s without authentication on %s; the node %s; dropped (auth)",
            node_hex(node_id),
            messages.NAMES.get(mtype, "frame") if mtype is not None else "frame",
            link.path,
            "has a key" if self.keys is not None and self.keys.keyed(node_id) else "is on a port with require_auth",
        )

    def _moved_by(self, node: Node, message: Message) -> None:
        """A frame new to the node's window: under its current key, its info names that key (_key_seen); untagged
        (a keyed node on a require_auth = false port), a tagged HELLO may reset what it moved (_may_reset)."""
        if message.key_index == 0:
            if node.reset_unsaved:
                node.key_after_reset = True  # recorded with the reset window on disk (reset_saved), not before
            else:
                self._key_seen(node)
        elif message.key_index < 0 and self.keys is not None and self.keys.keyed(node.node_id):
            node.untagged_moved = True

    def _key_seen(self, node: Node) -> None:
        """A frame under the node's current key was accepted: its info names that key (key_id, never the key).
        From then on, a HELLO under that key cannot reset the node's window (_may_reset)."""
        entry = self.keys.entry(node.node_id) if self.keys is not None else None
        if entry is None or entry.key is node.key_checked:
            return
        node.key_checked = entry.key
        kid = key_id(entry.key)
        if node.info.get("key_id") != kid:
            node.info["key_id"] = kid
            self._save_info(node.hex, json.dumps(node.info, allow_nan=False))

    def _may_reset(self, node: Node, message: Message) -> bool:
        """A HELLO whose counter is behind the window resets it (SPEC.md §4.3) only for a node without a key, or
        under a key no frame of the node was accepted with yet (a board provisioned anew: its counter starts
        again). Any other such HELLO is a recording played again (docs/SECURITY.md): a node with a key keeps its
        counter across reboots, and moves it far ahead when its flash record is damaged (firmware/storage.py)."""
        entry = self.keys.entry(node.node_id) if self.keys is not None else None
        if entry is None:
            return True
        # untagged_moved: untagged frames (a require_auth = false port, which trusts whoever is on it) moved the
        # window since the last reset: the node's own tagged HELLO may take it back
        return message.key_index == 0 and (node.untagged_moved or node.info.get("key_id") != key_id(entry.key))

    def _refuse_stale(self, link: Link, node: Node, message: Message, kind: str, what: str, advice: str = "") -> None:
        """REJECT stale (SPEC.md §4.3), counted per node and in the port's errors[kind]; the log says so at most
        every STALE_LOG_INTERVAL_S. what: the log line, given the node, the window's highest, the counter, the count."""
        node.stale += 1
        link.errors[kind] += 1
        if time.monotonic() - node.stale_logged_at >= STALE_LOG_INTERVAL_S:
            log.warning(what, node.hex, node.window.highest, message.counter, node.stale)
            node.stale_logged_at = time.monotonic()
        detail = "counter %d is behind %d%s" % (message.counter, node.window.highest, advice)
        self._reject(link, node.node_id, message, perr.E_STALE, detail)

    # ------------------------------------------------------------ messages

    def _hello(self, link: Link, message: ReceivedMessage) -> None:
        node = self._node(message.node_id)  # a session starts with the first valid HELLO
        node.arrived(message.counter, hello=True)
        self._unknown.pop(node.node_id, None)
        if node.link is not link:
            self._linked(node, link)
        node.last_seen = time.time()
        known = node.layout is not None
        verdict = node.window.check(message.counter)
        if verdict == DUPLICATE:
            link.duplicates += 1
        actions = _actions(message, verdict)
        if actions & session.A_RESET and not self._may_reset(node, message):
            self._refuse_stale(
                link,
                node,
                message,
                "replayed",
                "node %s: HELLO behind %d (counter %d) under a key already in use (a replay?); rejected as stale (%d such frames)",
            )
            return
        if actions & session.A_ACCEPT:
            self._moved_by(node, message)
        if actions & session.A_RESET:
            log.warning(
                "node %s: counter reset from %d to %d (HELLO); accepting the new counter", node.hex, node.window.highest, message.counter
            )
            node.window = CounterWindow(message.counter, 1)  # a new object: frames queued before stay out of it
            node.transmissions.counter_reset()
            node.delivery = DeliveryRatio()  # the old counters' span is not the new ones'
            self._moved[node.hex] = node
            node.untagged_moved = False
            node.key_after_reset = message.key_index == 0  # its key_id is saved once the reset window is (reset_saved)
            if self.journal is not None and self.keys is not None and self.keys.keyed(node.node_id):
                self.journal.reset(node.node_id, message.counter)  # a start must not join the old counters to the new
            self._reset.add(node.hex)
            node.reset_unsaved = True
            self._save_reset()
        elif actions & session.A_ACCEPT:
            self._accept(node, message.counter)
        if not actions & session.A_APPLY or (actions & session.A_ACCEPT and message.counter <= node.hello_counter):
            # Stored once (SPEC.md §4.3): a resent HELLO, or a late one the node has since replaced, leaves the layout as it is.
            if actions & session.A_ACK:
                self._ack(link, node, [message.counter])
            self.send_time(link, node)
            return
        node.hello_counter = message.counter
        node.status_counter = message.counter  # a STATUS from before this boot is not its status (after a counter reset, lower)
        if node.hex in self._radio_links:  # a bridge that started again: its clock and duty cycle did too
            self._radio_links[node.hex].air.rebooted()
        fields = message.fields
        channels = [senml.Channel(c["name"], c["unit"], c.get("scale", 0)) for c in fields["channels"]]
        node.layout = self._layouts.announce(node.hex, channels)
        key_seen = node.info.get("key_id")
        node.info = {key: json_value(fields[key]) for key in _INFO_FIELDS if key in fields}
        if key_seen is not None:
            node.info["key_id"] = key_seen
        node.info["channels"] = [{"name": c.name, "unit": c.unit, "scale": c.scale} for c in channels]
        self._hellos.note(
            {"": "known" if known else "new", "firmware": str(fields["fw_version"]), "port": link.path},
            "node %s: HELLO on %s, firmware %s on %s, channels %s",
            node.hex,
            link.path,
            fields["fw_version"],
            fields["hw_model"],
            ", ".join("%s[%s]" % (c.name, c.unit) for c in channels) or "none",
        )
        self._save_info(node.hex, json.dumps(node.info, allow_nan=False))
        if actions & session.A_ACK:
            self._ack(link, node, [message.counter])
        self.send_time(link, node)
        self.presenter.status(node, force=True)
        if self.homeassistant is not None and node.layout is not None:
            self.homeassistant.node(node.hex, node.info, node.layout.channels)
        self.listener.hello(node.hex, node.info.get("commands"))

    def _readings(self, node: Node, link: Link, message: ReceivedMessage, actions: int) -> None:
        counter = message.counter
        if counter in node.waiting:
            node.waiting[counter].append(link)  # a retransmission of a frame on its way to the broker or disk
            return
        if not actions & session.A_LATER:  # a duplicate: acknowledged again, stored once
            if actions & session.A_ACK:
                self._ack(link, node, [counter])
            return
        layout = node.layout
        if layout is None:
            self._reject(link, node.node_id, message, perr.E_UNKNOWN_NODE, "no HELLO from this node; send HELLO")
            return
        samples = message.fields["samples"]
        if samples and max(samples[0::3]) >= len(layout.channels):
            channel = max(samples[0::3])
            detail = "channel %d not in HELLO (%d channels)" % (channel, len(layout.channels))
            self._reject(link, node.node_id, message, perr.E_SCHEMA, detail)
            return
        if any(type(value) is float for value in samples[1::3]) and not _finite_when_scaled(samples, layout):
            self._reject(link, node.node_id, message, perr.E_SCHEMA, "a sample value x 10^scale is beyond a double (SPEC 5.4)")
            return
        received = round(time.time(), 3)  # ms, as the buffer keeps it
        frame = StoredFrame(layout.id, received, message.payload)
        node.waiting[counter] = [link]
        decoded = (samples, message.fields.get("base_time", received))  # a SenML frame, as forwarder._frames reads one
        event = bool(message.flags & fr.F_PRIORITY)  # SPEC §3.3: an event, published ahead of any backlog
        within = RADIO_COMMIT_S if isinstance(link, RadioLink) else None  # its ACK must make the node's receive windows
        readings = len(samples) // 3
        pending = Pending(node.hex, counter, frame, readings, layout, node, node.window, decoded, priority=event, commit_within=within)
        self._committer.submit(pending)
        self.presenter.status(node)
        if self.homeassistant is not None:
            self.homeassistant.readings(node.hex, layout.channels, samples)

    def safe(self, frames: Sequence[Pending]) -> None:
        """These frames are durable (committed, or PUBACKed by the broker): accept their counters, then
        ACK them (each port's queue makes one ACK per node of them). The one place where a READINGS
        counter enters a window, whichever path the frame took; safe twice is harmless."""
        for pending in frames:
            node = pending.owner
            if pending.window is node.window:  # not from before a counter reset
                if node.window.check(pending.counter) == NEW:
                    node.readings += pending.readings
                self._accept(node, pending.counter)
            links = node.waiting.pop(pending.counter, [])
            if links and all(isinstance(link, RadioLink) for link in links):
                # Heard by several bridges: one ACK, through the node's link (the bridge that heard it best), not one
                # a bridge for the node's window to carry twice (RX1's 1 % spent on a copy)
                links = [node.link if isinstance(node.link, RadioLink) else links[0]]
            for link in links:
                link.ack(node.node_id, [pending.counter])

    def committed(self, result: CommitResult) -> None:
        """After a transaction: the stored frames are safe; the refused ones are not acknowledged (their nodes resend them)."""
        self.safe(result.committed)
        for pending in result.refused:
            pending.owner.waiting.pop(pending.counter, None)

    def _other(self, node: Node, link: Link, message: Message) -> None:
        fields = message.fields
        if message.type == messages.ACK:
            # Acknowledgements of our downlink frames: idempotent, applied whatever the window says (a resent one says the same).
            self.listener.acked(node.hex, fields["counters"])
            if isinstance(link, RadioLink):  # a copy of a request it acknowledged may still wait for a window, on any bridge
                for bridged in self._radio_links.values():
                    bridged.air.acked(node.node_id, fields["counters"])
        elif message.type == messages.STATUS and message.counter < node.status_counter:
            # Older than the status it has (a retransmission that came after a newer STATUS: on the air one the air
            # lost goes after the next frame): acknowledged, not applied, or the node's status would go back in time
            # and link adaptation read its older fallback count as a new fallback
            pass
        elif message.type == messages.STATUS:
            node.status_counter = message.counter
            node.status = json_value({key: fields[key] for key in _STATUS_FIELDS if key in fields})
            air = fields.get("air")
            if isinstance(air, dict):
                # A radio node numbers its keys (SPEC.md §5.7); those known are kept, each an integer (`power`,
                # `margin`, `fallback`: a radio node's link adaptation, gateway/link_adr.py)
                air = upstream.air_names(air)
                node.status["air"] = {
                    key: air[key] for key in upstream.AIR_KEYS if isinstance(air.get(key), int) and not isinstance(air[key], bool)
                }
            radio = self._radio_links.get(node.hex)
            if radio is not None:  # a bridge: what the gateway sent through it (gateway/air.py)
                node.status["downlink"] = dict(radio.air.counts)
            air_now = node.status.get("air", {})
            if node.info.get("caps", 0) & messages.CAP_RADIO_BRIDGE:
                self._bridge_heard_on(node.hex, air_now.get("sf"))
            elif isinstance(node.link, RadioLink):  # a radio node: its power, its fallbacks
                self.adr.status(node.hex, air_now)
            self.presenter.status(node, force=True)
        elif message.type == messages.TIME and "unix" not in fields:
            self.send_time(link, node)
        elif message.type == messages.CONFIG:  # a report: the others were refused in message()
            node.info["config"] = json_value(fields.get("values", {}))
            if isinstance(node.link, RadioLink):  # the SF and power it uses now
                self.adr.reported(node.hex, node.info["config"])
            if fields.get("errors"):
                errors = ", ".join("%s: %s" % (key, value) for key, value in fields["errors"].items())
                log.warning("node %s: config not applied: %s", node.hex, errors)
            self._save_info(node.hex, json.dumps(node.info, allow_nan=False))
            self.presenter.status(node, force=True)
            self.listener.config_report(node.hex, fields)
        elif message.type == messages.LOG:
            level = logging.ERROR if fields["severity"] <= 3 else logging.WARNING if fields["severity"] == 4 else logging.INFO
            # Limited per node (gateway/logs.py bounds the number of kinds): a chatty node spends its own allowance only.
            log.log(level, "node %s says: %s", node.hex, fields["text"], extra={"rate_key": node.hex, "rate_group": "node LOG"})
        elif message.type == messages.REJECT:
            self._rejected(node, fields)
        elif message.type == messages.COMMAND_RESULT:
            self.listener.command_result(node.hex, fields)
        elif message.type == messages.RADIO_RX:
            self._bridged(node, fields)
        else:  # TIME with a time in it: acknowledged when asked, not used
            self._unused_frames.note(
                {"": message.name}, "node %s: %s not handled by this gateway (acknowledged if asked)", node.hex, message.name
            )

    # ------------------------------------------------------------ nodes heard through a LoRa bridge (issue 15)

    def _bridged(self, bridge: Node, fields: dict[str, Any]) -> None:
        """A radio frame a bridge relayed (RADIO_RX, SPEC.md §5.11): checked as a frame of its own node (with that
        node's keys; a tag is required, anyone in range can transmit) and handled as that node's, on the bridge's
        radio link. A frame heard by several bridges is one frame: the window takes it once, and the node's status
        names the bridge that heard it best. What the node is owed goes back through the air (gateway/air.py): an
        authentic frame from a bridge that says when it heard it opens the node's receive windows."""
        radio = self._radio_links.get(bridge.hex)
        if radio is None:

            def send(bridge_id: bytes, tx: dict[str, Any]) -> bool:
                return bridge.link is not None and bridge.link.send(bridge_id, messages.RADIO_TX, tx)

            def linked(node_id: bytes, link: Link) -> bool:
                node = self._by_id.get(node_id)
                return node is not None and node.link is link

            def hand_over(node_id: bytes, frames: list[tuple[bytes, float]], time_owed: bool) -> bool:
                node = self._by_id.get(node_id)
                if node is None or not isinstance(node.link, RadioLink) or node.link is radio:
                    return False
                node.link.air.take_over(node_id, frames, time_owed)
                return True

            def rivals() -> list[AirTransport]:  # the other bridges' answers in RX2 (gateway/air.py)
                return [link.air for link in self._radio_links.values()]

            radio = RadioLink(bridge.hex, bridge.node_id, self, self.keys, self.counters.take, send, linked, hand_over, rivals)
            self._radio_links[bridge.hex] = radio
        if isinstance(fields["frame"], bytes):
            radio.bytes_in += len(fields["frame"])  # the frame as it was on air (the status' bytes read, for the air)
        try:
            inner = fr.unpack(fields["frame"], self.keys.uplink_keys if self.keys is not None else None)
            message = decode_frame(inner)
        except ProtocolError as error:
            radio.errors[error.reason] += 1  # no REJECT goes over the air: counted, as a damaged frame on a cable
            return
        radio.frames += 1
        self._bridge_heard_on(bridge.hex, fields["sf"])
        late = None  # how long ago it ended on air, when its bridge opened a receive window for it (else None)
        if message.key_index >= 0 and "at" in fields:  # authentic, from a bridge that says when: a receive window
            late = radio.air.late(fields["at"], fields["freq"], fields["sf"], fields.get("bw", 125000))
        channel = (fields["sf"], fields["freq"])
        try:
            on_air = airtime_us(len(fields["frame"]), fields["sf"], fields.get("bw", 125000))
        except ValueError:  # a bandwidth no chip has (the report opened no window): timed as 125 kHz, the slowest
            on_air = airtime_us(len(fields["frame"]), fields["sf"])
        node = self._by_id.get(message.node_id)
        previous = node.link if node is not None else None
        verdict = node.window.check(message.counter) if node is not None else NEW  # NEW: not a copy the gateway has
        window = node.window if node is not None else None
        seen = None
        if node is not None and message.key_index >= 0:
            seen = node.transmissions.copy(message.counter, fields["rssi"], verdict == NEW, channel, late, on_air)
        if node is not None and seen is not None and seen.over:
            # Broken, or played back by someone in range (copies.py): what it sends past that is counted, not
            # answered; the bridge's downlink budget is every node's
            radio.errors["over_duty_cycle"] += 1
            if verdict != STALE:  # it came: the ratio is the link's, not the node's manners
                node.delivery.count(message.counter, message.type == messages.HELLO)
            self._over_duty.note(
                {"node": node.hex},
                "node %s: frame %d not answered: heard on air for over twice its duty cycle in the last hour",
                node.hex,
                message.counter,
            )
            return  # and no window: one opened for it would take the node's own, and what it is owed
        if late is not None:
            radio.air.open(message.node_id, fields["at"], fields["freq"], fields["sf"], fields.get("bw", 125000))
        if seen is not None and seen.again and seen.answered and verdict == DUPLICATE:
            # Another bridge's copy of a transmission answered already: that answer (made once, with a copy whose
            # bridge has a window for it) goes through the bridge that heard it best, which may be this one; a second
            # ACK or TIME would take a window of the node's next uplink from what it is owed then
            radio.duplicates += 1
            if seen.best and node is not None and node.link is not radio:
                self._linked(node, radio)
        else:
            self.message(radio, message)  # the node's own frame, on the bridge's radio link: every rule of a cable's
        node = self._by_id.get(message.node_id)
        if node is None or message.key_index < 0:
            return  # refused (no session, or untagged): nothing of it describes the node
        if seen is None:  # its first frame (its HELLO) made its session
            seen = node.transmissions.copy(message.counter, fields["rssi"], True, channel, late, on_air)
        if seen.best and node.link is radio and isinstance(previous, RadioLink) and previous is not radio:
            previous.air.give_up(message.node_id)  # what the node was owed there goes in this bridge's windows
        if verdict != STALE or node.window is not window:  # behind the window: played back (refused), unless it reset it
            node.delivery.count(message.counter, message.type == messages.HELLO)
        if not seen.first:  # a retransmission or a replay: its best copy's bridge has the window for its answer
            if not seen.best and previous is not None:
                node.link = previous
            return
        if node.info.get("caps", 0) & messages.CAP_CONFIG:  # advice goes as a CONFIG set: only to a node that takes one
            self.adr.heard(node.hex, message.counter, fields["snr"], fields["sf"])
        if seen.best:
            reception = {"rssi": fields["rssi"], "snr": fields["snr"], "sf": fields["sf"], "freq": fields["freq"]}
            advice = self.adr.summary(node.hex)
            introduced = not node.radio
            node.radio = json_value(
                {
                    **reception,
                    "bridge": bridge.hex,
                    "counter": message.counter,
                    **node.delivery.fields(),
                    **link_margin(fields),
                    **advice,
                }
            )
            if introduced:  # first heard over the air: the technician sees its link at once (changes: with the readings,
                self.presenter.status(node, force=True)  # STATUS_REPUBLISH_S; not each copy that bettered another)
        elif previous is not None:
            node.link = previous  # a weaker copy of a transmission another bridge heard: the best bridge stays its link

    def _bridge_heard_on(self, bridge: str, sf: Any) -> None:
        if type(sf) is int and SF_MIN <= sf <= SF_MAX:
            self._bridge_sf[bridge] = sf

    def _listened(self) -> set[int]:
        """The SFs the bridges with a link listen on: those a radio node may be advised."""
        return {sf for bridge, sf in self._bridge_sf.items() if self.nodes[bridge].link is not None}

    # ------------------------------------------------------------ replies
    # Handed to the port's downlink queue as what is due; it builds the frames when the port has room.

    def _ack(self, link: Link, node: Node, counters: list[int]) -> None:
        link.ack(node.node_id, counters)

    def _reject(self, link: Link, node_id: bytes, refused: Message | ProtocolError, code: int, detail: str) -> None:
        """The one place a REJECT is made (SPEC.md §5.12).

        A node is answered at most once a second for one reason, so a node flooding bad
        frames cannot fill its port's line; an id with no session at most once a second at all,
        and only the last UNKNOWN_REMEMBERED such ids are remembered for that: bounded, whatever
        ids a node invents. A REJECT withheld is counted in the port's `rejects_withheld`.
        """
        node = self._by_id.get(node_id)
        if not (self._may_answer_unknown(node_id) if node is None else _may_answer(node, code)):
            link.errors["rejects_withheld"] += 1
            return
        fields: dict[str, Any] = {"reason": code, "detail": _detail(detail), "counter": refused.counter}
        mtype = refused.mtype if isinstance(refused, ProtocolError) else refused.type
        if mtype is not None:
            fields["type"] = mtype
        link.send(node_id, messages.REJECT, fields)  # by id: an id without a session has no Node

    def _may_answer_unknown(self, node_id: bytes) -> bool:
        now = time.monotonic()
        answered = self._unknown.get(node_id)
        if answered is not None and now - answered < UNKNOWN_REJECT_INTERVAL_S:
            return False
        self._unknown[node_id] = now
        self._unknown.move_to_end(node_id)
        if len(self._unknown) > UNKNOWN_REMEMBERED:
            self._unknown.popitem(last=False)
        return True

    def send_time(self, link: Link, node: Node) -> None:
        link.time(node.node_id)

    # ------------------------------------------------------------ links

    def _linked(self, node: Node, link: Link) -> None:
        radio_to_radio = isinstance(link, RadioLink) and (node.last_port or "").startswith("radio:")
        if node.last_port is not None and node.last_port != link.path and not radio_to_radio:  # bridges overlap: no move
            # A cable moved, or two nodes claim one id (a spoofer: one without the node's key never gets here)
            self._moves.note(
                {"": node.hex},
                "node %s: heard on %s, before on %s (moved, or two nodes with one id)",
                node.hex,
                link.path,
                node.last_port,
            )
        node.link = link
        node.last_port = link.path
        self.listener.link_changed(node.hex, link.path)

    def lost(self, link: Link) -> None:
        """A port closed or vanished (LinkHandler): the nodes last heard on it have no link until heard again."""
        for node in self.nodes.values():
            if node.link is link:
                node.link = None
                self.listener.link_changed(node.hex, None)

    # ------------------------------------------------------------ requests (the command life cycle, GW-HOOKS.md)

    def view(self, node_hex_id: str) -> NodeView | None:
        """The node as a request to it needs it; None for an id with no session."""
        node = self.nodes.get(node_hex_id)
        if node is None:
            return None
        commands = node.info.get("commands")
        offered = {str(name): str(spec) for name, spec in commands.items()} if isinstance(commands, dict) else None
        return NodeView(node.hex, offered, node.port)

    def take_counter(self, node_hex_id: str) -> int | None:
        """A fresh downlink counter of the node; None when it has no session, its reservation is not on disk yet
        (the listener's downlink_ready follows), or its counters are used up."""
        node = self.nodes.get(node_hex_id)
        if node is None:
            return None
        counter = self.counters.take(node.node_id)
        if counter is None:
            node.asked = True
            return None
        return counter if counter <= fr.MAX_COUNTER else None

    def peek_counter(self, node_hex_id: str) -> int | None:
        """The counter take_counter would give now, not taken; None as there. A None for want of a reservation
        asks for it (downlink_ready follows), as take_counter would."""
        node = self.nodes.get(node_hex_id)
        if node is None:
            return None
        counter = self.counters.peek(node.node_id)
        if counter is None:
            return self.take_counter(node_hex_id)  # takes nothing: at the limit it only asks for a reservation
        return counter if counter <= fr.MAX_COUNTER else None

    def send_request(self, node_hex_id: str, counter: int, mtype: int, fields: dict[str, Any], only_under: bytes | None = None) -> bool:
        """Queue an ACK_REQ frame (COMMAND, CONFIG set) with this counter (a retransmission keeps it) on the node's
        port. False when the node has no session or no link, or the port's queue is full; ProtocolError when the
        fields break the schema or do not fit a frame (then nothing is queued)."""
        node = self.nodes.get(node_hex_id)
        if node is None or node.link is None:
            return False
        if not node.link.send(node.node_id, mtype, fields, fr.F_ACK_REQ, counter, only_under):
            return False
        node.requests[counter] = None
        if len(node.requests) > _REQUESTS_KEPT:
            del node.requests[next(iter(node.requests))]
        return True

    def counters_ready(self, node_ids: Collection[bytes]) -> None:
        """Downlink counters were reserved for these nodes (gateway/counters.py)."""
        for node_id in node_ids:
            node = self._by_id.get(node_id)
            if node is not None and node.asked:
                node.asked = False
                self.listener.downlink_ready(node.hex)

    def _rejected(self, node: Node, fields: dict[str, Any]) -> None:
        """A node refused one of our frames. `stale` for a request means its window is above our counters (the
        gateway lost its database): its counters move far ahead (SPEC.md §4.1), once per request at most, so a
        node cannot spend them by repeating itself."""
        counter = fields.get("counter")
        reason = fields["reason"]
        moved = None
        if reason == perr.E_STALE and counter in node.requests:
            moved = self.counters.jump(node.node_id, counter)
        log.warning(
            "node %s rejected our frame %s: %s %s%s",
            node.hex,
            counter,
            perr.REASONS.get(reason, reason),
            fields.get("detail", ""),
            "; its downlink counters continue from %d" % moved if moved is not None else "",
        )
        if counter is not None:
            self.listener.rejected(node.hex, counter, reason, fields.get("detail", ""))
