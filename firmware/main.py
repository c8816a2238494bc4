# Entry point. On a board, boot.py runs `import firmware.main` and the wiring
# comes from /data/node.json. On the unix port (emulation):
#   micropython -m firmware.main UART_PATH DATA_DIR SEED [INTERVAL] [STATUS_INTERVAL]
import gc

gc.threshold(2048)  # collect after every 2 KB allocated, imports included: garbage never fragments the small heap for long

import asyncio  # noqa: E402
import sys  # noqa: E402


def _hal(name):
    # By name, so each board's type check sees only its own HAL.
    return __import__("firmware." + name, None, None, ["Hal"]).Hal


def _unix():
    from firmware.node import Node

    Hal = _hal("hal_unix")
    args = sys.argv[1:]
    if len(args) < 3:
        print("usage: micropython -m firmware.main UART_PATH DATA_DIR SEED [INTERVAL] [STATUS_INTERVAL]")
        sys.exit(2)
    hal = Hal(args[0], args[1], int(args[2]))
    interval = float(args[3]) if len(args) > 3 else 10
    status_interval = float(args[4]) if len(args) > 4 else 60
    return Node(hal, interval, status_interval)


def _board():
    import json

    from firmware.node import Node

    Hal = _hal("hal_board")
    try:
        with open("/data/node.json") as handle:
            config = json.load(handle)
    except OSError:
        config = {}
    return Node(Hal(config), config.get("interval", 10), config.get("status_interval", 60))


def main():
    gc.collect()
    node = _unix() if sys.platform in ("linux", "darwin") else _board()
    asyncio.run(node.run())


main()
