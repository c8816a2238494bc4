"""Issue 15: the SX1262 driver (firmware/sx1262.py) on the MicroPython VM against the command-level emulated
chip (firmware/emulated_sx1262.py): the commands it sends are the datasheet's, and it waits for BUSY."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import run_micropython

SET_STANDBY, SET_PACKET_TYPE, SET_DIO2_AS_RF_SWITCH, CALIBRATE_IMAGE, SET_DIO_IRQ_PARAMS, WRITE_REGISTER = (
    0x80,
    0x8A,
    0x9D,
    0x98,
    0x08,
    0x0D,
)


def test_the_sx1262_driver_drives_the_emulated_chip(micropython: str) -> None:
    done = run_micropython(micropython, "tests/portable/sx1262_check.py")
    assert done.returncode == 0, done.stdout + done.stderr
    rows: dict[str, list[Any]] = {row[0]: row[1:] for row in json.loads(done.stdout)}
    setup = [SET_STANDBY, SET_PACKET_TYPE, SET_DIO2_AS_RF_SWITCH, CALIBRATE_IMAGE, SET_DIO_IRQ_PARAMS, WRITE_REGISTER]
    assert rows["begin"] == [setup, "1424", 0]  # a private sync word; no command sent while BUSY
    # 868.1 MHz: RfFreq = f * 2^25 / 32 MHz; read back to the Hz the chip's 0.95 Hz step allows
    assert rows["config"] == [[868_099_999, 9, 125_000, 1], 14, [0x02, 0x02, 0x00, 0x01], 0]  # +14 dBm: DS table 13-21
    assert rows["ldro"] == [1, 22, [0x04, 0x07, 0x00, 0x01], [869_524_999, 12, 125_000, 1]]  # SF12: LDRO; +22 dBm PA
    assert rows["sent"] == [["".join("%02x" % i for i in range(1, 43))], [[868_299_999, 7, 250_000, 4, 17]], [8, 0, 42, 1, 0], False]
    assert rows["tx_done"] == [True, 0x2, False]  # TxDone after its airtime, the chip back in standby
    assert rows["not listening"] == [False]
    assert rows["rx mode"] == [0x5, 255, None]  # RX continuous, the longest payload allowed
    assert rows["rx"] == ["006672616d65ff" * 3, -118.0, 7.25, None]
    assert rows["crc"] == [None, 1, 0]  # a damaged packet dropped and counted; still nothing sent while BUSY
    assert rows["band"] == ["refused"]
