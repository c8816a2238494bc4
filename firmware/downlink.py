# COMMAND and CONFIG on the node (SPEC.md 5.8, 5.9, 6.7): each run at most once,
# as protocols/session.py's NODE_RX table says. Node.handle loads this module for
# each such frame and unloads it after: they are rare, and on a 64 KB heap their code
# is worth more as ring slots in between. Within a request the code comes and goes
# in turn: the window (decide) before a command runs, firmware/commands.py and
# argspec while it runs; they do not all fit at once beside a running node.
#
# downlink.json holds the downlink window and the answers to the last _RESULTS
# requests, [key, outcome, detail, value] (a COMMAND's key is its id, a CONFIG's
# "c" + its id). It is written before a request runs (the window: a repeat is a
# DUPLICATE even after a reset) and after (its answer, for the repeats).
import json

from micropython import const

from firmware import storage
from firmware.node import unload
from protocols import messages
from protocols import session as ss
from protocols.errors import E_STALE

_RESULTS = const(8)
_DETAIL = const(60)  # characters of a COMMAND_RESULT detail
_MAX_ERROR_KEYS = const(4)  # CONFIG report: at most this many rejected keys, so it fits a frame


def save(node, window, results):
    # window: (highest, seen) of the CounterWindow, see request.
    node.hal.storage.put("downlink.json", json.dumps({"h": window[0], "s": "%x" % window[1], "r": results}).encode())


def decide(node, message):
    # The NODE_RX decision with the window kept on flash: (actions, (highest, seen), results).
    # A function of its own: the window class and the record read are garbage once it returns.
    from protocols.window import CounterWindow

    record = node.hal.storage.settings("downlink.json")  # a damaged one is reported and reads as {}
    try:
        window = CounterWindow(record.get("h", -1), int(record.get("s", "0"), 16))
        results = list(record.get("r", []))[-_RESULTS:]
    except (TypeError, ValueError):
        storage.report("downlink.json", "window")
        window, results = CounterWindow(), []
    actions = ss.Inbox(ss.NODE_RX, window).decide(message.type, message.counter, message.flags)
    return actions, (window.highest, window.seen), results


def kept_answers(node):
    # The answers kept, as save() wrote them just before.
    return list(node.hal.storage.settings("downlink.json").get("r", []))


def request(node, message):
    # A COMMAND or CONFIG: run once, its answer kept (the last _RESULTS, on flash) for its
    # repeats. A repeat with no answer kept was accepted and the node reset before it
    # finished: answered "interrupted by reset", never run twice.
    mtype = message.type
    fields = message.fields
    counter = message.counter
    actions, window, results = decide(node, message)
    # The window is two numbers from here on, and its module leaves the heap before a
    # command's arguments are checked (argspec) and it runs: on a 64 KB node they do not
    # fit together beside the rest (NODE-API.md, Heap).
    unload("protocols.window")
    if actions & ss.A_REJECT_STALE:  # the gateway lost its counter: it moves ahead and sends again
        node.send(messages.REJECT, {"reason": E_STALE, "counter": counter, "type": mtype}, 0)
        return
    key = fields["id"] if mtype == messages.COMMAND else "c%s" % fields.get("id", "")
    result = None
    if actions & ss.A_APPLY:
        save(node, window, results)  # A_PERSIST: before anything runs
        results = None  # on flash now: off the heap while the request runs, read back after
        if mtype == messages.CONFIG:
            result = [key, 0, configure(node, fields), None]
        else:  # a COMMAND's code is a module of its own: a CONFIG does not load it
            result = __import__("firmware.commands", None, None, ["execute"]).execute(node, key, fields)
            unload("firmware.commands")
        results = kept_answers(node)
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
