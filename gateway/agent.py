"""The supervisor: builds the layers, runs them, and stops them in the right order.

serial ports -> sessions -> router -> forwarder (in memory) -> uplink (MQTT)
                                   or -> committer -> store (disk) -> forwarder -> uplink

Stopping (SIGTERM/SIGINT) takes a couple of seconds at most, and the nodes stay
acknowledged all along: the ports keep reading and the committer keeps
committing and acknowledging while new frames go to disk, the forwarder stops
handing out packs, waits briefly for the PUBACKs in flight (acknowledging the
frames held in memory they carry) and deletes what the broker acknowledged;
the held frames still unacknowledged go to the committer, and the uplink says
"offline" and disconnects. Then the last commit, then the ports close, then
the node windows are written (those PUBACKs moved too), then the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from . import __version__
from .commands import Commands
from .committer import CommitResult, Committer
from .config import Config
from .control import ControlError, ControlServer
from .counters import BLOCK, FRESH, DownlinkCounters
from .forwarder import Forwarder
from .history import STEP_S as HISTORY_STEP_S
from .history import History
from .homeassistant import STATE_EVERY_S, HomeAssistant
from .http_server import HttpServer
from .keystore import Keystore, KeystoreError
from .layouts import Layouts
from .metrics import (
    BufferTrend,
    Metrics,
    buffer_reader,
    counts_reader,
    node_reader,
    port_reader,
    uplink_reader,
    value_reader,
)
from .page import render as render_page
from .rekey import Rekeys
from .replay_journal import NAME as NAME_JOURNAL
from .replay_journal import ReplayJournal
from .router import Router
from .serial_link import PortManager
from .sessions import Sessions
from .status import document, mqtt_document
from .store import Store, StoreError, WindowState
from .store_worker import StoreWorker
from .systemd import Notifier
from .uplink import Inbound, Uplink, UplinkEvents

log = logging.getLogger(__name__)

STATUS_EVERY_S = 60.0
LOOPBACK = ("localhost", "127.0.0.1", "::1")  # hosts whose traffic never leaves the gateway
SAMPLE_S = 5.0  # the buffer's size and oldest age are sampled this often (its drain rate, `edgegw status`)
KEYS_CHECK_S = 1.0  # the keys file is looked at this often: a revocation or a rotation takes effect within it
# Checkpoints (see _checkpoint_loop): the WAL is looked at every CHECKPOINT_CHECK_S, and copied into the
# database file once it holds CHECKPOINT_BYTES (or a quarter of the WAL allowance, when that is less), or
# CHECKPOINT_MAX_S after the last checkpoint.
CHECKPOINT_CHECK_S = 1.0
CHECKPOINT_BYTES = 4 * 1024 * 1024
CHECKPOINT_MAX_S = 900.0  # at 167 readings/s the WAL reaches CHECKPOINT_BYTES in about 8 min anyway
# Windows kept in memory and in the newest chunks are folded into the node rows (Store.save_windows) this
# often, or once FOLD_CHUNKS chunks were committed since the last fold (a start reads those chunks' windows).
# Hourly: a fold rewrites the row of every node that sent something (1,000 nodes: about 60 pages, and again
# at the next checkpoint; every 10 min that was 5 B a reading at 167 readings/s). Committed frames need no
# fold to stay suppressed (their chunks hold their windows); a crash costs only the windows of frames that
# left the disk or never touched it since, and a node resends only frames not acknowledged, seconds old,
# which a fold every minute would rarely hold either. Rows' `last` stays far fresher than IDLE_S.
FOLD_EVERY_S = 3600.0
FOLD_CHUNKS = 4096
SHUTDOWN_DRAIN_S = 30.0  # a stop never waits longer than this for the disk
STOP_PUBACK_S = 1.0  # a stop waits this long at most for PUBACKs in flight (a slow link must not hold it up)
STOP_UPLINK_S = 0.5  # ... and this long for the "offline" status, and again for the disconnect


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.time()
        self.status_topic = "%s/%s/status" % (config.mqtt.topic_prefix, config.gateway_id)
        self.metrics = Metrics(config.gateway_id, __version__)
        self.trend = BufferTrend()
        self.notifier = Notifier()
        self.history = History()
        self.http: HttpServer | None = None
        self.homeassistant: HomeAssistant | None = None
        self._stop = asyncio.Event()
        self._infos: dict[str, str] = {}  # node info waiting to be written, newest per node
        self._fold_failed = False  # a fold failed and was said once: the next failures are not
        self._reset_fold_due = False  # a fold for counter resets is scheduled (_save_reset)
        self._folds: set[asyncio.Task[None]] = set()  # those folds under way
        self._fold_lock = asyncio.Lock()

    def request_stop(self) -> None:
        self._stop.set()

    def _status(self, state: str) -> bytes:
        """The retained status topic's document (gateway/status.py), from the metrics registry."""
        brief = {"state": state, "gateway_id": self.config.gateway_id, "version": __version__}
        if state != "online":
            return json.dumps(brief).encode()
        try:
            return json.dumps(mqtt_document(self.metrics.snapshot(), state), allow_nan=False).encode()
        except Exception:  # a bug in a reader, or a value JSON cannot hold: the brief document, and the agent goes on
            log.exception("building the status document failed; publishing the brief one")
            return json.dumps(brief).encode()

    def _summary(self) -> str:
        """One line for `systemctl status` (STATUS=): what a technician looks at first."""
        ports = self.ports.links()
        return "uplink %s; %d port(s) open, %d node(s); %d readings buffered" % (
            "connected" if self.uplink.connected else "NOT connected",
            len(ports),
            len(self.sessions.nodes),
            self.worker.store.pending_readings,
        )

    def status_document(self) -> dict[str, object]:
        """What `edgegw status` shows (the control socket's answer, the page's status.json)."""
        doc = document(self.metrics.snapshot(), "online")
        doc["page"] = self.http.url if self.http is not None else None
        return doc

    def _page(self) -> str:
        return render_page(self.status_document(), self.history)

    async def _start_http(self) -> None:
        listen = self.config.status_http
        if listen is None:
            return
        server = HttpServer(listen[0], listen[1], self._page, self.status_document, self.metrics.exposition)
        try:
            await server.start()
        except OSError as error:  # the gateway's job goes on without the page: said, not fatal
            log.error(
                "[status] http: cannot listen on %s:%d (%s); no status page or /metrics", listen[0], listen[1], error.strerror or error
            )
            return
        self.http = server
        log.info("status page on %s, Prometheus metrics on %smetrics", server.url, server.url)
        if listen[0] not in LOOPBACK:
            log.warning("[status] http on %s: the status page and /metrics are open to that network, without a password", listen[0])

    def _read_metrics(self) -> None:
        """The layers' state joins the registry: read at each collection, kept nowhere else."""
        metrics, cfg = self.metrics, self.config
        metrics.reader(port_reader(lambda: [*self.ports.links(), *self.sessions.radio_links()]))  # a bridge's air: a port too
        metrics.reader(node_reader(lambda: self.sessions.nodes.values()))
        metrics.reader(buffer_reader(lambda: self.worker.store, self.trend))
        metrics.reader(uplink_reader(self.uplink, cfg.mqtt.host, cfg.mqtt.port))
        metrics.reader(
            counts_reader(
                "edgegw_frames_acked",
                "frames acknowledged to their nodes: on the broker's PUBACK, or once on disk",
                lambda: {"broker": self.router.acked_by_broker, "disk": self.router.acked_on_disk},
                "how",
            )
        )
        metrics.reader(
            value_reader(
                "edgegw_frames_broker_ack_missed",
                "frames that went to disk because their PUBACK missed [buffer] broker_ack_wait",
                lambda: self.router.missed_deadline,
            )
        )
        metrics.reader(value_reader("edgegw_events_published", "events the broker acknowledged", lambda: self.forwarder.events_published))
        metrics.reader(
            value_reader(
                "edgegw_events_demoted", "events handled as readings (their node past its budget)", lambda: self.router.events_demoted
            )
        )
        metrics.reader(value_reader("edgegw_nodes_with_key", "nodes with a key in the keys file", lambda: len(self.keys.entries), False))
        metrics.reader(counts_reader("edgegw_commands", "commands not final, by state", self.commands.scheduler.states, "state", False))
        self.commands.on_final.append(lambda command: self.metrics.commands_ended.labels(command.state).inc())

    def _downlink_ready(self, nodes: set[bytes]) -> None:
        """Downlink counters were reserved: frames that waited for them in the ports' queues go out."""
        for link in self.ports.links():
            link.resume()
        self.sessions.counters_ready(nodes)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        cfg = self.config
        self.keys = Keystore(cfg.keys_path).load()  # KeystoreError: the gateway does not start (cli.py says why)
        store = await loop.run_in_executor(None, Store, cfg.data_dir, cfg.max_bytes)
        self.worker = StoreWorker(store)
        start = await self.worker.call(store.reserve, "downlink_counter", BLOCK, FRESH)
        self.counters = DownlinkCounters(
            start,
            start + BLOCK,
            lambda limits, gateway: self.worker.call(store.save_downlink, limits, gateway),
            await self.worker.call(store.load_downlink),
            self._downlink_ready,
        )
        windows = await self.worker.call(store.load_windows)
        infos = await self.worker.call(store.node_info)
        layouts = self.layouts = Layouts(await self.worker.call(store.load_layouts))

        events = UplinkEvents(connected=self._connected, disconnected=self._disconnected, published=self._published, message=self._inbound)
        self.uplink = Uplink(
            cfg.mqtt, cfg.gateway_id, self.status_topic, self._status("offline"), events, loop, reconnect_max_s=cfg.mqtt.reconnect_max
        )
        topic_base = "%s/%s" % (cfg.mqtt.topic_prefix, cfg.gateway_id)
        self.uplink.subscriptions = ["%s/nodes/+/command" % topic_base, "%s/nodes/+/config/set" % topic_base]
        self.forwarder = Forwarder(self.worker, self.uplink, cfg.mqtt.qos, cfg.mqtt.inflight, layouts, topic_base, metrics=self.metrics)
        self.committer = Committer(
            self.worker,
            layouts,
            cfg.when_full,
            self._committed,
            node_drops=lambda: self.sessions.reported_drops(),
            published=self.forwarder.acknowledged,
            commit_wait=cfg.commit_wait,
            metrics=self.metrics,
        )
        self.router = Router(self.committer, self.forwarder, cfg.broker_ack_wait, lambda frames: self.sessions.safe(frames))
        self.sessions = Sessions(
            cfg.gateway_id,
            cfg.mqtt.topic_prefix,
            self.router,
            layouts,
            self.forwarder.retained,
            self._save_info,
            self._save_reset,
            self.counters,
            self.keys,
        )
        self.journal = ReplayJournal(cfg.data_dir)
        restored = {node: (w.highest, w.seen) for node, w in windows.items()}
        replayed = self.journal.replay(restored)  # counters of provisioned nodes acknowledged after the last fold
        if replayed:
            # Into the store durably before anything else, then the journal goes: kept in memory only, the next
            # fold would not write them (nothing moved) and would delete the journal, their only copy
            states = {node: WindowState(*restored[node], reset) for node, reset in replayed.items()}
            await self.worker.call(store.save_windows, states, True)
            self.journal.discard()
            log.info("windows of %d provisioned nodes taken from %s (acknowledged after the last fold)", len(replayed), NAME_JOURNAL)
        self.sessions.restore(restored, infos)
        if cfg.homeassistant_prefix is not None:
            self.homeassistant = HomeAssistant(
                topic_base, cfg.gateway_id, cfg.homeassistant_prefix, self.status_topic, self.forwarder.retained
            )
            self.sessions.homeassistant = self.homeassistant
            self.homeassistant.gateway(__version__)
            for node in self.sessions.nodes.values():
                if node.layout is not None:
                    self.homeassistant.node(node.hex, node.info, node.layout.channels)
            self.uplink.subscriptions.append(self.homeassistant.birth_topic)
        self.sessions.journal = self.journal
        self.commands = Commands(self.worker, topic_base, self.sessions, self.forwarder.retained, self.uplink.ack, cfg.commands_in_flight)
        await self.commands.open()
        self.sessions.listener = self.commands
        self.rekeys = Rekeys(self.keys, self.commands.submit)
        self.commands.on_final.append(self.rekeys.finished)
        self.commands.vetoes.append(self.rekeys.veto)
        self.commands.only_under = self.rekeys.only_under
        self.rekeys.adopt(self.commands.resumed)
        # Link adaptation: the SF and power advised to radio nodes go to them as the gateway's own CONFIG sets
        self.sessions.adr.submit = self.commands.submit
        self.commands.on_final.append(self.sessions.adr.finished)
        self.sessions.adr.adopt(self.commands.resumed)
        self.sessions.next_key_used = self.rekeys.next_key_used
        self.rekeys.poll()
        self.ports = PortManager(cfg.serial, self.sessions, self.counters.take, self.keys)
        self._read_metrics()
        self.control = ControlServer(cfg.socket_path, self.status_document)
        try:
            await self.control.start()
        except ControlError as error:  # the gateway's job goes on without it: said, not fatal
            log.error("%s; `edgegw status` cannot reach this agent", error)
        await self._start_http()

        tasks = [
            loop.create_task(self.committer.run(), name="committer"),
            loop.create_task(self.forwarder.run(), name="forwarder"),
            loop.create_task(self._status_loop(), name="status"),
            loop.create_task(self._checkpoint_loop(), name="checkpoint"),
            loop.create_task(self._fold_loop(), name="fold"),
            loop.create_task(self.commands.run(), name="commands"),
            loop.create_task(self._keys_loop(), name="keys"),
            loop.create_task(self._sample_loop(), name="sample"),
            loop.create_task(self._history_loop(), name="history"),
        ]
        if self.homeassistant is not None:
            tasks.append(loop.create_task(self._homeassistant_loop(), name="homeassistant"))
        if self.notifier.watchdog_s is not None:  # systemd's WatchdogSec: pinged from this loop, so a hung loop is restarted
            tasks.append(loop.create_task(self.notifier.watchdog(), name="watchdog"))
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        _warn_exposed(cfg)
        if cfg.mqtt.qos == 0:
            log.warning("[mqtt] qos = 0: readings leave the buffer when sent, not when the broker confirms them")
        self.uplink.start()
        self.ports.start()
        log.info(
            "edgegw %s running as %s: %d buffered readings, %d known nodes, %d with a key, %d serial pattern(s)",
            __version__,
            cfg.gateway_id,
            store.pending_readings,
            len(self.sessions.nodes),
            len(self.keys.entries),
            len(cfg.serial),
        )
        self.notifier.ready(self._summary())
        failed = await self._wait(tasks)
        self.notifier.stopping("stopping: the last commits, then the ports close")

        log.info("stopping: waiting briefly for the broker's acknowledgements; the nodes are still acknowledged")
        self.router.close()  # new frames go to disk
        await self.forwarder.settle(timeout=STOP_PUBACK_S)
        self.forwarder.release_held()  # held frames the broker has not acknowledged go to disk too
        await self.uplink.stop(self.status_topic, self._status("offline"), timeout=STOP_UPLINK_S)
        await self.forwarder.finish()  # what the broker acknowledged leaves the disk, partly delivered chunks too
        if not tasks[0].done():  # a committer that died (a bug, logged above) has nothing left to drain
            try:
                await asyncio.wait_for(self.committer.drain(), SHUTDOWN_DRAIN_S)
            except TimeoutError:
                log.error("the last commits did not finish within %.0f s; their frames were not acknowledged", SHUTDOWN_DRAIN_S)
        await self.ports.stop()  # frames read after the last commit are not acknowledged: their nodes resend them
        await self.control.stop()
        if self.http is not None:
            await self.http.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._folds, return_exceptions=True)
        await self.counters.close()
        await self._fold()  # the windows as they are now: a start needs no chunk to rebuild them
        self.journal.close()
        await loop.run_in_executor(None, self.worker.close)
        log.info("stopped cleanly")
        return 1 if failed else 0

    async def _wait(self, tasks: list[asyncio.Task[None]]) -> bool:
        """Until a stop is requested or a task dies (a bug): then report which."""
        stopper = asyncio.get_running_loop().create_task(self._stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("internal task %s failed", task.get_name(), exc_info=task.exception())
                return True
        return False

    # ------------------------------------------------------------ callbacks

    def _save_info(self, node: str, info: str) -> None:
        """Coalesced: a thousand nodes saying HELLO after a power cut cost one transaction, not a thousand fsyncs."""
        if not self._infos:
            asyncio.get_running_loop().call_soon(self._flush_infos)
        self._infos[node] = info

    def _flush_infos(self) -> None:
        infos, self._infos = self._infos, {}
        asyncio.get_running_loop().create_task(self._write_infos(infos))

    async def _write_infos(self, infos: dict[str, str]) -> None:
        # Their channel layouts go with them: left to the first commit of each node's readings (an outage
        # after READINGS went to the broker for a while), they were inserted a few at a time in the order of
        # the frames, a page each, about 3.3 KB a node in the outage's first minute.
        layouts = [layout for layout in self.layouts.unsaved.values() if layout.node in infos]
        try:
            await self.worker.call(self.worker.store.save_node_infos, infos, layouts)
        except StoreError as error:  # the nodes say HELLO again after a restart; nothing is lost for good
            log.error("%s; node info not saved", error)
            return
        self.layouts.saved(layout.id for layout in layouts)

    def _committed(self, result: CommitResult) -> None:
        delivered = self.router.committed(result)  # frames the broker acknowledged while their commit was under way
        self.sessions.committed(result)
        if result.chunk is not None:
            self.forwarder.live(result.chunk, delivered)

    def _connected(self) -> None:
        self.forwarder.connected()
        self.forwarder.retained(self.status_topic, self._status("online"))
        self.commands.connected(self.uplink.session_present)

    def _disconnected(self) -> None:
        self.forwarder.disconnected()

    def _published(self, mid: int, accepted: bool, reason: str) -> None:
        self.forwarder.puback(mid, accepted, reason)

    def _inbound(self, inbound: Inbound) -> None:
        """A request on `.../command` or `.../config/set`: gateway/commands.py stores it, then acknowledges it.
        Home Assistant's birth message: every discovery config again."""
        if self.homeassistant is not None and inbound.topic == self.homeassistant.birth_topic:
            self.uplink.ack(inbound.mid, inbound.qos, inbound.link)
            if inbound.payload == b"online":
                self.homeassistant.again()
            return
        self.commands.message(inbound)

    async def _checkpoint_loop(self) -> None:
        """The buffer's WAL copied into the database file, on a thread of its own, when it has grown.

        Not every second: each commit appends a new copy of the page its chunk ends on to the WAL, and
        a checkpoint copies each page it finds into the database file once more. At city load a
        checkpoint every second would write every page twice; letting the WAL grow to CHECKPOINT_BYTES
        (or CHECKPOINT_MAX_S) means the many WAL copies of a page cost one copy into the database
        file. The WAL stays inside its allowance (a quarter of it at most here; Store._wal_room
        checkpoints at half before any write, whatever this loop does), and a start after a power cut
        replays a few MiB of WAL at most.
        """
        loop = asyncio.get_running_loop()
        store = self.worker.store
        last = loop.time()
        failing = False
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint") as executor:
            while True:
                await asyncio.sleep(CHECKPOINT_CHECK_S)
                backlog = store.wal_backlog()
                try:
                    if backlog != 0:
                        enough = min(CHECKPOINT_BYTES, store.budget().wal // 4) // store.page_size
                        if backlog < 0 or backlog >= enough or loop.time() - last >= CHECKPOINT_MAX_S:
                            await loop.run_in_executor(executor, store.checkpoint)
                            backlog = 0
                except (OSError, StoreError) as error:  # statvfs, or the checkpointer's connection: tried again
                    if not failing:
                        log.error("cannot checkpoint the buffer's WAL (%s); trying again every %g s", error, CHECKPOINT_CHECK_S)
                    failing = True
                    continue
                if failing:
                    log.info("the buffer's WAL can be checkpointed again")
                    failing = False
                if backlog == 0:
                    last = loop.time()

    async def _fold_loop(self) -> None:
        """Windows into the node rows every FOLD_EVERY_S, or sooner once FOLD_CHUNKS chunks hold unfolded ones."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(CHECKPOINT_CHECK_S)
            if loop.time() - last >= FOLD_EVERY_S or self.worker.store.unfolded_chunks >= FOLD_CHUNKS:
                await self._fold()
                last = loop.time()

    def _save_reset(self) -> None:
        """A node's counter was reset: fold the windows now, durably (Sessions.reset_saved); one fold for a burst."""
        if not self._reset_fold_due:
            self._reset_fold_due = True
            asyncio.get_running_loop().call_soon(self._fold_resets)

    def _fold_resets(self) -> None:
        self._reset_fold_due = False
        task = asyncio.get_running_loop().create_task(self._fold())
        self._folds.add(task)  # held until done (the loop keeps only weak references); a stop waits for them
        task.add_done_callback(self._folds.discard)

    async def _fold(self) -> None:
        # One at a time: the journal file a fold deletes when done must hold only counters that fold wrote
        async with self._fold_lock:
            await self._fold_once()

    async def _fold_once(self) -> None:
        moved = self.sessions.moved_windows()
        self.journal.rotate()  # in the same turn: every counter after this snapshot goes to the new file
        # A reset window is fsync'd: until it is, its node's frames go disk first (their chunks hold it).
        durable = any(state.reset for state in moved.values())
        try:
            await self.worker.call(self.worker.store.save_windows, moved, durable)
        except StoreError as error:  # the chunks still hold theirs; the others wait for the next fold
            self.sessions.moved_again(moved)
            if not self._fold_failed:
                log.error("%s; node windows not folded yet (the buffered chunks keep theirs)", error)
            self._fold_failed = True
            return
        self._fold_failed = False
        self.journal.folded()
        self.sessions.reset_saved(moved)

    async def _keys_loop(self) -> None:
        """The keys file read again when it changed (`edgegw keys` writes it): revocations, new keys and rotations
        take effect without a restart. A file that became unusable is said once; the keys loaded before stay."""
        failing = False
        while True:
            await asyncio.sleep(KEYS_CHECK_S)
            if not self.keys.changed():
                continue
            try:
                self.keys.load()
            except KeystoreError as error:
                if not failing:
                    log.error("%s; the node keys loaded before stay in use until the file is fixed", error)
                failing = True
                continue
            except Exception:  # a bug: said, and the keys loaded before stay (a bad file must not stop the gateway)
                if not failing:
                    log.exception("reading the keys file %s failed; the node keys loaded before stay in use", self.keys.path)
                failing = True
                continue
            if failing:
                log.info("the keys file %s is usable again", self.keys.path)
            failing = False
            log.info("keys file read again: %d node(s) with a key", len(self.keys.entries))
            self.rekeys.poll(file_changed=True)

    async def _sample_loop(self) -> None:
        """The buffer's size and the age of its oldest reading, every SAMPLE_S (its drain rate and ETA)."""
        store = self.worker.store
        while True:
            with contextlib.suppress(StoreError):  # a damaged or busy store: the age stays as it was (the committer says why)
                self.trend.oldest(await self.worker.call(store.oldest_received), time.time())
            self.trend.add(time.monotonic(), store.pending_readings)
            self.history.note_buffer(store.pending_readings)
            self.notifier.status(self._summary())
            await asyncio.sleep(SAMPLE_S)

    async def _homeassistant_loop(self) -> None:
        """The nodes' latest values to Home Assistant's state topics, at most every STATE_EVERY_S."""
        assert self.homeassistant is not None
        while True:
            await asyncio.sleep(STATE_EVERY_S)
            self.homeassistant.flush()

    async def _history_loop(self) -> None:
        """The last hour for the page's sparklines: the registry sampled every minute (the first at start)."""
        while True:
            self.history.sample(self.metrics.snapshot(), time.time())
            await asyncio.sleep(HISTORY_STEP_S)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            if self.uplink.connected:
                self.forwarder.retained(self.status_topic, self._status("online"))


def _warn_exposed(cfg: Config) -> None:
    """What docs/SECURITY.md asks for on the MQTT side and the configuration does not give: said once at start."""
    if cfg.mqtt.tls is None and cfg.mqtt.host not in LOOPBACK:
        log.warning("[mqtt] no tls: readings, commands and the password travel in the clear to %s (docs/SECURITY.md)", cfg.mqtt.host)
    if cfg.mqtt.password_file:
        try:
            mode = os.stat(cfg.mqtt.password_file).st_mode
        except OSError:
            return
        if mode & 0o077:
            log.warning("[mqtt] password_file %s is readable by group or others: chmod 600 it", cfg.mqtt.password_file)
