"""The baseline: the script a typical user would write instead of edgegw.

pyserial reads the port, the protocol library cuts frames, every frame is
acknowledged at once (the node must not stall), and every reading is published
as its own JSON message at QoS 1 with paho-mqtt. Nothing is written to disk.

    python -m bench.baseline PORT BROKER_PORT
"""

from __future__ import annotations

import json
import signal
import sys

import paho.mqtt.client as mqtt
import serial
from paho.mqtt.enums import CallbackAPIVersion

from protocols import messages
from protocols.frame import F_DOWNLINK, node_hex
from protocols.messages import Message, encode
from protocols.stream import StreamDecoder


def main(port: str, broker_port: int) -> int:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="baseline-%s" % port.rsplit("/", 1)[-1])
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    link = serial.Serial(port, 115200, timeout=0.05)
    decoder = StreamDecoder()
    channels: dict[bytes, list[str]] = {}
    counter = 1
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    while running:
        data = link.read(link.in_waiting or 1)
        if not data:
            continue
        decoder.feed(data)
        for message in decoder.drain():
            if not isinstance(message, Message):
                continue
            counter += 1
            link.write(encode(Message(messages.ACK, message.node_id, counter, {"counters": [message.counter]}, F_DOWNLINK)))
            if message.type == messages.HELLO:
                channels[message.node_id] = [c["name"] for c in message.fields["channels"]]
            elif message.type == messages.READINGS and message.node_id in channels:
                names = channels[message.node_id]
                node = node_hex(message.node_id)
                samples = message.fields["samples"]
                for index in range(0, len(samples), 3):
                    reading = {"node": node, "channel": names[samples[index]], "value": samples[index + 1]}
                    reading["time"] = message.fields.get("base_time", 0) + samples[index + 2]
                    client.publish("baseline/%s/%s" % (node, reading["channel"]), json.dumps(reading), qos=1)
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
