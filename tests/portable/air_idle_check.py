# The unix HAL's idle on the air (firmware/hal_unix.py): a line the air sends while the node's radio sleeps (the
# end of a frame whose window closed before it) is read in the wait it ends. Left unread it ended every later
# wait at once: the node spun at full CPU until its radio next listened.
# Usage: air_idle_check.py UART FOLDER (FOLDER/node.json names the air's pty); the test writes the air's line
# once this says "ready". Prints JSON: the uptime (ms) each wait of 300 ms took, from the one the line ended.
import json
import sys

UART, FOLDER = sys.argv[1], sys.argv[2]
sys.argv.clear()  # as the node's command line has them (the module's argv cannot be replaced on this port)
sys.argv.extend(["air_idle_check", UART, FOLDER, "1"])

from firmware.hal_unix import Hal  # noqa: E402 (it reads sys.argv)

hal = Hal()
print("ready")
took = []
for _ in range(100):  # until the line comes: the wait it comes in ends early
    start = hal.uptime_ms()
    hal.uart.wait(300)
    if hal.uptime_ms() - start < 250:
        break
for _ in range(3):
    start = hal.uptime_ms()
    hal.uart.wait(300)
    took.append(hal.uptime_ms() - start)
print(json.dumps(took))
