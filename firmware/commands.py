# A COMMAND's execution on the node (SPEC.md 5.9): the registry (Node.commands), the
# arguments checked against the command's spec, the node's own commands. Loaded by
# firmware/downlink.py for a COMMAND that runs (not for a CONFIG, a repeat or a stale
# one) and unloaded after: on a 64 KB heap its code is worth more as room in between.
from binascii import hexlify, unhexlify

from micropython import const

from firmware.downlink import configure
from firmware.node import unload
from protocols import messages
from protocols.errors import ProtocolError

_DETAIL = const(60)  # characters of a COMMAND_RESULT detail
_RESET_GRACE_MS = const(300)  # reboot: time for the ACK and the answer to leave the UART


def check(node, key, fields):
    # The answer for a command the node does not offer or for arguments its spec refuses,
    # or None: the command may run. Called before the window is written, so that the heap
    # this takes (argspec, its error texts) is not needed once the command is accepted: a
    # MemoryError here leaves the frame unacknowledged, to be sent again.
    name = fields["action"]
    spec = node.commands.get(name)
    if spec is None:
        return [key, messages.OUTCOME_UNKNOWN, "no command %s" % name[:20], None]
    args = fields.get("args", {})
    if not spec[0] and not args:
        return None  # nothing to check: argspec is not loaded
    try:
        from protocols import argspec

        argspec.check(name, spec[0], args)
        return None
    except ProtocolError as error:
        return [key, messages.OUTCOME_BAD_ARGS, error.detail[:_DETAIL], None]
    finally:
        unload("protocols.argspec")


def execute(node, key, fields):
    # Runs a command that check() let through: a source's commands by the source, the node's own here.
    name = fields["action"]
    args = fields.get("args", {})
    source = node.commands[name][1]
    value = None
    try:
        if source is not None:
            outcome, detail, value = source.command(node, name, args)
            return [key, outcome, detail, value]
        if name == "reboot":  # the answer goes on flash and out first; the loop resets after a grace
            node.reset_at = node.hal.uptime_ms() + _RESET_GRACE_MS
        elif name == "sample_now":
            node.sample()
            node.flush_readings()
        elif name == "set_interval":
            configure(node, {"op": messages.CONFIG_SET, "values": {"interval": args["s"]}})
            value = node.interval
        elif name == "rekey":
            refused = rekey(node, args["nonce"], args["key"])
            if refused:
                return [key, messages.OUTCOME_BAD_ARGS, refused, None]
        return [key, messages.OUTCOME_OK, None, value]  # identify too
    except Exception as error:  # a role's fault or a heap too full while it ran: the node answers and goes on
        return [key, messages.OUTCOME_FAILED, repr(error)[:_DETAIL], None]


def rekey(node, nonce, wrapped):
    # SPEC.md 3.6: a new key, wrapped under the key that tagged this COMMAND (protocols/auth.py
    # wrap), its arguments lowercase hex text. That key is the node's current one, or its previous
    # one if the gateway has not heard of the last rotation (its answer lost, a reset): unwrapped
    # with it, a rekey sent again yields the same key, never garbage. That key becomes the previous
    # one, so the COMMAND's repeats (under it) are still taken and answered from the kept answer;
    # the ACK and the answer go out under the new key, and the gateway's first frame under it ends
    # the rotation (Node.end_rotation). key.old is on flash before key: a reset between the two
    # leaves the node a key the gateway has, never one it lacks. Nothing of a key is ever said
    # (detail, value, console). None, or why the arguments are refused.
    from protocols import auth

    nonce = _hex(nonce, auth.NONCE_LEN)
    if nonce is None:
        return "rekey.nonce is not %d hex digits" % (2 * auth.NONCE_LEN)
    wrapped = _hex(wrapped, auth.KEY_LEN)
    if wrapped is None:
        return "rekey.key is not %d hex digits" % (2 * auth.KEY_LEN)
    under = node.keys[node.via]
    new = auth.wrap(under, nonce, wrapped)
    store = node.hal.storage
    store.put("key.old", hexlify(under) + b"\n")
    store.put("key", hexlify(new) + b"\n")
    node.keys = (new, under)
    return None


def _hex(text, size):
    # size bytes written as 2 * size hex digits, or None.
    if len(text) != 2 * size:
        return None
    try:
        return unhexlify(text)
    except ValueError:
        return None
