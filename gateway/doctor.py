"""`edgegw doctor`: every check a technician would make in the cabinet, each PASS, WARN or FAIL with the fix in
one line. Nothing here changes anything: it reads the config, looks at devices, files and the clock, listens
on idle serial ports for a few seconds, and makes one real MQTT CONNECT (as `<gateway id>-doctor`, so the
running agent's session is not taken over).

Each check is a function that returns `Check`s; `run` puts them in the order a technician works: the config,
the agent, the ports, the broker, the disk, the clock. Exit status: 0 without a FAIL (WARNs allowed), 1 with.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import grp
import os
import pwd
import socket
import ssl
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import serial
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from protocols import ProtocolError, StreamDecoder

from . import config as configuration
from .control import ControlError, ask
from .status import size_text
from .uplink import secure

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
LISTEN_S = 3.0  # an idle serial port is listened to this long for a frame
CONNECT_S = 5.0  # resolving, TCP, TLS and the CONNACK each wait this long at most
SANE_CLOCK = 1735689600  # 2025-01-01: a clock before this is unset (a Pi has no RTC)
_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronized


@dataclass(frozen=True)
class Check:
    check: str
    result: str  # PASS, WARN or FAIL
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class ServiceUser:
    """Whose access matters: the service's user and its groups, not the technician's who runs the doctor."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def find(cls, name: str | None) -> ServiceUser:
        """`name`, else `edgegw` when that user exists, else whoever runs this."""
        if name is None:
            try:
                pwd.getpwnam("edgegw")
                name = "edgegw"
            except KeyError:
                name = pwd.getpwuid(os.getuid()).pw_name
        entry = pwd.getpwnam(name)  # KeyError: said by the caller
        gids = {entry.pw_gid} | {group.gr_gid for group in grp.getgrall() if name in group.gr_mem}
        return cls(name, entry.pw_uid, frozenset(gids))

    def may(self, path: str, read: bool = True, write: bool = True, search: bool = False) -> bool:
        """Whether the mode bits let this user read/write (search a folder) it, every folder above it searchable
        by it too; root may do anything."""
        if self.uid == 0:
            return True
        folder = os.path.dirname(os.path.abspath(path))
        while True:
            if not self._bits(folder, 1):
                return False
            if folder == "/":
                break
            folder = os.path.dirname(folder)
        return self._bits(path, (4 if read else 0) | (2 if write else 0) | (1 if search else 0))

    def _bits(self, path: str, wanted: int) -> bool:
        info = os.stat(path)
        shift = 6 if info.st_uid == self.uid else 3 if info.st_gid in self.gids else 0
        return (info.st_mode >> shift) & wanted == wanted

    def group_of(self, path: str) -> str:
        gid = os.stat(path).st_gid
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)


# ------------------------------------------------------------ the checks


def check_config(path: str) -> tuple[configuration.Config | None, list[Check]]:
    try:
        cfg = configuration.load(path, secrets=False)  # readable by the service user, not by us: check_secrets
    except configuration.ConfigError as error:
        return None, [Check("config", FAIL, problem, "edit %s: %s" % (path, problem)) for problem in error.problems]
    return cfg, [Check("config", PASS, "%s: every key valid (gateway %s)" % (path, cfg.gateway_id))]


def check_agent(cfg: configuration.Config) -> tuple[dict[str, Any] | None, list[Check]]:
    try:
        status = ask(cfg.socket_path, timeout=CONNECT_S)
    except ControlError as error:
        return None, [Check("agent", WARN, str(error), "start it: systemctl start edgegw (or edgegw run --config ...)")]
    uplink = "uplink connected" if status.get("uplink", {}).get("connected") else "uplink NOT connected"
    buffered = status.get("buffer", {}).get("readings", 0)
    return status, [Check("agent", PASS, "running for %d s, %s, %d readings buffered" % (status.get("uptime_s", 0), uplink, buffered))]


