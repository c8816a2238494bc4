# Runs protocols/session.py through a seeded scenario and prints its trace as JSON lines.
# Portable: imported by pytest on CPython (run()) and run on the MicroPython unix port
# (`micropython tests/portable/session_check.py SEED STEPS`); tests/test_session.py
# compares the two traces, so both interpreters must make the same decisions.
import json
import sys

from protocols import session as ss
from protocols.errors import E_AUTH, E_SCHEMA, E_STALE, E_UNKNOWN_NODE
from protocols.frame import F_ACK_REQ
from protocols.messages import ACK, COMMAND, CONFIG, HELLO, READINGS, REJECT, STATUS, TIME


class Counter:
    def __init__(self, start):
        self.value = start

    def take(self):
        self.value += 1
        return self.value - 1

    def peek(self):
        return self.value


class Rng:
    # A 31-bit LCG: the same numbers on both interpreters (random differs between them).
    def __init__(self, seed):
        self.state = seed & 0x7FFFFFFF

    def next(self, span):
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        return self.state % (span + 1)


def run(seed, steps):
    rng = Rng(seed)
    node_out = ss.Outbox(Counter(1), 6)
    gw_out = ss.Outbox(Counter(1000), 64, ss.GATEWAY_ON_REJECT)
    node_in = ss.Inbox(ss.NODE_RX)
    gw_in = ss.Inbox(ss.GATEWAY_RX)
    trace = []
    now = 0
    commands = 0
    for _ in range(steps):
        now += rng.next(3000)
        pick = rng.next(9)
        if pick < 3 and node_out.may_send():  # the node sends a frame
            counter = node_out.counter.take()
            node_out.add(counter, b"n%d" % counter, now)
            trace.append(["n-send", counter, len(node_out.counters), node_out.dropped])
        elif pick < 5:  # the gateway sends a tracked COMMAND
            commands += 1
            counter = gw_out.counter.take()
            deadline = now + 30000 if rng.next(1) else None
            gw_out.add(counter, b"g%d" % counter, now, ("c", commands), deadline, 5000 if commands % 3 else None)
            trace.append(["g-send", counter, commands])
        elif pick == 5 and len(node_out.counters):  # the gateway ACKs some node frames
            counters = [node_out.counters[0], node_out.counters[0] + rng.next(4)]
            trace.append(["n-acked", counters, node_out.acked(counters, now)])
        elif pick == 6 and gw_out.counters:  # the node ACKs or answers a command
            counter = gw_out.counters[0] + rng.next(2)
            events = gw_out.acked([counter], now)
            answer = gw_out.answered(("c", rng.next(commands))) if rng.next(1) else None
            trace.append(["g-acked", counter, [list(e) for e in events], list(answer) if answer else None])
        elif pick == 7:  # a REJECT for a frame of either side
            reason = (E_STALE, E_UNKNOWN_NODE, E_AUTH, E_SCHEMA)[rng.next(3)]
            side = node_out if rng.next(1) else gw_out
            event = side.rejected(reason, side.counters[0] if side.counters else None)
            trace.append(["rejected", reason, list(event) if event else None])
        else:  # receivers: a frame of some type and counter through each table
            mtype = (ACK, TIME, REJECT, COMMAND, CONFIG, HELLO, READINGS, STATUS)[rng.next(7)]
            counter = rng.next(600)
            flags = F_ACK_REQ if rng.next(1) else 0
            trace.append(["rx", mtype, counter, flags, node_in.decide(mtype, counter, flags), gw_in.decide(mtype, counter, flags)])
        for side, name in ((node_out, "n"), (gw_out, "g")):
            for event in side.due(now, rng.next, rng.next(5) > 0):
                trace.append([name + "-due", now, event[0], event[1], event[3] if event[0] != ss.SEND else event[3].decode()])
    trace.append(["end", node_out.dropped, node_out.retransmits, gw_out.dropped, gw_out.retransmits])
    trace.append(["windows", node_in.window.highest, "%x" % node_in.window.seen, gw_in.window.highest, "%x" % gw_in.window.seen])
    return trace


if __name__ == "__main__":
    for line in run(int(sys.argv[1]), int(sys.argv[2])):
        print(json.dumps(line))
