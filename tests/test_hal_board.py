"""The board HAL's radio wiring (firmware/hal_board.py) on the MicroPython VM, with a stand-in `machine` whose SPI
bus reaches the emulated chips (tests/portable/hal_board_check.py): the boards themselves are not on this machine."""

from __future__ import annotations

import json

from tests.conftest import run_micropython


def test_the_board_hal_wires_the_radio_node_json_names(micropython: str) -> None:
    done = run_micropython(micropython, "tests/portable/hal_board_check.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Printed while the node below idled on a port that refuses light sleep: said once, over two waits
    refusal = "edgegw-node: light sleep refused, the node stays awake: NotImplementedError"
    assert [line for line in lines if line.startswith("edgegw-node: light sleep")] == [lines[0]] and lines[0].startswith(refusal)
    lines = lines[1:]
    wired = json.loads(lines[0])
    sensor = wired["sensor"]
    assert sensor["opmode"] == 0x80  # the SX1276 found by its version, put in LoRa mode, asleep until the first frame
    assert sensor["levels"] == [[18, 1], [14, 0], [14, 1]]  # CS high (deselected), reset pulled low then released
    assert sensor["spi"] == [1, 1000000, 0, 0, 5, 27, 19]  # SPI 1 at 1 MHz, mode 0, on the pins node.json gave
    assert sensor["port"] == ["RadioPort", 10, 11, [868300000]]  # its link is the radio, at its SF, power and channels
    assert wired["bridge"] == {"uart": "the UART", "sources": ["Bridge"], "freq": 868500000, "sf": 12, "radio": True}
    # A battery node waits in machine.lightsleep (RAM, the chip and ticks_ms kept), not for a wait under 10 ms, which
    # it sleeps awake; "sleep": 0 keeps it awake (a console on USB), and a port that refuses it is asked once
    assert wired["booting"][0] == [] and wired["booting"][1] >= 20  # awake in its first minute: fw flash gets in
    assert wired["sleep"][0] == [100, 40]
    assert wired["sources_awake"] == [[], []]  # a pulse counter's interrupts, a lamp's PWM: awake
    assert wired["boards"] == [[30], [30], []]  # an ESP32-S3's light sleep may not wake on its timer: awake
    assert wired["awake"][0] == [] and wired["awake"][1] >= 60
    assert wired["refused"][0] == [] and wired["refused"][1] >= 40
    said, failed = lines[1::2], [json.loads(line)["failed"] for line in lines[2::2]]
    assert failed == [[True, "the UART"]] * 4  # each: no radio, the node goes on over its UART
    assert "no SX1276 on the SPI bus" in said[0] and "'spi'" in said[1]
    assert "sx1276 or sx1262" in said[2] and "busy" in said[3]
    assert all(line.startswith("edgegw-node: bad flash record node.json (radio ") for line in said)