def check_ports(cfg: configuration.Config, user: ServiceUser, agent: dict[str, Any] | None, listen_s: float) -> list[Check]:
    checks: list[Check] = []
    heard = agent.get("ports", {}) if agent else {}
    for entry in cfg.serial:
        devices = sorted(glob.glob(entry.port)) if glob.has_magic(entry.port) else [entry.port]
        devices = [device for device in devices if os.path.exists(device)]
        if not devices:
            checks.append(
                Check(
                    "serial %s" % entry.port,
                    FAIL,
                    "no device %s" % ("matches it" if glob.has_magic(entry.port) else "there"),
                    "plug the node in and look at ls -l /dev/serial/by-id/, then set [[serial]] port to it",
                )
            )
            continue
        for device in devices:
            checks.append(_port_access(device, user))
            if device in heard or os.path.realpath(device) in {os.path.realpath(path) for path in heard}:
                checks.append(_heard_by_agent(device, heard))
            elif checks[-1].result == PASS:
                holders = _holders(device)
                if holders:  # the agent (not reachable from here) or another program: its frames are not ours to take
                    detail = "open in process %s: not listened to" % ", ".join(holders)
                    checks.append(Check("node on %s" % device, WARN, detail, "edgegw status, or fuser -v %s" % device))
                else:
                    checks.append(_listen(device, entry.baud, listen_s))
    if not cfg.serial:
        checks.append(Check("serial", WARN, "no [[serial]] ports configured", "add a [[serial]] table with port = the node's device"))
    return checks


def _port_access(device: str, user: ServiceUser) -> Check:
    name = "serial %s" % device
    if not stat.S_ISCHR(os.stat(device).st_mode):
        return Check(name, FAIL, "not a character device", "set [[serial]] port to the node's tty (ls -l /dev/serial/by-id/)")
    if user.may(device):
        return Check(name, PASS, "present, readable and writable by %s" % user.name)
    group = user.group_of(device)
    return Check(
        name,
        FAIL,
        "%s may not open it (owned by group %s)" % (user.name, group),
        "sudo usermod -aG %s %s, then restart the service" % (group, user.name),
    )


def _heard_by_agent(device: str, heard: dict[str, Any]) -> Check:
    port = heard.get(device) or next(value for path, value in heard.items() if os.path.realpath(path) == os.path.realpath(device))
    frames, bad = int(port.get("frames", 0)), sum(port.get("errors", {}).values())
    if frames:
        return Check("node on %s" % device, PASS, "the agent has read %d frames here (%d bad)" % (frames, bad))
    return Check(
        "node on %s" % device, WARN, "the agent has read no frame here yet (%d bad)" % bad, "check the node is powered and its role sends"
    )


def _holders(device: str) -> list[str]:
    """The processes with the device open (what /proc shows us: all of them as root, our own otherwise)."""
    real = os.path.realpath(device)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            for fd in os.listdir("/proc/%s/fd" % entry):
                if os.path.realpath("/proc/%s/fd/%s" % (entry, fd)) == real:
                    found.append(entry)
                    break
        except OSError:
            continue
    return found


def _listen(device: str, baud: int, listen_s: float) -> Check:
    name = "node on %s" % device
    decoder = StreamDecoder()
    frames = bad = received = 0
    try:
        with serial.Serial(device, baud, timeout=0.2, exclusive=True) as line:
            deadline = time.monotonic() + listen_s
            while time.monotonic() < deadline:
                data = line.read(4096)
                received += len(data)
                decoder.feed(data)
                for event in decoder.drain():
                    if isinstance(event, ProtocolError):
                        bad += 1
                    else:
                        frames += 1
                if frames:
                    break
    except (OSError, serial.SerialException) as error:
        return Check(name, FAIL, "cannot open it: %s" % error, "is another program using it? (fuser -v %s)" % device)
    if frames:
        return Check(name, PASS, "a node answers: %d good frame(s) in %.0f s" % (frames, listen_s))
    if received:
        return Check(
            name,
            WARN,
            "%d bytes but no good frame in %.0f s (%d bad)" % (received, listen_s, bad),
            "check [[serial]] baud matches the node's",
        )
    return Check(
        name, WARN, "silent for %.0f s" % listen_s, "a node sends at its interval: wait, or check it is powered and wired (TX to RX)"
    )


