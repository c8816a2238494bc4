# COMMAND and CONFIG on the node (SPEC.md 5.8, 5.9, 6.7): each run at most once,
# as protocols/session.py's NODE_RX table says. Node.handle loads this module for
# each such frame and unloads it after: they are rare, and on a 64 KB heap their code
# is worth more as ring slots in between. Within a request the code comes and goes
# in turn: the window (decide) before a command runs, firmware/commands.py and
# argspec while it runs; with the code on a 64 KB heap they do not all fit at once
# beside a running node.
#
# On flash, in small records (a 64 KB heap has no room for one big JSON text):
#   downlink.json  {"h": highest, "s": seen (hex), "n": the next answer slot}: the
#                  downlink window, written before a request runs, so that a repeat
#                  is a DUPLICATE even after a reset;
#   answer.N       N = 0 .. _RESULTS - 1, in turn: [key, outcome, detail, value], the
#                  answer to one of the last _RESULTS requests (a COMMAND's key is its
#                  id, a CONFIG's "c" + its id), sent again for its repeats.
# A MemoryError before the window is written (the command's code, its argument
# check) leaves the frame unacknowledged and nothing run: the gateway sends it
# again (SPEC.md 4.2). One while the command runs is its answer: failed.
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


def decide(node, message):
    # The NODE_RX decision with the window kept on flash: (actions, (highest, seen), slot).
    # A function of its own: the window class and the record read are garbage once it returns.
    from protocols.window import CounterWindow

    record = node.hal.storage.settings("downlink.json")  # a damaged one is reported and reads as {}
    try:
        window = CounterWindow(record.get("h", -1), int(record.get("s", "0"), 16))
        slot = int(record.get("n", 0)) % _RESULTS
    except (TypeError, ValueError):
        storage.report("downlink.json", "window")
        window, slot = CounterWindow(), 0
    actions = ss.Inbox(ss.NODE_RX, window).decide(message.type, message.counter, message.flags)
    return actions, (window.highest, window.seen), slot


def kept_answer(node, key, following):
    # The newest answer kept for key, or None; following: the slot the next request takes.
    # Newest first: id-less CONFIG sets (1.0 gateways) all have the key "c".
    for back in range(1, _RESULTS + 1):
        slot = (following - back) % _RESULTS
        try:
            raw = node.hal.storage.get("answer.%d" % slot)
            answer = json.loads(raw) if raw else None
        except (OSError, ValueError):
            storage.report("answer.%d" % slot, "answer")
            answer = None
        if isinstance(answer, list) and len(answer) == 4 and answer[0] == key:
            return answer
    return None


def request(node, message):
    # A COMMAND or CONFIG: run once, its answer kept (the last _RESULTS, on flash) for its
    # repeats. A repeat with no answer kept was accepted and the node reset before it
    # finished: answered "interrupted by reset", never run twice.
    mtype = message.type
    fields = message.fields
    counter = message.counter
    actions, window, slot = decide(node, message)
    # The window is two numbers from here on, and its module leaves the heap before a
    # command's arguments are checked (argspec) and it runs: on a 64 KB node they do not
    # fit together beside the rest.
    unload("protocols.window")
    if actions & ss.A_REJECT_STALE:  # the gateway lost its counter: it moves ahead and sends again
        node.send(messages.REJECT, {"reason": E_STALE, "counter": counter, "type": mtype}, 0)
        return
    key = fields["id"] if mtype == messages.COMMAND else "c%s" % fields.get("id", "")
    if actions & ss.A_APPLY:
        # A command's code is loaded and its arguments checked before the window is written:
        # if they do not fit, nothing ran and nothing is acknowledged; the frame comes again.
        commands = __import__("firmware.commands", None, None, ["check"]) if mtype == messages.COMMAND else None
        result = commands.check(node, key, fields) if commands else None
        store = node.hal.storage
        store.put("downlink.json", b'{"h": %d, "s": "%x", "n": %d}' % (window[0], window[1], slot + 1))  # A_PERSIST
        if commands is None:
            result = [key, messages.OUTCOME_OK, configure(node, fields), None]
        elif result is None:
            result = commands.execute(node, key, fields)
        commands = None
        unload("firmware.commands")
        store.put("answer.%d" % slot, json.dumps(result).encode())
    else:  # A_REPLAY
        result = kept_answer(node, key, slot) or [key, messages.OUTCOME_FAILED, "interrupted by reset", None]
    if actions & ss.A_ACK:
        node.send(messages.ACK, {"counters": [counter]}, 0)
    if mtype == messages.CONFIG:
        report = {"op": messages.CONFIG_REPORT, "values": node.config()}
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
            why = node.setting(key, values[key])
            if why and len(errors) < _MAX_ERROR_KEYS:
                errors[key[:16]] = why
        node.save_config()
        node.next_sample = node.hal.uptime_ms()  # a new interval starts now
    return errors or None
