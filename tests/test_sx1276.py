"""Issue 15: the SX1276 driver (firmware/sx1276.py) on the MicroPython VM against the register-level emulated
chip (firmware/emulated_sx1276.py): what it writes is what the datasheet says the registers mean."""

from __future__ import annotations

import json
from typing import Any

from protocols.airtime import airtime_us
from tests.conftest import run_micropython


def test_the_sx1276_driver_drives_the_emulated_chip(micropython: str) -> None:
    done = run_micropython(micropython, "tests/portable/sx1276_check.py")
    assert done.returncode == 0, done.stdout + done.stderr
    rows: dict[str, list[Any]] = {row[0]: row[1:] for row in json.loads(done.stdout)}
    assert rows["opmode"] == [0x81]  # LoRa mode (set in SLEEP, as the chip insists), standby
    # 868.1 MHz: Frf = f * 2^19 / 32 MHz = 14,222,950 = 0xD90666 (LMIC's value for EU868's first channel)
    assert rows["frf"] == ["d90666", [868_099_975, 9, 125_000, 1]]
    bw125_cr45, sf9_crc, agc, pa_boost_14dbm, private_sync = 0x72, 0x94, 0x04, 0xFC, 0x12
    assert rows["config"] == [bw125_cr45, sf9_crc, agc, pa_boost_14dbm, private_sync]
    assert rows["ldro"][0] == 0x0C  # SF12 at 125 kHz: low data rate optimisation on (a symbol of 32 ms)
    assert rows["sent"] == [["".join("%02x" % i for i in range(1, 43))], [[868_299_987, 7, 250_000, 4, 17, 0]], False]
    assert airtime_us(42, 7, 250_000, 4) < 100_000  # ... and TxDone comes once its airtime has passed:
    assert rows["tx_done"] == [True, 0x81, False]  # standby again, the flag cleared
    assert rows["not listening"] == [False]  # a packet while not in RX continuous is not heard
    assert rows["nothing"] == [None]
    assert rows["rx"] == ["006672616d65ff" * 3, -118, 7.25, None]
    assert rows["weak"] == ["7765616b", -136, -17.5]  # below the noise: RSSI corrected by the SNR (DS 5.5.5)
    assert rows["crc"] == [None, 1]  # a damaged packet: dropped and counted
    # A window stays open from the preamble's detection (not ValidHeader, 20 symbols in: at SF12 past the window)
    # until the packet was read
    assert rows["preamble"] == [False, True, True, True, b"late".hex(), False]
    assert rows["asleep"] == [False, False]
    assert rows["band"] == ["refused"] and rows["absent"] == ["refused"]
