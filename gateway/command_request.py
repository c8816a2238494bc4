"""A command request from MQTT, read and checked: a Request ready to store, or the reason it is rejected.

`{prefix}/{gw}/nodes/{node}/command` carries `{"id", "name", "args", "ttl_s"}` (id, args and ttl_s
optional); `{prefix}/{gw}/nodes/{node}/config/set` a JSON object of settings, which becomes a command
named `config` whose args are those settings. Nothing here raises for what a client publishes: every
path ends in a Request or a Rejected whose error says which rule the request broke. Pure: the node's
offer (its HELLO `commands`) is passed in, and nothing is stored or sent here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from protocols import ProtocolError, argspec, messages
from protocols import frame as fr

from .render import describe_error

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
NODE_PATTERN = re.compile(r"[0-9a-f]{16}")
REKEY = "rekey"  # a node's new key, sent by the gateway alone (gateway/rekey.py); refused from MQTT
CONFIG = "config"  # the command name a config/set becomes (no node may offer a command of that name: it is CONFIG)
DEFAULT_TTL_S = 3600
MAX_TTL_S = 7 * 24 * 3600
_KEYS = ("id", "name", "args", "ttl_s")


@dataclass
class Request:
    node: str
    id: str
    name: str
    args: dict[str, Any]
    ttl_s: int
    digest: str  # of the MQTT message (topic and payload): a broker's redelivery of an id-less request is known by it
    made_id: bool = False  # the id is the gateway's (the request had none)


@dataclass
class Rejected:
    node: str
    id: str  # the request's, or one the gateway made when it had no usable one
    name: str
    error: str
    digest: str = ""
    made_id: bool = False
    args: dict[str, Any] = field(default_factory=dict)


def make_id() -> str:
    """An id for a request that has none: `gw.` and 16 hex digits (a client could pick one alike: it is then
    the same request, as for any duplicate id)."""
    return "gw." + os.urandom(8).hex()


def digest(topic: str, payload: bytes) -> str:
    return hashlib.sha256(topic.encode("utf-8", "surrogateescape") + b"\x00" + payload).hexdigest()[:32]


def parse(node: str, kind: str, payload: bytes, topic: str = "") -> Request | Rejected:
    """kind: "command" or "config/set". The message read and its form checked (not yet against the node)."""
    mark = digest(topic, payload)
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError) as error:  # RecursionError: nesting deeper than json follows
        return Rejected(node, make_id(), "", "not JSON (%s)" % describe_error(error), mark, True)
    if not isinstance(document, dict):
        return Rejected(node, make_id(), "", "not a JSON object", mark, True)
    if kind == "config/set":
        return Request(node, make_id(), CONFIG, document, DEFAULT_TTL_S, mark, True)
    made = "id" not in document
    command_id = make_id() if made else document["id"]
    if not isinstance(command_id, str) or not ID_PATTERN.fullmatch(command_id):
        why = "id must be 1-64 of A-Z a-z 0-9 . _ - (it names a topic level)"
        return Rejected(node, make_id(), _text(document.get("name")), why, mark, True)
    name = document.get("name")

    def rejected(error: str) -> Rejected:
        return Rejected(node, command_id, _text(name), error, mark, made)

    unknown = sorted(set(document) - set(_KEYS))
    if unknown:
        return rejected("unknown key %s; a request has id, name, args and ttl_s" % ", ".join(repr(key) for key in unknown))
    if not isinstance(name, str) or not 0 < len(name) <= messages.MAX_COMMAND_NAME:
        return rejected("name must be a string of 1-%d characters" % messages.MAX_COMMAND_NAME)
    if name == CONFIG:
        return rejected("name 'config' is config/set's: publish the settings on .../config/set")
    args = document.get("args", {})
    if not isinstance(args, dict):
        return rejected("args must be a JSON object")
    ttl = document.get("ttl_s", DEFAULT_TTL_S)
    if type(ttl) is not int or not 0 < ttl <= MAX_TTL_S:
        return rejected("ttl_s must be an integer from 1 to %d (7 days)" % MAX_TTL_S)
    return Request(node, command_id, name, args, ttl, mark, made)


def check(request: Request, known: bool, offers: dict[str, str] | None) -> str | None:
    """Why the node cannot take the request, or None. known: the node said HELLO to this gateway.
    offers: its HELLO `commands` (None: a 1.0 node, whose names and args are not checked)."""
    if not NODE_PATTERN.fullmatch(request.node):
        return "unknown node %r: a node id is 16 lowercase hex digits" % request.node
    if not known:
        return "unknown node %s: it has not said HELLO to this gateway" % request.node
    if request.name == REKEY:
        return "%s is the gateway's own command: `edgegw keys rotate %s` on the gateway changes a node's key" % (REKEY, request.node)
    if request.name != CONFIG and offers is not None:
        if request.name not in offers:
            return "node %s does not offer %r (it offers: %s)" % (request.node, request.name, ", ".join(sorted(offers)) or "nothing")
        try:
            argspec.check(request.name, offers[request.name], request.args)
        except ProtocolError as error:
            return "args do not match %s's spec %r: %s" % (request.name, offers[request.name], error.detail)
    try:
        frame_for(request, wire_id=0xFFFFFFFF, counter=fr.MAX_COUNTER, node_id=bytes(8))  # the largest id and counter
    except ProtocolError as error:
        return "%s does not fit one frame: %s" % ("the settings" if request.name == CONFIG else "args", error)
    except ValueError as error:  # text CBOR cannot carry (a lone surrogate from a JSON \\ud800 escape)
        return "%s cannot be sent: %s" % ("the settings" if request.name == CONFIG else "args", describe_error(error))
    return None


def fields_for(name: str, args: dict[str, Any], wire_id: int) -> tuple[int, dict[str, Any]]:
    """(message type, fields) of the downlink request: COMMAND, or CONFIG set with its id (SPEC 1.1)."""
    if name == CONFIG:
        return messages.CONFIG, {"op": messages.CONFIG_SET, "values": args, "id": wire_id}
    fields: dict[str, Any] = {"id": wire_id, "action": name}
    if args:
        fields["args"] = args
    return messages.COMMAND, fields


def frame_for(request: Request, wire_id: int, counter: int, node_id: bytes) -> bytearray:
    """The request's frame (raises ProtocolError when it breaks SPEC.md's limits)."""
    mtype, fields = fields_for(request.name, request.args, wire_id)
    payload = messages.encode_payload(mtype, fields)
    return fr.pack(fr.Frame(mtype, node_id, counter, payload, fr.F_DOWNLINK | fr.F_ACK_REQ | fr.F_AUTH), bytes(32))  # tag included


def _text(value: object) -> str:
    return value[: messages.MAX_COMMAND_NAME * 4] if isinstance(value, str) else ""
