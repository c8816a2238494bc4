"""MQTT connection: one paho-mqtt client driven by its own network thread.

The thread connects, runs paho's loop, and on any loss waits a jittered
exponential backoff before the next attempt, so hundreds of gateways that lost
the same broker come back spread out instead of at once. A broker that takes
the TCP connection but never answers CONNACK is given up on after a timeout,
and the log says so.

Two threads, one view each. The network thread numbers every connection the
broker accepted (`_link`); the event loop learns of each one, and of its end,
through call_soon_threadsafe, in order, and only then changes what it sees
(`connected`). publish() is called on the event loop and goes to paho only
while the connection the loop knows of is the network thread's current one.
No lock of ours is held around paho: paho may run its callbacks on the thread
that publishes (a write that finds the socket dead reports the disconnect
there), and one of ours held there would deadlock. Between two connections
there is at least a backoff, so the check cannot pass for a connection that
is already replaced; a message paho takes for a connection that just died
stays in paho's queue and is dropped at the next connection.

Resends are the forwarder's alone: every connection starts a clean session, and
paho's own unacknowledged messages from an earlier connection are dropped
before paho would resend them (it does so on every reconnect, clean session or
not); the forwarder publishes again what it holds unacknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .config import MqttConfig
from .render import describe_error

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
STABLE_AFTER_S = 30.0  # a connection that lasted this long resets the backoff
CONNACK_TIMEOUT_S = 10.0  # a broker that took the TCP connection answers within this (or the keepalive, if shorter)


@dataclass
class UplinkEvents:
    """Callbacks run on the event loop."""

    connected: Callable[[], None]
    disconnected: Callable[[], None]
    published: Callable[[int, bool, str], None]  # mid, accepted, reason
    message: Callable[[str, bytes], None]


class Uplink:
    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        will_topic: str,
        will_payload: bytes,
        events: UplinkEvents,
        loop: asyncio.AbstractEventLoop,
        reconnect_max_s: float,
    ) -> None:
        self.config = config
        self._events = events
        self._loop = loop
        self._reconnect_max_s = reconnect_max_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._link = 0  # network thread: the number of the connection up now (0: none)
        self._links = 0  # network thread: connections accepted so far
        self._answered = False  # network thread: the current attempt got its CONNACK
        self._loop_link = 0  # event loop: the connection it was told of (0: none)
        self.mqtt5 = config.protocol == "5"
        protocol = MQTTProtocolVersion.MQTTv5 if self.mqtt5 else MQTTProtocolVersion.MQTTv311
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if self.mqtt5 else True,  # MQTT 5: clean_start on every connect()
            reconnect_on_failure=False,
        )
        self._client.max_inflight_messages_set(config.inflight)
        self._client.max_queued_messages_set(0)
        self._properties: dict[str, Properties] = {}
        self._client.will_set(will_topic, will_payload, qos=1, retain=True)
        if config.username:
            self._client.username_pw_set(config.username, config.password())
        if config.tls is not None:
            self._client.tls_set(ca_certs=config.tls.ca_file, certfile=config.tls.cert_file, keyfile=config.tls.key_file)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self.subscriptions: list[str] = []
        self.last_error = ""

    # ------------------------------------------------------------ control (event loop thread)

    @property
    def connected(self) -> bool:
        """The event loop's view: changes only on the event loop, when it is told of a connection or its end."""
        return self._loop_link != 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False, content_type: str | None = None) -> int | None:
        """Hand a message to paho on the connection the event loop knows of; the mid, or None when
        that connection is gone (the loop hears of it next) or was never there."""
        if not self._loop_link:
            return None
        properties = None
        if self.mqtt5 and content_type:
            properties = self._properties.get(content_type)
            if properties is None:  # one object per content type, reused: paho only reads it
                properties = self._properties[content_type] = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.ContentType = content_type
        if self._link != self._loop_link:
            return None  # that connection is gone; the event loop hears of it next
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None  # lost on paho's side already; dropped at the next connection, never sent twice
        return int(info.mid)

    def stop(self, last_topic: str | None = None, last_payload: bytes | None = None, timeout: float = 1.0) -> None:
        """Publish a last retained message if connected, disconnect, and end the thread; each step
        waits at most `timeout` (a slow link must not hold up the stop)."""
        info = None
        if self._link and last_topic is not None and last_payload is not None:
            info = self._client.publish(last_topic, last_payload, qos=1, retain=True)
        deadline = time.monotonic() + timeout
        while info is not None and not info.is_published() and self._link and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stopping.set()
        self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------ network thread

    def _run(self) -> None:
        attempt = 0
        connack_timeout = min(CONNACK_TIMEOUT_S, self.config.keepalive)
        where = "%s:%d" % (self.config.host, self.config.port)
        while not self._stopping.is_set():
            started = time.monotonic()
            self._answered = False
            try:
                if self.mqtt5:
                    self._client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive, clean_start=True)
                else:
                    self._client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive)
            except (OSError, ssl.SSLError, ValueError) as error:
                self._note_failure("cannot reach the broker %s: %s" % (where, describe_error(error)))
            else:
                while not self._stopping.is_set():
                    if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        if not self._answered:
                            self._note_failure("the broker %s closed the connection without answering CONNECT" % where)
                        break
                    if not self._answered and time.monotonic() - started > connack_timeout:
                        self._note_failure("the broker %s took the connection but sent no CONNACK within %.0f s" % (where, connack_timeout))
                        break  # the socket is closed by the next connect()
                self._lost()
            if self._stopping.is_set():
                break
            attempt = 0 if time.monotonic() - started > STABLE_AFTER_S else attempt + 1
            self._stopping.wait(backoff_delay(attempt, self._reconnect_max_s))

    def _note_failure(self, message: str) -> None:
        if message != self.last_error:
            log.error("%s; buffering on disk and retrying with backoff", message)
            self.last_error = message

    def _lost(self) -> None:
        """The current connection, if there was one, is over (told on paho's thread, or on the one that published)."""
        link, self._link = self._link, 0
        if link:
            self._loop.call_soon_threadsafe(self._departed, link)

    def _arrived(self, link: int) -> None:
        """Event loop: the only place where `connected` becomes true, right before the forwarder hears of it."""
        self._loop_link = link
        self._events.connected()

    def _departed(self, link: int) -> None:
        if self._loop_link == link:
            self._loop_link = 0
            self._events.disconnected()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object) -> None:
        self._answered = True
        if reason.is_failure:
            self._note_failure("the broker %s:%d refused the connection: %s" % (self.config.host, self.config.port, reason))
            client.disconnect()
            return
        log.info("connected to %s:%d (MQTT %s)", self.config.host, self.config.port, self.config.protocol)
        self.last_error = ""
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        client.drop_out_messages()  # paho would resend them right after this callback; the forwarder does it itself
        self._links += 1
        self._link = self._links
        self._loop.call_soon_threadsafe(self._arrived, self._link)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object) -> None:
        if self._link and not self._stopping.is_set():
            why = "connection lost" if reason.value == 0x80 else str(reason)  # paho's "Unspecified error"
            log.warning("disconnected from the broker: %s", why)
        self._lost()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, properties: object) -> None:
        self._loop.call_soon_threadsafe(self._events.published, mid, not reason.is_failure, str(reason))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(self._events.message, message.topic, bytes(message.payload))


def backoff_delay(attempt: int, cap_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect attempt number `attempt` (0 = first retry).

    Exponential (1, 2, 4 ... s, capped) with jitter over the upper 90 % of the
    interval: gateways that lost the broker together spread their returns out.
    """
    ceiling = min(cap_s, BACKOFF_BASE_S * 2 ** min(attempt, 16))
    return (rng or random).uniform(0.1 * ceiling, ceiling)
