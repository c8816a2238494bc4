# Entry point. On a board, boot.py runs `import firmware.main` and the wiring
# comes from /data/node.json. On the unix port (emulation):
#   micropython -m firmware.main UART_PATH DATA_DIR SEED [INTERVAL] [STATUS_INTERVAL]
import gc

gc.threshold(2048)  # collect after every 2 KB allocated, imports included: garbage never fragments the small heap for long

import sys  # noqa: E402


def main():
    gc.collect()
    # By name, so each board's type check sees only its own HAL.
    hal = __import__("firmware.hal_" + ("unix" if sys.platform in ("linux", "darwin") else "board"), None, None, ["Hal"])
    # Armed before anything that can fail (settings, flash records, drivers): a board
    # whose start raised would otherwise wait at the REPL until someone came by.
    watchdog = hal.WDT(timeout=8000)
    from firmware.node import Node

    Node(hal.Hal()).run(watchdog)


main()
