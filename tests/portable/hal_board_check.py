# The board HAL's radio wiring (firmware/hal_board.py) on the MicroPython unix port, which has no SPI: `machine`
# is a stand-in whose SPI bus reaches the emulated chips (firmware/emulated_sx1276.py, firmware/emulated_sx1262.py),
# for the boards this machine does not have. What is checked is the HAL's part: the chip node.json names is found
# on the SPI pins given, reset, and becomes a bridge's radio or a node's link; a miswired or absent one is said on
# the console and the node keeps its UART. Prints JSON; tests/test_hal_board.py checks it.
import json
import sys
import time

from firmware.emulated_sx1262 import EmulatedSX1262
from firmware.emulated_sx1276 import EmulatedSX1276

CS, RESET, BUSY = 18, 14, 26
board = {"chip": None, "levels": [], "spi": None}


class Pin:
    OUT, IN, PULL_UP, IRQ_FALLING = 1, 0, 2, 4

    def __init__(self, number, mode=0, value=None):
        self.number = number
        if value is not None:
            self(value)

    def __call__(self, level=None):
        chip = board["chip"]
        if level is None:  # read: the SX1262's BUSY line is low once it is ready
            return 1 if self.number == BUSY and chip is not None and chip.busy() else 0
        board["levels"].append([self.number, level])
        if self.number == CS and chip is not None:
            chip.cs(level)


class SPI:
    def __init__(self, spi_id, baudrate=0, polarity=0, phase=0, sck=None, mosi=None, miso=None):
        board["spi"] = [spi_id, baudrate, polarity, phase, sck.number, mosi.number, miso.number]

    def write_readinto(self, out, into):
        if board["chip"] is None:  # nothing on the bus: MISO reads 0
            for index in range(len(into)):
                into[index] = 0
        else:
            board["chip"].write_readinto(out, into)


slept = []


class Machine:  # what hal_board imports of `machine`
    Pin = Pin
    SPI = SPI
    WDT = object
    refuse = False

    def lightsleep(self, ms):
        if self.refuse:
            raise NotImplementedError("no lightsleep on this port")
        slept.append(ms)


machine = sys.modules["machine"] = Machine()

import firmware.hal_board as hal_board  # noqa: E402  (after its `machine` is there)
from firmware.hal_board import Hal  # noqa: E402

SPI_PINS = {"spi": [1, 5, 27, 19], "cs": CS, "reset": RESET}


class Bare(Hal):
    def __init__(self):  # as Hal's leaves it before the radio: its UART and flash are the board's, not wanted here
        pass


def hal(role, chip, **wiring):
    board["chip"], board["levels"] = chip, []
    h = Bare()
    h.config = wiring
    h.config["role"] = role
    h.role, h.uart, h.radio = role, "the UART", None
    h.hw_model = wiring.pop("model", "Generic ESP32 module with ESP32")
    h._radio(h.config)
    return h


out = {}
chip = EmulatedSX1276()
node = hal("lora_sensor", chip, radio="sx1276", sf=10, power=11, channels=[868300000], **SPI_PINS)
port = node.uart
out["sensor"] = {
    "opmode": chip.regs[0x01],
    "levels": board["levels"][:3],
    "spi": board["spi"],
    "port": [type(port).__name__, port.sf, port.power, list(port.channels)],
}
chip = EmulatedSX1262()
bridge = hal("lora_bridge", chip, radio="sx1262", busy=BUSY, sf=12, freq=868500000, **SPI_PINS)
sources = bridge.sources("lora_bridge")
out["bridge"] = {"uart": bridge.uart, "sources": [type(s).__name__ for s in sources], "freq": sources[0].freq, "sf": sources[0].sf}
out["bridge"]["radio"] = sources[0].radio is bridge.radio


def idles(node, waits):
    # What the node's link does with each wait (ms) of the node loop: [light sleeps, ms asleep or awake]
    del slept[:]
    start = time.ticks_ms()
    for ms in waits:
        node.uart.idle(ms)
    return [list(slept), time.ticks_diff(time.ticks_ms(), start)]


# A radio node idles in light sleep, not in its first minute, nor for a wait shorter than 10 ms; one whose
# node.json says "sleep": 0 stays awake, and so does one with a pulse counter or a lamp (their interrupts and PWM
# stop in light sleep). A bridge keeps its UART and never sleeps: what wakes it is a byte from the gateway
out["booting"] = idles(node, [20])
hal_board._AWAKE_AFTER_BOOT_MS = 0
node = hal("lora_sensor", EmulatedSX1276(), radio="sx1276", **SPI_PINS)
out["sleep"] = idles(node, [100, 40, 9, 1])
awake = hal("lora_sensor", EmulatedSX1276(), radio="sx1276", sleep=0, **SPI_PINS)
out["awake"] = idles(awake, [30, 30])
counting = hal("lora_sensor", EmulatedSX1276(), radio="sx1276", pulse_pin=4, **SPI_PINS)
lamp = hal("streetlight", EmulatedSX1276(), radio="sx1276", lamp_pin=2, **SPI_PINS)
out["sources_awake"] = [idles(counting, [30])[0], idles(lamp, [30])[0]]
# Boards whose light sleep wakes on its timer sleep; an ESP32-S3 (did not wake without an external event) stays awake
out["boards"] = [
    idles(hal("lora_sensor", EmulatedSX1276(), radio="sx1276", model=model, **SPI_PINS), [30])[0]
    for model in ("Raspberry Pi Pico W with RP2040", "Raspberry Pi Pico 2 with RP2350", "ESP32S3 module with ESP32S3")
]
machine.refuse = True  # a port that has no light sleep after all: said once, then awake
out["refused"] = idles(node, [20, 20])
print(json.dumps(out))
wired = dict(SPI_PINS)
del wired["spi"]
for role, chip, wiring in (
    ("lora_sensor", None, dict(SPI_PINS, radio="sx1276")),  # nothing answers on the bus
    ("lora_sensor", None, dict(wired, radio="sx1276")),  # the bus's pins not given
    ("lora_sensor", None, dict(SPI_PINS, radio="rfm95x")),
    ("streetlight", EmulatedSX1262(), dict(SPI_PINS, radio="sx1262")),  # no busy pin
):
    node = hal(role, chip, **wiring)
    print(json.dumps({"failed": [node.radio is None, node.uart]}))
