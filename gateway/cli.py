"""The `edgegw` command line: one table of subcommands, errors printed as `edgegw: message`."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from protocols import ProtocolError, StreamDecoder

from . import __version__, config
from .render import describe_message


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
    bad = 0
    while True:
        try:
            message = decoder.next_message()
        except ProtocolError as error:
            bad += 1
            print("BAD FRAME %s" % error)
            continue
        if message is None:
            break
        print(describe_message(message))
    return 1 if bad else 0


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
    logging.basicConfig(
        level=args.log_level.upper() if args.log_level else cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints every thread's stack
    from .agent import Agent
    from .store import StoreError

    try:
        return asyncio.run(Agent(cfg).run())
    except StoreError as error:
        raise CommandError(str(error)) from None


def do_demo(args: argparse.Namespace) -> int:
    print("edgegw demo: the live view arrives with the gateway and the node emulator (issues 3-5).")
    print("What exists today: the wire protocol; try `edgegw decode` on a frame from protocols/vectors/vectors.json.")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "decode": (do_decode, "decode protocol frames given as hex"),
    "run": (do_run, "run the gateway: edgegw run --config PATH"),
    "config": (do_config_check, "check a configuration file: edgegw config check --config PATH"),
    "demo": (do_demo, "run the local demonstration"),
}


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
        elif name == "config":
            command.add_argument("action", choices=["check"], help="what to do with the file")
            command.add_argument("--config", required=True, metavar="PATH", help="the TOML configuration file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command][0]
    try:
        return handler(args)
    except CommandError as error:
        print("edgegw: %s" % error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
