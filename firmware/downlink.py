# COMMAND and CONFIG on the node (SPEC.md 5.8, 5.9, 6.7): each run at most once,
# as protocols/session.py's NODE_RX table says. Node.handle loads this module (and
# with it the window and argspec) for each such frame and unloads it after: they
# are rare, and on a 64 KB heap their code is worth more as ring slots in between.
#
# downlink.json holds the downlink window and the answers to the last _RESULTS
# requests, [key, outcome, detail, value] (a COMMAND's key is its id, a CONFIG's
# "c" + its id). It is written before a request runs (the window: a repeat is a
# DUPLICATE even after a reset) and after (its answer, for the repeats).
import json

from micropython import const

from firmware import storage
from protocols import messages
from protocols import session as ss
from protocols.errors import E_STALE, ProtocolError
from protocols.window import CounterWindow

_RESULTS = const(8)
_DETAIL = const(60)  # characters of a COMMAND_RESULT detail
_MAX_ERROR_KEYS = const(4)  # CONFIG report: at most this many rejected keys, so it fits a frame
_RESET_GRACE_MS = const(300)  # reboot: time for the ACK and the answer to leave the UART


def save(node, window, results):
    node.hal.storage.put("downlink.json", json.dumps({"h": window.highest, "s": "%x" % window.seen, "r": results}).encode())


def request(node, message):
    # A COMMAND or CONFIG: run once, its answer kept (the last _RESULTS, on flash) for its
    # repeats. A repeat with no answer kept was accepted and the node reset before it
    # finished: answered "interrupted by reset", never run twice.
    mtype = message.type
    fields = message.fields
    counter = message.counter
    record = node.hal.storage.settings("downlink.json")  # a damaged one is reported and reads as {}
    try:
        window = CounterWindow(record.get("h", -1), int(record.get("s", "0"), 16))
        results = list(record.get("r", []))[-_RESULTS:]
    except (TypeError, ValueError):
        storage.report("downlink.json", "window")
        window, results = CounterWindow(), []
    actions = ss.Inbox(ss.NODE_RX, window).decide(mtype, counter, message.flags)
    if actions & ss.A_REJECT_STALE:  # the gateway lost its counter: it moves ahead and sends again
        node.send(messages.REJECT, {"reason": E_STALE, "counter": counter, "type": mtype}, 0)
        return
    key = fields["id"] if mtype == messages.COMMAND else "c%s" % fields.get("id", "")
    result = None
    if actions & ss.A_APPLY:
        save(node, window, results)  # A_PERSIST: before anything runs
        result = [key, 0, configure(node, fields), None] if mtype == messages.CONFIG else execute(node, key, fields)
        results.append(result)
        del results[:-_RESULTS]
        save(node, window, results)
    else:  # A_REPLAY
        for kept in results:
            if kept[0] == key:
                result = kept
        if result is None:
            result = [key, messages.OUTCOME_FAILED, "interrupted by reset", None]
    if actions & ss.A_ACK:
        node.send(messages.ACK, {"counters": [counter]}, 0)
    if mtype == messages.CONFIG:
        report = {"op": messages.CONFIG_REPORT, "values": {"interval": node.interval, "status_interval": node.status_interval}}
        if result[2]:
            report["errors"] = result[2] if isinstance(result[2], dict) else {"*": result[2]}
        if "id" in fields:
            report["id"] = fields["id"]  # 1.1: the set it answers
        node.send(messages.CONFIG, report)
        return
    reply: dict = {"id": key, "outcome": result[1]}
    if result[2]:
        reply["detail"] = result[2][:_DETAIL]
    if result[3] is not None:
        reply["value"] = result[3]
    node.send(messages.COMMAND_RESULT, reply)


def execute(node, key, fields):
    # The registry (Node.commands): a source's commands run by the source, the node's own here.
    name = fields["action"]
    spec = node.commands.get(name)
    if spec is None:
        return [key, messages.OUTCOME_UNKNOWN, "no command %s" % name[:20], None]
    args = fields.get("args", {})
    try:
        if spec[0] or args:  # argspec is loaded only for a command that takes arguments
            from protocols import argspec

            argspec.check(name, spec[0], args)
        value = None
        if spec[1] is not None:
            outcome, detail, value = spec[1].command(node, name, args)
            return [key, outcome, detail, value]
        if name == "reboot":  # the answer goes on flash and out first; the loop resets after a grace
            node.reset_at = node.hal.uptime_ms() + _RESET_GRACE_MS
        elif name == "sample_now":
            node.sample()
            node.flush_readings()
        elif name == "set_interval":
            configure(node, {"op": messages.CONFIG_SET, "values": {"interval": args["s"]}})
            value = node.interval
        return [key, messages.OUTCOME_OK, None, value]  # identify too
    except ProtocolError as error:
        return [key, messages.OUTCOME_BAD_ARGS, error.detail[:_DETAIL], None]
    except Exception as error:  # a role's fault: the node answers and goes on
        return [key, messages.OUTCOME_FAILED, repr(error)[:_DETAIL], None]


def configure(node, fields):
    # Applies a CONFIG set; the keys it refused (or None).
    errors: dict = {}
    values = fields.get("values", {})
    if fields["op"] == messages.CONFIG_SET:
        for key in values:
            if not node.setting(key, values[key]) and len(errors) < _MAX_ERROR_KEYS:
                errors[key[:16]] = "rejected"
        node.hal.storage.put("config.json", json.dumps({"interval": node.interval, "status_interval": node.status_interval}).encode())
        node.next_sample = node.hal.uptime_ms()  # a new interval starts now
    return errors or None
