# A radio node's STATUS (SPEC.md 5.11): firmware/node.py over firmware/radio_port.py on the scripted radio of
# link_check.py, on the MicroPython unix port. None before the first TIME (its status_interval is a day here); once the
# TIME came, one at once, asking for an ACK, sent again until acknowledged (or a newer one is made), and not after. Usage:
# radio_status_check.py FOLDER. Prints JSON (each phase's uplinks, hex); tests/test_radio.py checks it.
import json
import sys

from protocols import cobs, messages
from tests.portable.held_event_check import EventHal, ack_all, run_until_quiet, time_frame, uplinks
from tests.portable.link_check import Clock


def run(folder):
    from firmware.node import Node

    out = {}
    clock = Clock()
    clock.now = 5000
    hal = EventHal(folder, clock)
    node = Node(hal)
    run_until_quiet(node, clock, 15000)
    out["before_time"] = uplinks(hal.radio)
    hal.uart.inbox.append(cobs.encode(time_frame(900, 1700000000, 250), True))  # as a receive window delivers it
    node.receive()
    node.step()  # its first STATUS, made at once, waits for the HELLO's time-off
    made = [node.status_counter, node.counter.peek(), node.hal.uart.waiting(messages.STATUS)]
    node.status()  # the next, the first not yet on air: that one goes for it, and no counter is spent
    out["unsent"] = [made, [node.status_counter, node.counter.peek()]]
    run_until_quiet(node, clock, 150000)  # nothing acknowledges it here: it goes again after each time-off
    sent = uplinks(hal.radio)
    out["unanswered"] = sent[len(out["before_time"]) :]
    first = node.status_counter
    node.status()  # the next, the first still unacknowledged: it supersedes it (an older must not come after it)
    out["superseded"] = [first in node.out.counters, node.status_counter in node.out.counters]
    run_until_quiet(node, clock, 150000)
    out["next"] = uplinks(hal.radio)[len(sent) :]
    sent = uplinks(hal.radio)
    ack_all(node, 1000)
    run_until_quiet(node, clock, 150000)
    out["after_ack"] = uplinks(hal.radio)[len(sent) :]

    # No clock after 60 s, but an uplink's windows open or due: its TIME may be on the way (the gateway's RX2 after
    # a HELLO's ACK in RX1), so the node does not ask yet; once they closed with nothing, it does
    clock.now = 5000
    late = Node(EventHal(folder + "/late", clock))
    late.last_time = 0
    late.send(messages.READINGS, {"samples": [0, 1, 0]})
    clock.now = 70000
    late.hal.uart.pump()  # on air: its windows follow
    requests = []
    for _ in range(60):  # 6 s: the uplink, its windows, closing unanswered
        clock.now += 100
        late.step()
        requests.append([late.hal.uart.answering(), any(f[1] == messages.TIME for f in late.hal.uart.queue)])
    out["late_asks"] = requests

    # A STATUS due while the last is on air for the first time (its windows not yet closed): that one went, so the new
    # one is made and replaces it
    clock.now = 5000
    busy = Node(EventHal(folder + "/busy", clock))
    busy.status()
    first = busy.status_counter
    for _ in range(100):  # its first transmission waits up to 4 s
        if busy.hal.uart.sending(first):
            break
        clock.now += 100
        busy.hal.uart.pump()
    on_air = busy.hal.uart.sending(first)
    busy.status()
    out["on_air"] = [on_air, first, busy.status_counter]
    return out


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