def check_broker(cfg: configuration.Config) -> list[Check]:
    mqtt_cfg = cfg.mqtt
    where = "%s:%d" % (mqtt_cfg.host, mqtt_cfg.port)
    try:
        addresses = socket.getaddrinfo(mqtt_cfg.host, mqtt_cfg.port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        return [Check("broker", FAIL, "cannot resolve %s: %s" % (mqtt_cfg.host, error.strerror), "check [mqtt] host and the cabinet's DNS")]
    checks = [Check("broker name", PASS, "%s is %s" % (mqtt_cfg.host, addresses[0][4][0]))]
    try:
        with socket.create_connection((mqtt_cfg.host, mqtt_cfg.port), timeout=CONNECT_S) as raw:
            if mqtt_cfg.tls is not None:
                context = ssl.create_default_context(cafile=mqtt_cfg.tls.ca_file)
                if mqtt_cfg.tls.cert_file:
                    context.load_cert_chain(mqtt_cfg.tls.cert_file, mqtt_cfg.tls.key_file)
                with context.wrap_socket(raw, server_hostname=mqtt_cfg.host) as tls:
                    checks.append(Check("broker TLS", PASS, "%s, certificate verified" % tls.version()))
    except ssl.SSLCertVerificationError as error:
        return [
            *checks,
            Check(
                "broker TLS",
                FAIL,
                "certificate not trusted: %s" % error.verify_message,
                "set [mqtt.tls] ca_file to the CA that signed the broker's certificate",
            ),
        ]
    except ssl.SSLError as error:
        reason = str(error.reason or error)
        fix = {
            "KEY_VALUES_MISMATCH": "[mqtt.tls] key_file is not the key of cert_file",
            "NO_CERTIFICATE_OR_CRL_FOUND": "[mqtt.tls] ca_file holds no certificate (PEM)",
            "WRONG_VERSION_NUMBER": "the port does not speak TLS: the broker's TLS port (8883 usually), or no [mqtt.tls]",
        }.get(reason, "check [mqtt.tls] and the broker's TLS listener")
        return [*checks, Check("broker TLS", FAIL, "TLS failed: %s" % reason, fix)]
    except TimeoutError:
        return [
            *checks,
            Check(
                "broker reachable",
                FAIL,
                "no answer from %s within %.0f s" % (where, CONNECT_S),
                "a firewall drops it? check the route and port",
            ),
        ]
    except OSError as error:
        return [
            *checks,
            Check("broker reachable", FAIL, "%s: %s" % (where, error.strerror or error), "is the broker running there, on that port?"),
        ]
    checks.insert(1, Check("broker reachable", PASS, "TCP to %s" % where))
    return [*checks, _mqtt_connect(cfg)]


def _mqtt_connect(cfg: configuration.Config) -> Check:
    mqtt_cfg = cfg.mqtt
    v5 = mqtt_cfg.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="%s-doctor" % cfg.gateway_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else True,
    )
    try:
        secure(client, mqtt_cfg)
    except (OSError, ssl.SSLError, ValueError) as error:
        return Check(
            "broker login", FAIL, "cannot set up TLS or the password: %s" % error, "check [mqtt.tls] files and [mqtt] password_file"
        )
    answer: list[Any] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answer.append(reason)
    client.connect_timeout = CONNECT_S
    try:
        client.connect(mqtt_cfg.host, mqtt_cfg.port, keepalive=10)
        deadline = time.monotonic() + CONNECT_S
        while not answer and time.monotonic() < deadline:
            client.loop(timeout=0.2)
    except (OSError, ssl.SSLError) as error:
        return Check("broker login", FAIL, "CONNECT failed: %s" % error, "is the broker running there, on that port?")
    finally:
        client.disconnect()
    if not answer:
        return Check("broker login", FAIL, "no CONNACK within %.0f s" % CONNECT_S, 'is it an MQTT port? try [mqtt] protocol = "3.1.1"')
    reason = answer[0]
    if getattr(reason, "is_failure", False) or (isinstance(reason, int) and reason):
        who = "as %s" % mqtt_cfg.username if mqtt_cfg.username else "without a user name"
        return Check(
            "broker login",
            FAIL,
            "the broker refused the CONNECT %s: %s" % (who, reason),
            "check [mqtt] username and its password, and the broker's ACL",
        )
    return Check(
        "broker login",
        PASS,
        "CONNECT accepted (MQTT %s%s)" % (mqtt_cfg.protocol, ", as %s" % mqtt_cfg.username if mqtt_cfg.username else ""),
    )


