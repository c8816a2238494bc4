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
    # DS 15.4: register 0x0736 bit 2 set with standard I/Q, cleared with inverted (else inverted packets are lost)
    assert rows["iq"] == [0x0D, 1, 0x09]
    # PreambleDetected (0x0004) and HeaderValid (0x0010) enabled with TxDone, RxDone, HeaderErr, CrcErr and Timeout
    # (DS 13.3.1: a flag the mask leaves out is never raised): a node's receive window stays open while a packet it
    # detected is coming, and while one that came waits for the next poll
    assert rows["header"] == [False, True, True, True, b"late".hex(), False, 0x0277]
    # Asleep (BUSY high, deaf), then woken by the driver's NSS pulse: in RX, nothing lost or refused
    assert rows["asleep"] == [[0x0, 1, False], 0x5, 0, 0, False]
    assert rows["stray"] == [[True, True, False, False, 0]]  # held 24 symbols, then let go and the flag cleared
    assert rows["restarted"] == [0x2, 0]  # woken and set up: standby, nothing lost


def test_a_battery_node_on_an_sx1262_sends_and_opens_both_windows(micropython: str) -> None:
    """A lora_sensor's link (firmware/radio_port.py) on the SX1262 driver and the emulated chip: an uplink at the
    node's SF with standard I/Q, RX1 on its channel and RX2 on the downlink channel with I/Q inverted, a downlink
    whose header came within RX1's 500 ms received although its end came after them, and the radio asleep between
    (tests/portable/sx1262_node_check.py). Before, the node stopped at its first window: the driver had no
    `receiving`."""
    done = run_micropython(micropython, "tests/portable/sx1262_node_check.py")
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["sent"] == [[[868_099_999, 9, 25]], 0, 0x6]  # 868.1 MHz, SF9, standard I/Q, the chip in TX
    state_tx_wait, state_rx, state_idle, mode_sleep, mode_standby, mode_rx = 2, 3, 0, 0x0, 0x2, 0x5
    sent_ms = out["tx_done"][2]
    assert out["tx_done"][:2] == [state_tx_wait, mode_standby] and 206 <= sent_ms <= 230  # 25 bytes at SF9: 206 ms
    assert out["rx1"] == [state_rx, mode_rx, 868_099_999, 9, 1]
    assert out["rx1_heard"] == [state_rx, True, 1, 1, state_tx_wait, mode_sleep]  # open past 500 ms, then asleep
    assert out["rx2"] == [state_rx, mode_rx, 869_524_999, 1]
    assert out["rx2_closed"] == [state_idle, 500, mode_sleep, [7], 0]  # closed after 500 ms; no command while BUSY
