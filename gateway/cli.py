"""The `edgegw` command line: one table of subcommands, errors printed as `edgegw: message`."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import importlib.metadata
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import serial

from protocols import ProtocolError, StreamDecoder

from . import __version__, config, logs
from .fwtools.tools import ROLES
from .render import describe_error, describe_event


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


def do_decode(args: argparse.Namespace) -> int:
    """Decode wire frames given as hex (as copied from a log or a logic analyser)."""
    decoder = StreamDecoder()
    data = bytearray()
    for chunk in args.hex:
        try:
            data += bytes.fromhex(chunk.replace(":", "").replace(" ", ""))
        except ValueError:
            raise CommandError("not hex: %r" % chunk) from None
    if not data.endswith(b"\x00"):
        data += b"\x00"  # the delimiter is often left off when copying a frame
    decoder.feed(bytes(data))
    events = decoder.drain()
    for event in events:
        print(describe_event(event))
    return 1 if any(isinstance(event, ProtocolError) for event in events) else 0


def do_config_check(args: argparse.Namespace) -> int:
    """Validate a configuration file without running anything."""
    try:
        cfg = config.load(args.config)
    except config.ConfigError as error:
        raise CommandError(error.report()) from None
    tls = "TLS" if cfg.mqtt.tls else "plain"
    print("%s: ok" % args.config)
    print("  gateway %s, data in %s" % (cfg.gateway_id, cfg.data_dir))
    print("  buffer up to %d bytes, when full: %s" % (cfg.max_bytes, cfg.when_full))
    print(
        "  broker %s:%d (%s, MQTT %s, QoS %d), topics under %s/%s/"
        % (cfg.mqtt.host, cfg.mqtt.port, tls, cfg.mqtt.protocol, cfg.mqtt.qos, cfg.mqtt.topic_prefix, cfg.gateway_id)
    )
    for entry in cfg.serial:
        print("  serial %s at %d baud" % (entry.port, entry.baud))
    if not cfg.serial:
        print("  no [[serial]] ports: the gateway will only forward what is already buffered")
    return 0


def do_run(args: argparse.Namespace) -> int:
    """Run the gateway in the foreground until SIGTERM or SIGINT."""
    try:
        cfg = config.load(args.config)
    except config.ConfigError as error:
        raise CommandError(error.report()) from None
    handler = logs.setup(args.log_level.upper() if args.log_level else cfg.log_level.upper())
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints every thread's stack
    from .keystore import KeystoreError
    from .store import StoreError

    try:
        return asyncio.run(_run_agent(cfg, handler))
    except (StoreError, KeystoreError) as error:
        raise CommandError(str(error)) from None
    except Exception:  # a bug: its traceback goes into the log as one line, like every other record
        logging.getLogger("gateway").critical("the gateway stopped on an unexpected error", exc_info=True)
        return 1
    finally:
        logs.finish(handler)


async def _run_agent(cfg: config.Config, handler: logs.BoundedHandler) -> int:
    from .agent import Agent

    stop_watching = logs.watch_loop(handler)  # asyncio's exception handler, rate-limited like the rest
    try:
        return await Agent(cfg).run()
    finally:
        stop_watching()


def do_status(args: argparse.Namespace) -> int:
    """Ask the running agent for its status over its control socket (gateway/control.py)."""
    import json
    import time

    from .control import ControlError, ask
    from .status import table

    if args.socket:
        path = Path(args.socket)
    else:
        try:
            path = config.load(args.config, secrets=False).socket_path
        except config.ConfigError as error:
            raise CommandError(error.report()) from None
    while True:
        try:
            answer = ask(path)
        except ControlError as error:
            if args.watch is None:
                raise CommandError(str(error)) from None
            print("edgegw: %s; asking again in %g s" % (error, args.watch), file=sys.stderr, flush=True)  # a restart
            time.sleep(args.watch)
            continue
        if args.json:
            print(json.dumps(answer, sort_keys=True), flush=True)
        else:
            if args.watch is not None and sys.stdout.isatty():
                print("\x1b[H\x1b[2J", end="")  # the terminal cleared: each screen in place of the last
            try:
                print(table(answer), end="", flush=True)
            except (KeyError, TypeError, ValueError) as error:
                raise CommandError("the agent's status lacks %s: is the agent the same version as this tool?" % error) from None
        if args.watch is None:
            return 0
        time.sleep(args.watch)


def do_doctor(args: argparse.Namespace) -> int:
    """Every check a technician would make, PASS / WARN / FAIL with the fix; exit 1 on any FAIL."""
    import json

    from . import doctor

    checks = doctor.run(args.config, args.user, args.listen)
    if args.json:
        print(json.dumps(doctor.as_json(checks), indent=2))
    else:
        print(doctor.report(checks), end="")
    return doctor.exit_status(checks)


def do_init(args: argparse.Namespace) -> int:
    """Write a commented config from questions or flags, then check it with the doctor."""
    from . import doctor, init_config

    try:
        answers = init_config.gather(args, init_config.interactive(args))
        init_config.write(Path(args.config), init_config.render(answers), args.force)
    except init_config.InitError as error:
        raise CommandError(str(error)) from None
    except (EOFError, OSError) as error:
        raise CommandError(
            "%s not written: %s" % (args.config, describe_error(error) if isinstance(error, OSError) else "no answer")
        ) from None
    print("wrote %s" % args.config)
    if args.no_doctor:
        return 0
    print("checking it (edgegw doctor):")
    checks = doctor.run(args.config, args.user, args.listen)
    print(doctor.report(checks), end="")
    return doctor.exit_status(checks)


def do_service(args: argparse.Namespace) -> int:
    """The systemd unit: print it, or install it (with its system user)."""
    from . import service

    try:
        cfg = config.load(args.config, secrets=False)  # install makes the secret files the service user's
    except config.ConfigError as error:
        raise CommandError(error.report()) from None
    secrets = [path for path in (cfg.mqtt.password_file, cfg.mqtt.tls.key_file if cfg.mqtt.tls else None, str(cfg.keys_path)) if path]
    writable = [str(cfg.socket_path.parent), str(cfg.keys_path.parent)]  # the socket is made there; a rotation rewrites the keys
    try:
        if args.action == "unit":
            print(service.render_unit(str(Path(args.config).resolve()), args.user, str(cfg.data_dir), writable=writable), end="")
            return 0
        return service.install(args.config, args.user, args.unit_dir, str(cfg.data_dir), args.dry_run, secrets, writable)
    except (service.ServiceError, OSError) as error:
        raise CommandError(str(error)) from None


def do_fw(args: argparse.Namespace) -> int:
    """Firmware developer tools: build, flash, emulate, monitor."""
    from .fwtools import build, emulate, flash, monitor
    from .keystore import KeystoreError, node_name

    try:
        if args.fw_command == "build":
            manifest = build.build(Path(args.out), debug=args.debug)
            files = manifest["files"]
            assert isinstance(files, dict)
            print("built firmware %s: %d files in %s (manifest.json)" % (manifest["firmware_version"], len(files), args.out))
            return 0
        if args.fw_command == "flash":
            keys = None
            if args.provision:
                from .keytools import keystore_for

                if not (args.keys or args.config):
                    raise CommandError("--provision: say where the gateway's keys are: --config PATH or --keys FILE")
                keys = keystore_for(args)
            node = node_name(args.node) if args.node else None
            return flash.flash(args.port, args.role, args.set or [], print, args.dry_run, keys, node, args.replace)
        if args.fw_command == "emulate":
            return emulate.run(args.count, args.interval, args.heap, args.seed, Path(args.state) if args.state else None, args.role)
        return monitor.monitor(args.port, args.baud, print, frames=args.frames, seconds=args.seconds)
    except (build.BuildError, flash.FlashError, emulate.EmulatorError, KeystoreError) as error:
        raise CommandError(str(error)) from None
    except serial.SerialException as error:
        raise CommandError("%s: %s" % (getattr(args, "port", "?"), error)) from None


def do_keys(args: argparse.Namespace) -> int:
    """Node keys: add (provision), list, rotate, revoke."""
    from . import keytools
    from .keystore import KeystoreError

    try:
        return keytools.run(args)
    except (KeystoreError, OSError) as error:
        raise CommandError(describe_error(error) if isinstance(error, OSError) else str(error)) from None


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "decode": (do_decode, "decode protocol frames given as hex"),
    "run": (do_run, "run the gateway: edgegw run --config PATH"),
    "fw": (do_fw, "firmware tools: fw build | fw flash | fw emulate | fw monitor"),
    "config": (do_config_check, "check a configuration file: edgegw config check --config PATH"),
    "keys": (do_keys, "node keys: keys add | list | rotate | revoke"),
    "init": (do_init, "write a commented config from questions or flags, then run the doctor: edgegw init --config PATH"),
    "doctor": (do_doctor, "check this gateway: config, ports, broker, disk, clock: edgegw doctor --config PATH"),
    "service": (do_service, "the systemd unit: edgegw service unit | install --config PATH"),
    "status": (do_status, "the running gateway's status: edgegw status --config PATH [--json] [--watch]"),
}


PLUGIN_GROUP = "edgegw.commands"  # entry points that add commands (the HIL harness adds `hil` and `demo`)


def plugin_commands(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:  # type: ignore[type-arg]
    """Commands other packages register, without this package importing them."""
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}
    for entry in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        handlers.update(entry.load()(sub))
    return handlers


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds, found %r" % text) from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("expected 0.1 to 3600 seconds, found %s" % text)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgegw", description="edgegw: edge gateway for city sensor networks")
    parser.add_argument("--version", action="version", version="edgegw %s" % __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_handler, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == "decode":
            command.add_argument("hex", nargs="+", help="frame bytes in hex, delimiter optional")
        elif name == "run":
            command.add_argument("--config", required=True, metavar="PATH", help="the TOML configuration file")
            command.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides [gateway] log_level")
        elif name == "fw":
            tools = command.add_subparsers(dest="fw_command", metavar="TOOL", required=True)
            tool = tools.add_parser("build", help="compile the firmware with mpy-cross into a bundle with a manifest")
            tool.add_argument("--out", default="build/firmware", help="output folder (default: build/firmware)")
            tool.add_argument("--debug", action="store_true", help="keep line numbers in tracebacks (costs the node about 1 KB of heap)")
            tool = tools.add_parser("flash", help="copy the bundle and settings to a board with mpremote")
            tool.add_argument("--port", required=True, help="the board's serial port")
            tool.add_argument("--role", default="sensor", choices=ROLES, help="what the node is (default: sensor)")
            tool.add_argument("--set", action="append", metavar="KEY=VALUE", help="node setting, e.g. interval=30 or i2c=22,21")
            tool.add_argument("--dry-run", action="store_true", help="print the mpremote command instead of running it")
            tool.add_argument("--provision", action="store_true", help="give the node a new key (also into the gateway's keys file)")
            tool.add_argument("--config", metavar="PATH", help="--provision: the gateway's configuration (its keys file)")
            tool.add_argument("--keys", metavar="FILE", help="--provision: the gateway's keys file itself")
            tool.add_argument("--node", help="--provision: the node id (default: read from the board's unique id)")
            tool.add_argument("--replace", action="store_true", help="--provision: the node has a key already; replace it")
            tool = tools.add_parser("emulate", help="run N emulated nodes (real MicroPython) behind pseudo-terminals")
            tool.add_argument("--count", type=int, default=1)
            tool.add_argument("--role", default="sensor", choices=ROLES, help="what the nodes are (default: sensor)")
            tool.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
            tool.add_argument("--heap", default="64k", help="MicroPython heap size (default 64k, what the firmware is tested in)")
            tool.add_argument("--seed", type=int, default=1, help="seed of the first node's sensor models")
            tool.add_argument("--state", help="folder for the nodes' flash (default: a temporary folder)")
            tool = tools.add_parser("monitor", help="decode and print the frames on a serial port")
            tool.add_argument("--port", required=True)
            tool.add_argument("--baud", type=int, default=115200)
            tool.add_argument("--frames", type=int, help="stop after this many frames")
            tool.add_argument("--seconds", type=float, help="stop after this long")
        elif name == "keys":
            from . import keytools

            keytools.add_arguments(command)
        elif name == "status":
            where = command.add_mutually_exclusive_group(required=True)
            where.add_argument("--config", metavar="PATH", help="the agent's configuration (its [status] socket)")
            where.add_argument("--socket", metavar="PATH", help="the agent's control socket itself")
            command.add_argument("--json", action="store_true", help="the status document as JSON, for scripts")
            command.add_argument(
                "--watch",
                nargs="?",
                type=_positive_seconds,
                const=2.0,
                metavar="SECONDS",
                help="follow it: again every SECONDS (default 2)",
            )
        elif name == "init":
            command.add_argument("--config", required=True, metavar="PATH", help="the file to write")
            command.add_argument("--id", help="gateway id (default: the host name)")
            command.add_argument("--data-dir", help="the buffer's folder (default /var/lib/edgegw)")
            command.add_argument("--broker", metavar="HOST[:PORT]", help="the MQTT broker")
            command.add_argument("--tls", action=argparse.BooleanOptionalAction, default=None, help="TLS to the broker (default: yes)")
            command.add_argument("--ca-file", help="the CA of the broker's certificate (default: the system's CAs)")
            command.add_argument("--username", help="MQTT user name")
            command.add_argument("--password-file", help="the file holding the MQTT password")
            command.add_argument("--serial", action="append", metavar="DEVICE", help="a serial port or glob (repeat; default: all found)")
            command.add_argument("--scan", default="/dev/serial/by-id", metavar="DIR", help="where serial devices are looked for")
            command.add_argument("--max-bytes", type=int, help="[buffer] max_bytes (default 2000000000)")
            command.add_argument("--force", action="store_true", help="replace the file if it exists")
            asking = command.add_mutually_exclusive_group()
            asking.add_argument("--ask", dest="ask", action="store_const", const=True, help="ask questions even without a terminal")
            asking.add_argument("--yes", dest="ask", action="store_const", const=False, help="ask nothing: flags and defaults only")
            command.add_argument("--no-doctor", action="store_true", help="do not run edgegw doctor on it afterwards")
            command.add_argument("--user", help="the doctor's service user (default: edgegw if it exists, else you)")
            command.add_argument("--listen", type=_positive_seconds, default=3.0, metavar="SECONDS", help="the doctor's listening time")
        elif name == "service":
            command.add_argument("action", choices=["unit", "install"], help="print the unit, or install it and its user")
            command.add_argument("--config", required=True, metavar="PATH", help="the configuration the service runs with")
            command.add_argument("--user", default="edgegw", help="the service's system user (default edgegw; created if missing)")
            command.add_argument("--unit-dir", default="/etc/systemd/system", metavar="DIR", help="where the unit goes")
            command.add_argument("--dry-run", action="store_true", help="say what install would do, change nothing")
        elif name == "doctor":
            command.add_argument("--config", required=True, metavar="PATH", help="the TOML configuration file")
            command.add_argument("--json", action="store_true", help="the checks as JSON, for scripts")
            command.add_argument("--user", help="the service's user, whose access is checked (default: edgegw if it exists, else you)")
            command.add_argument(
                "--listen",
                type=_positive_seconds,
                default=3.0,
                metavar="SECONDS",
                help="how long an idle port is listened to for a node (3)",
            )
        elif name == "config":
            command.add_argument("action", choices=["check"], help="what to do with the file")
            command.add_argument("--config", required=True, metavar="PATH", help="the TOML configuration file")
    parser.set_defaults(plugins=plugin_commands(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command][0] if args.command in COMMANDS else args.plugins[args.command]
    try:
        return handler(args)
    except CommandError as error:
        print("edgegw: %s" % error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edgegw status --watch | head`: the reader went, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0


if __name__ == "__main__":
    sys.exit(main())
