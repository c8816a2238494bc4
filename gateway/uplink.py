"""MQTT connection: one paho-mqtt client driven by the asyncio event loop.

paho runs on the event loop's own selector, as aiomqtt drives it: its socket is
watched with add_reader; what is published in one turn of the loop is written at
its end (paho's socket callbacks say when it has something to write), and a
writer is registered only while the socket does not take it all; loop_misc runs
once a second for the keepalive; every paho callback runs on the event loop. No thread of paho's and no socketpair: a
QoS 1 publish a frame used to wake paho's thread and hand its PUBACK back through
call_soon_threadsafe, and those two thread crossings were most of the CPU a
reading cost on the PUBACK path (docs/PERFORMANCE-notes.md). Only the blocking
part of a connect (name lookup, TCP and TLS handshakes, in paho's connect())
runs on a short-lived daemon thread; the socket it makes is watched once it returns.

A run task connects, and on any loss waits a jittered exponential backoff
before the next attempt, so hundreds of gateways that lost the same broker come
back spread out instead of at once. A broker that takes the TCP connection but
never answers CONNACK is given up on after a timeout, and the log says so; so is
one that stops answering (1.5 keepalives without a byte from it).

Every connection the broker accepted is numbered (`_link`); the forwarder hears
of it, and of its end, through call_soon, in order, and only then does
`connected` change, so nothing is published on a connection the forwarder does
not know of yet (it would resend what it holds on it and wipe it).

Resends are the forwarder's alone: paho's own unacknowledged messages from an
earlier connection are dropped before paho would resend them (it does so on every
reconnect); the forwarder publishes again what it holds unacknowledged.

The session is persistent (MQTT 5: clean_start 0 and a session expiry of
SESSION_EXPIRY_S; 3.1.1: clean session 0; the client id is the gateway id), so
the broker keeps the command subscriptions and queues the requests published
while the gateway is down or restarting. Requests are acknowledged by hand
(paho's manual_ack): the agent acknowledges one only once it is stored
(gateway/commands.py), and only on the connection it came on; one not
acknowledged is delivered again (DUP) on the next connection. `session_present`
says whether the broker still had the session: when it did not (a broker
restarted without persistence, an expired session) it has lost the retained
command states too, and they are published again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

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
MISC_EVERY_S = 1.0  # paho's loop_misc: keepalive pings, and a PINGRESP that never came
SILENT_KEEPALIVES = 1.5  # a broker heard nothing from for this many keepalives is gone (the server's own rule)
CONNACK_TIMEOUT_S = 10.0  # a broker that took the TCP connection answers within this (or the keepalive, if shorter)
SESSION_EXPIRY_S = 7 * 24 * 3600  # MQTT 5: the broker keeps our session (and queues requests) this long: the longest ttl


class Inbound(NamedTuple):
    """A message from a subscription; acknowledge it with Uplink.ack(mid, qos, link) once it is safe."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    link: int  # the connection it came on


@dataclass
class UplinkEvents:
    """Callbacks run on the event loop, each from a call_soon of its own (never inside paho)."""

    connected: Callable[[], None]
    disconnected: Callable[[], None]
    published: Callable[[int, bool, str], None]  # mid, accepted, reason
    message: Callable[[Inbound], None]