def check_disk(cfg: configuration.Config, user: ServiceUser, mounts: str | None = None) -> list[Check]:
    data_dir = str(cfg.data_dir)
    existing = data_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "/"
    if existing != data_dir and not os.path.isdir(existing):
        return [Check("data_dir", FAIL, "%s cannot be made: %s is a file" % (data_dir, existing), "set [gateway] data_dir to a folder")]
    checks: list[Check] = []
    if existing != data_dir:
        if user.may(existing, read=False, write=True, search=True):
            checks.append(Check("data_dir", PASS, "%s does not exist yet; %s may create it in %s" % (data_dir, user.name, existing)))
        else:
            checks.append(
                Check(
                    "data_dir",
                    FAIL,
                    "%s does not exist and %s may not create it" % (data_dir, user.name),
                    "sudo install -d -o %s %s" % (user.name, data_dir),
                )
            )
    elif not os.path.isdir(data_dir):
        checks.append(Check("data_dir", FAIL, "%s is not a folder" % data_dir, "set [gateway] data_dir to a folder"))
    elif not user.may(data_dir, read=True, write=True, search=True):
        checks.append(
            Check("data_dir", FAIL, "%s may not write in %s" % (user.name, data_dir), "sudo chown -R %s %s" % (user.name, data_dir))
        )
    else:
        checks.append(Check("data_dir", PASS, "%s is writable by %s" % (data_dir, user.name)))
    vfs = os.statvfs(existing)
    free = vfs.f_bavail * vfs.f_frsize
    used = 0
    for path in glob.glob(os.path.join(data_dir, "*")):
        with contextlib.suppress(OSError):  # the running agent may delete one meanwhile
            used += os.path.getsize(path) if os.path.isfile(path) else 0
    if free + used >= cfg.max_bytes:
        checks.append(
            Check(
                "disk space",
                PASS,
                "room for [buffer] max_bytes %s: %s free, %s in use" % (size_text(cfg.max_bytes), size_text(free), size_text(used)),
            )
        )
    else:
        checks.append(
            Check(
                "disk space",
                FAIL,
                "[buffer] max_bytes is %s but only %s free (%s in use)" % (size_text(cfg.max_bytes), size_text(free), size_text(used)),
                "lower [buffer] max_bytes to %d or less, or free space" % int((free + used) * 0.9),
            )
        )
    checks.append(_storage_kind(existing, mounts))
    return checks


def _storage_kind(path: str, mounts: str | None) -> Check:
    """What the data lives on, from /proc/self/mountinfo: the mount whose point is the longest prefix of the path."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return Check("storage", WARN, "cannot read /proc/self/mountinfo", "")
    real = os.path.realpath(path)
    best: tuple[str, str, str] = ("", "", "")
    for line in mounts.splitlines():
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 2:
            continue
        point = fields[4].replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, rest[0], rest[1])
    point, kind, source = best
    where = "%s on %s (mounted at %s)" % (kind, source, point)
    if kind in ("tmpfs", "ramfs"):
        return Check(
            "storage", FAIL, "RAM: %s; the buffer is lost at every power cut" % where, "put [gateway] data_dir on the SD card or an SSD"
        )
    if kind.startswith(("nfs", "cifs", "smb", "fuse.sshfs")):
        return Check("storage", WARN, "network storage: %s; a lost network stops acknowledgements" % where, "put data_dir on local storage")
    if source.startswith("/dev/mmcblk") or (source == "/dev/root" and os.path.exists("/sys/block/mmcblk0")):
        return Check("storage", PASS, "SD card: %s; it wears with every write (docs/PERFORMANCE.md: bytes per reading)" % where)
    if kind == "overlay":
        return Check(
            "storage",
            WARN,
            "overlay: %s (a container?); what survives a restart depends on what lies under it" % where,
            "mount a volume at data_dir",
        )
    return Check("storage", PASS, where)


def check_clock(now: float | None = None, state: Callable[[], int | None] | None = None) -> list[Check]:
    now = time.time() if now is None else now
    if now < SANE_CLOCK:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(now))
        return [
            Check(
                "clock",
                FAIL,
                "the clock says %s UTC: never set (no RTC, no NTP)" % stamp,
                "timedatectl set-ntp true, and let the gateway reach an NTP server",
            )
        ]
    synced = (state or _clock_state)()
    if synced is None:
        return [Check("clock", WARN, "cannot ask the kernel whether it is synchronized", "timedatectl status")]
    if synced == _TIME_ERROR:
        return [
            Check(
                "clock",
                WARN,
                "not synchronized: readings are stamped with this clock",
                "timedatectl set-ntp true; check NTP (UDP 123) reaches a server",
            )
        ]
    return [Check("clock", PASS, "synchronized (%s UTC)" % time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)))]


def _clock_state() -> int | None:
    """adjtimex(2) with no modes: only reads. Its return value is the clock state (5: TIME_ERROR, unsynchronized)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex, zeroed: modes 0 (larger than any ABI's struct)
        result = int(libc.adjtimex(timex))
    except (OSError, AttributeError):
        return None
    return None if result < 0 else result


def check_secrets(cfg: configuration.Config, user: ServiceUser) -> list[Check]:
    """The files the agent reads at start, as the service user will: the MQTT password, the TLS files, the node
    keys (the agent's rule: the service user's own, mode 0600 or stricter, gateway/keystore.py)."""
    checks: list[Check] = []
    files = [("[mqtt] password_file", cfg.mqtt.password_file)]
    if cfg.mqtt.tls is not None:
        files += [("[mqtt.tls] %s" % key, getattr(cfg.mqtt.tls, key)) for key in ("ca_file", "cert_file", "key_file")]
    for name, path in files:
        if not path:
            continue
        if not os.path.isfile(path):
            checks.append(Check(name, FAIL, "%s is missing" % path, "put it there, or fix the path in the config"))
        elif not user.may(path, read=True, write=False):
            fix = "sudo chown %s %s && sudo chmod 600 %s" % (user.name, path, path)
            checks.append(Check(name, FAIL, "%s may not read %s" % (user.name, path), fix))
        else:
            checks.append(Check(name, PASS, "%s readable by %s" % (path, user.name)))
    keys = cfg.keys_path
    if not keys.exists():
        return [*checks, Check("keys", PASS, "no keys file (%s): nodes without keys only" % keys)]
    info = keys.stat()
    if info.st_mode & 0o077 or (info.st_uid != user.uid and user.uid != 0):
        fix = "sudo chown %s %s && sudo chmod 600 %s" % (user.name, keys, keys)
        detail = "%s must be %s's own, mode 0600 (it is uid %d, mode %04o): the agent refuses it" % (
            keys,
            user.name,
            info.st_uid,
            stat.S_IMODE(info.st_mode),
        )
        return [*checks, Check("keys", FAIL, detail, fix)]
    return [*checks, Check("keys", PASS, "%s is %s's, mode 0600" % (keys, user.name))]


# ------------------------------------------------------------ all of them


def run(config_path: str, user_name: str | None = None, listen_s: float = LISTEN_S) -> list[Check]:
    cfg, checks = check_config(config_path)
    if cfg is None:
        return checks
    try:
        user = ServiceUser.find(user_name)
    except KeyError:
        return [
            *checks,
            Check("service user", FAIL, "no user %s on this machine" % user_name, "create it, or give --user the service's user"),
        ]
    if user_name is None and user.name != "edgegw":
        fix = "sudo edgegw service install --config %s (it creates the user), then run the doctor again" % config_path
        checks.append(Check("service user", WARN, "no user edgegw: access is checked for %s, who runs this" % user.name, fix))
    agent, found = check_agent(cfg)
    checks += found
    checks += check_ports(cfg, user, agent, listen_s)
    checks += check_broker(cfg)
    checks += check_disk(cfg, user)
    checks += check_secrets(cfg, user)
    checks += check_clock()
    return checks


def report(checks: Iterable[Check]) -> str:
    lines = []
    for check in checks:
        lines.append("%s  %-18s %s" % (check.result, check.check, check.detail))
        if check.fix and check.result != PASS:
            lines.append("      %-18s fix: %s" % ("", check.fix))
    return "\n".join(lines) + "\n"


def as_json(checks: list[Check]) -> dict[str, Any]:
    counts = {result: sum(1 for check in checks if check.result == result) for result in (PASS, WARN, FAIL)}
    return {"checks": [asdict(check) for check in checks], "summary": counts, "ok": counts[FAIL] == 0}


def exit_status(checks: list[Check]) -> int:
    return 1 if any(check.result == FAIL for check in checks) else 0