def secure(client: mqtt.Client, config: MqttConfig) -> None:
    """The credentials and TLS of [mqtt] on a paho client: the agent's and `edgegw doctor`'s CONNECT are the same."""
    if config.username:
        client.username_pw_set(config.username, config.password())
    if config.tls is not None:
        client.tls_set(ca_certs=config.tls.ca_file, certfile=config.tls.cert_file, keyfile=config.tls.key_file)


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
        self._stopping = False
        self._run_task: asyncio.Task[None] | None = None
        self._link = 0  # the number of the connection up now (0: none)
        self._links = 0  # connections accepted so far
        self._loop_link = 0  # the connection the forwarder was told of (0: none)
        self._since = 0.0  # time.time() it was told of it
        self._answered = False  # the current attempt got its CONNACK
        self._closed = asyncio.Event()  # the current attempt's connection is over
        self._heard = 0.0  # time.monotonic() of the last read event on the socket
        self._connecting = False  # paho's connect() runs on its own thread: its socket callbacks there are not ours to act on
        self._watched: socket.socket | None = None  # the socket registered with the event loop
        self._writing = False  # our writer is registered: paho has bytes the socket would not take
        self._flush_due = False  # a loop_write is scheduled for the end of this turn of the loop
        self._last_status: tuple[int, asyncio.Event] | None = None  # stop(): the last status message's mid, and its PUBACK
        self.mqtt5 = config.protocol == "5"
        protocol = MQTTProtocolVersion.MQTTv5 if self.mqtt5 else MQTTProtocolVersion.MQTTv311
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if self.mqtt5 else False,  # MQTT 5: clean_start 0 on every connect()
            reconnect_on_failure=False,
            manual_ack=True,
        )
        self._client.max_inflight_messages_set(config.inflight)
        self._client.max_queued_messages_set(0)
        self._properties: dict[str, Properties] = {}
        self._client.will_set(will_topic, will_payload, qos=1, retain=True)
        secure(self._client, config)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_socket_register_write
        self._client.on_socket_unregister_write = self._on_socket_unregister_write
        self.subscriptions: list[str] = []
        self.last_error = ""
        self.session_present = False  # the broker still had our session at the last CONNACK

    # ------------------------------------------------------------ control

    @property
    def connections(self) -> int:
        """Connections the broker accepted since start."""
        return self._links

    @property
    def connected_since(self) -> float | None:
        """Unix time the connection up now began (the forwarder's view), None when there is none."""
        return self._since if self._loop_link else None

    @property
    def connected(self) -> bool:
        """The forwarder's view: true from the moment it is told of a connection until it is told of its end."""
        return self._loop_link != 0

    def start(self) -> None:
        self._run_task = self._loop.create_task(self._run(), name="mqtt")

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False, content_type: str | None = None) -> int | None:
        """Hand a message to paho on the connection the forwarder knows of; the mid, or None when
        that connection is gone (the forwarder hears of it next) or was never there."""
        if not self._loop_link or self._link != self._loop_link:
            return None
        properties = None
        if self.mqtt5 and content_type:
            properties = self._properties.get(content_type)
            if properties is None:  # one object per content type, reused: paho only reads it
                properties = self._properties[content_type] = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.ContentType = content_type
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None  # lost on paho's side already; dropped at the next connection, never sent twice
        return int(info.mid)

    async def stop(self, last_topic: str | None = None, last_payload: bytes | None = None, timeout: float = 1.0) -> None:
        """Publish a last retained message if connected and wait at most `timeout` for its PUBACK (a slow
        link must not hold up the stop), then end the run task and disconnect."""
        self._stopping = True
        if self._link and last_topic is not None and last_payload is not None:
            info = self._client.publish(last_topic, last_payload, qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._last_status = (int(info.mid), asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._last_status[1].wait(), timeout)
        if self._run_task is not None:
            self._run_task.cancel()
            await asyncio.gather(self._run_task, return_exceptions=True)
        if not self._connecting:  # a connect() still running: _abandon closes its socket once it returns
            self._close()
        self._link = 0
        if self._loop_link:  # told now, not on a later turn of a loop that may be about to end
            self._departed(self._loop_link)

    # ------------------------------------------------------------ the connection

    async def _run(self) -> None:
        attempt = 0
        connack_timeout = min(CONNACK_TIMEOUT_S, self.config.keepalive)
        where = "%s:%d" % (self.config.host, self.config.port)
        while not self._stopping:
            started = time.monotonic()
            self._answered = False
            self._closed.clear()
            self._unwatch()  # connect() closes the last attempt's socket if paho has not: off the selector first
            self._connecting = True  # until _watch(): paho's socket callbacks come from the connect's thread
            connecting = self._connect_apart()
            try:
                await asyncio.shield(connecting)  # cancelled (stop()), it runs on: _abandon closes what it opens
            except asyncio.CancelledError:
                connecting.add_done_callback(self._abandon)
                raise
            except (OSError, ssl.SSLError, ValueError) as error:
                self._connecting = False
                self._note_failure("cannot reach the broker %s: %s" % (where, describe_error(error)))
            except Exception:  # a bug: ending the task would leave a gateway that never connects again, silently
                self._connecting = False
                log.exception("unexpected error connecting to the broker %s; retrying with backoff", where)
            else:
                self._watch()
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closed.wait(), MISC_EVERY_S)
                    if self._closed.is_set():
                        if not self._answered:
                            self._note_failure("the broker %s closed the connection without answering CONNECT" % where)
                        break
                    if not self._answered and time.monotonic() - started > connack_timeout:  # before paho's keepalive would
                        self._note_failure("the broker %s took the connection but sent no CONNACK within %.0f s" % (where, connack_timeout))
                        self._close()
                        break
                    if self._answered and self._silent():
                        self._lost()  # told as a silence, not as the end paho would report
                        self._drop()
                        break
                    self._client.loop_misc()  # keepalive: PINGREQ, and a broker gone quiet closes the socket
                self._lost()
            attempt = 0 if time.monotonic() - started > STABLE_AFTER_S else attempt + 1
            await asyncio.sleep(backoff_delay(attempt, self._reconnect_max_s))

    def _silent(self) -> bool:
        """Nothing heard for 1.5 keepalives (what a server allows a client): paho's own check, a PINGREQ a
        keepalive after the last thing heard and then a keepalive for its PINGRESP, takes 2. paho pings at
        most a second of ours late, so a live broker is silent for a keepalive, a second and a round trip
        at the most: the limit is never below a keepalive and two seconds."""
        keepalive = self._client.keepalive  # MQTT 5: the broker's Server Keep Alive, if it sent one
        if not keepalive:
            return False
        silence = time.monotonic() - self._heard
        if silence <= max(SILENT_KEEPALIVES * keepalive, keepalive + 2 * MISC_EVERY_S):
            return False
        log.warning("the broker went silent: nothing heard for %.0f s (keepalive %d s); reconnecting", silence, keepalive)
        return True

    def _connect_apart(self) -> asyncio.Future[None]:
        """Run _connect on a daemon thread of its own, not in the default executor, whose threads asyncio.run
        and the interpreter join at the end: a process stopping while a connect hangs would wait for paho's
        5 s connect timeout, or for a name lookup's."""
        future: asyncio.Future[None] = self._loop.create_future()

        def settle(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        def connect() -> None:
            error: BaseException | None = None
            try:
                self._connect()
            except BaseException as caught:  # handed to the event loop, which sorts it
                error = caught
                if isinstance(caught, (OSError, ValueError)):  # a network failure's frames hold a half-made TLS socket
                    error = caught.with_traceback(None)  # open; a bug's traceback is kept for the log
            with contextlib.suppress(RuntimeError):  # the event loop is closed: the process is ending
                self._loop.call_soon_threadsafe(settle, error)

        threading.Thread(target=connect, name="mqtt-connect", daemon=True).start()
        return future

    def _connect(self) -> None:
        """On its own thread: paho's blocking connect (name lookup, TCP, TLS), which queues CONNECT."""
        if self.mqtt5:
            session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            session.SessionExpiryInterval = SESSION_EXPIRY_S
            self._client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive, clean_start=False, properties=session)
        else:
            self._client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive)

    def _abandon(self, connecting: asyncio.Future[None]) -> None:
        """A connect() that returned after stop(): its socket was never watched, and is closed unused."""
        self._connecting = False
        if not connecting.cancelled() and connecting.exception() is None:
            self._drop()

    def _watch(self) -> None:
        """Back on the event loop after a connect: read the new socket, and write what paho has queued (CONNECT)."""
        self._connecting = False
        sock = self._client.socket()
        if sock is None:
            self._closed.set()
            return
        self._watched = sock  # type: ignore[assignment]
        self._heard = time.monotonic()
        self._loop.add_reader(sock, self._readable)
        self._flush()  # CONNECT

    def _unwatch(self) -> None:
        if self._watched is not None:
            self._loop.remove_reader(self._watched)
            self._loop.remove_writer(self._watched)
            self._watched = None
        self._writing = False

    def _close(self) -> None:
        """Say DISCONNECT if the socket takes it now, and close: paho closes the socket once DISCONNECT is
        written; one that cannot take it (a broker that stopped reading) is closed without it."""
        self._unwatch()
        if self._client.socket() is not None:
            self._client.disconnect()
            self._client.loop_write()
        self._drop()

    def _drop(self) -> None:
        """Close paho's socket, if it still has one, without a word to the broker (which then publishes our
        will), as paho's own keepalive does: paho has no public call for it."""
        self._unwatch()
        if self._client.socket() is not None:
            self._client._sock_close()

    def _readable(self) -> None:
        self._heard = time.monotonic()
        try:
            self._client.loop_read()
            sock = self._client.socket()
            while sock is not None and getattr(sock, "pending", lambda: 0)() > 0:  # TLS: bytes decrypted already, no new event
                self._client.loop_read()
                sock = self._client.socket()
        except Exception:  # paho handles a broker's bad packets itself; this is a bug, and must not spin the loop
            self._broken("reading from")

    def _writable(self) -> None:
        try:
            self._client.loop_write()  # paho calls _on_socket_unregister_write once it has written everything
        except Exception:
            self._broken("writing to")

    def _broken(self, doing: str) -> None:
        log.exception("unexpected error %s the broker's connection; reconnecting", doing)
        with contextlib.suppress(Exception):  # the same bug again: closed without DISCONNECT
            self._close()
        self._drop()
        self._closed.set()

    def _flush(self) -> None:
        """Write what paho has queued (everything published in this turn of the loop) straight away; only
        what the socket does not take waits for the writer. A writer registered for every publish cost two
        epoll_ctl calls and a turn of the loop a message."""
        self._flush_due = False
        if self._watched is None or self._writing:
            return
        try:
            self._client.loop_write()
        except Exception:  # as under the writer: a bug, which must not end the run task (CONNECT) nor stall writes
            self._broken("writing to")
            return
        if self._watched is not None and self._client.want_write():
            self._writing = True  # paho counts itself registered already and will not ask again
            self._loop.add_writer(self._watched, self._writable)

    def _note_failure(self, message: str) -> None:
        if message != self.last_error:
            log.error("%s; buffering on disk and retrying with backoff", message)
            self.last_error = message

    def _lost(self) -> None:
        """The current connection, if there was one, is over."""
        link, self._link = self._link, 0
        if link:
            self._loop.call_soon(self._departed, link)

    def _arrived(self, link: int) -> None:
        """The only place where `connected` becomes true, right before the forwarder hears of it."""
        if self._link == link:
            self._loop_link = link
            self._since = time.time()
            self._events.connected()

    def _departed(self, link: int) -> None:
        if self._loop_link == link:
            self._loop_link = 0
            self._events.disconnected()

    # ------------------------------------------------------------ paho's callbacks (all on the event loop)

    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        pass  # connect() runs on its own thread: _watch() registers its socket once it returns

    def _on_socket_close(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        if not self._connecting:  # on its thread, connect() closes only a socket already off the selector
            self._unwatch()
            self._closed.set()

    def _on_socket_register_write(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        if not self._connecting and not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        if not self._connecting and self._writing and self._watched is not None:
            self._writing = False
            self._loop.remove_writer(self._watched)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object) -> None:
        self._answered = True
        if reason.is_failure:
            self._note_failure("the broker %s:%d refused the connection: %s" % (self.config.host, self.config.port, reason))
            client.disconnect()
            return
        self.session_present = bool(getattr(flags, "session_present", False))
        log.info("connected to %s:%d (MQTT %s)", self.config.host, self.config.port, self.config.protocol)
        self.last_error = ""
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        client.drop_out_messages()  # paho would resend them right after this callback; the forwarder does it itself
        self._links += 1
        self._link = self._links
        self._loop.call_soon(self._arrived, self._link)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object) -> None:
        if self._link and not self._stopping:
            why = "connection lost" if reason.value == 0x80 else str(reason)  # paho's "Unspecified error"
            log.warning("disconnected from the broker: %s", why)
        self._lost()
        self._closed.set()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, properties: object) -> None:
        if self._last_status is not None and self._last_status[0] == mid:
            self._last_status[1].set()
            return
        self._loop.call_soon(self._events.published, mid, not reason.is_failure, str(reason))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        inbound = Inbound(message.topic, bytes(message.payload), int(message.mid), int(message.qos), bool(message.dup), self._link)
        self._loop.call_soon(self._events.message, inbound)

    def ack(self, mid: int, qos: int, link: int) -> bool:
        """PUBACK a message that came on connection `link`, if that connection is still up (else the broker
        delivers it again on the next one, and nothing is acknowledged that a different message could own)."""
        if qos == 0 or not link or link != self._link:
            return False
        return self._client.ack(mid, qos) == MQTTErrorCode.MQTT_ERR_SUCCESS


def backoff_delay(attempt: int, cap_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect attempt number `attempt` (0 = first retry).

    Exponential (1, 2, 4 ... s, capped) with jitter over the upper 90 % of the
    interval: gateways that lost the broker together spread their returns out.
    """
    ceiling = min(cap_s, BACKOFF_BASE_S * 2 ** min(attempt, 16))
    return (rng or random).uniform(0.1 * ceiling, ceiling)
