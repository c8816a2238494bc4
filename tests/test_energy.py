"""Issue 15, the battery: hil/energy.py's class-A node held to a worked example by hand, to its regimes, and to
refusing nonsense."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest

from hil.energy import ER14505, ESP32, SX1276, Battery, Mcu, class_a_awake_ms, estimate, estimate_from_report
from protocols.airtime import airtime_us

FRAME = 83  # bench/radio.py's 10-sample READINGS frame on air (radio_frame_bytes): tagged, no COBS
QUARTER_HOURLY = 96  # uplinks a day


def test_worked_example_by_hand() -> None:
    # SF9, 83 bytes: 472.064 ms on air (protocols/airtime.py). 96 uplinks a day at +14 dBm, two 500 ms windows after
    # each (RX1 1 s, RX2 2 s after it), the MCU awake 500 + 472.064 + 2000 + 500 = 3472.064 ms a wake (until RX2
    # closed). Charge a day, current * time, in mA*ms:
    #   TX     96 *  472.064 * 43.5 (+14 dBm: 29 + (87 - 29) / 4)     =  1,971,339
    #   RX     96 * 1000     * 11.5                                    =  1,104,000
    #   MCU    96 * 3472.064 * 31                                      = 10,332,862
    #   sleep  (86,400,000 - 96 * 3472.064) * 0.010                    =    860,667   (the ESP32's 10 uA)
    #          (86,400,000 - 96 * 1472.064) * 0.0002                   =     17,252   (the SX1276's 0.2 uA)
    #   sum                                                              14,286,120 mA*ms / 86,400,000 ms
    #                                                                  = 0.16535 mA = 165.3 uA
    # Battery: 2400 mAh * 0.8 = 1920 mAh usable; a day drains 0.16535 * 24 = 3.9684 mAh
    # + 2400 * 0.01 / 365.25 = 0.0657 mAh of self-discharge = 4.0341 mAh: 1920 / 4.0341 = 475.9 days, 1.30 years.
    airtime_ms = airtime_us(FRAME, 9) / 1000
    assert airtime_ms == 472.064
    got = estimate(airtime_ms, QUARTER_HOURLY)
    assert got.average_ua == pytest.approx(165.3, rel=0.01)
    assert got.tx_ua == pytest.approx(1_971_339 / 86_400, rel=0.01)
    assert got.rx_ua == pytest.approx(1_104_000 / 86_400, rel=0.01)
    assert got.awake_ua == pytest.approx(10_332_862 / 86_400, rel=0.01)
    assert got.days == pytest.approx(475.9, rel=0.01)
    assert got.years == pytest.approx(1.30, rel=0.01)


def test_datasheet_rows_and_the_interpolation_between_them() -> None:
    assert [SX1276.tx_current_ma(p) for p in (7, 13, 17, 20)] == [20, 29, 87, 120]  # Table 6 itself
    assert SX1276.tx_current_ma(14) == pytest.approx(43.5)
    assert SX1276.tx_current_ma(10) == pytest.approx(24.5)
    assert class_a_awake_ms(100.0) == 100 + 500 + 2000 + 500  # airtime, work, until RX2 opens, RX2


def test_life_falls_as_the_spreading_factor_rises() -> None:
    lives = [estimate(airtime_us(FRAME, sf) / 1000, QUARTER_HOURLY).days for sf in range(7, 13)]
    assert all(slower < faster for faster, slower in itertools.pairwise(lives)), lives
    # SF12 is 23 times SF7's airtime: not a small effect, though the MCU awake 3 s a wake (both windows) is much
    assert lives[-1] < lives[0] / 2.5


def test_life_falls_as_power_rises() -> None:
    airtime_ms = airtime_us(FRAME, 10) / 1000
    lives = [estimate(airtime_ms, QUARTER_HOURLY, power_dbm=p).days for p in (7, 14, 17, 20)]
    assert lives == sorted(lives, reverse=True) and len(set(lives)) == 4


def test_tx_dominated_life_scales_inversely_with_uplinks() -> None:
    # SF12 at +20 dBm once a minute, the MCU awake only its work and the airtime: transmitting is most of the charge
    airtime_ms = airtime_us(FRAME, 12) / 1000
    one = estimate(airtime_ms, 1440, power_dbm=20, awake_ms=500 + airtime_ms)
    two = estimate(airtime_ms, 720, power_dbm=20, awake_ms=500 + airtime_ms)
    assert one.tx_ua > 0.6 * one.average_ua
    assert two.days / one.days == pytest.approx(2.0, rel=0.05)  # half the uplinks, nearly twice the life
    assert one.days < 30


def test_sleep_dominated_life_hardly_depends_on_uplinks() -> None:
    # SF7 once a day: the ESP32's 10 uA of deep sleep is most of the charge, and the battery lasts years
    airtime_ms = airtime_us(FRAME, 7) / 1000
    one = estimate(airtime_ms, 1)
    two = estimate(airtime_ms, 2)
    assert one.sleep_ua > 0.85 * one.average_ua
    assert two.days > 0.85 * one.days
    # the bound: the cell with nothing but the sleep currents and its self-discharge
    bound = ER14505.capacity_mah * 0.8 / ((ESP32.sleep_ua + SX1276.sleep_ua) / 1000 * 24 + ER14505.capacity_mah * 0.01 / 365.25)
    assert 0.85 * bound < one.days < bound
    # a board that sleeps at 1.5 mA (a Pico in lightsleep) lasts months whatever it sends
    pico = estimate(airtime_ms, 1, mcu=Mcu("Pico, lightsleep", sleep_ua=1500, active_ma=25))
    assert pico.sleep_ua > 0.98 * pico.average_ua and 40 < pico.days < 60


def test_battery_capacity_and_self_discharge() -> None:
    airtime_ms = airtime_us(FRAME, 9) / 1000
    ideal = estimate(airtime_ms, QUARTER_HOURLY, battery=Battery("ideal", 2400.0, usable=1.0, self_discharge_per_year=0.0))
    assert ideal.days == pytest.approx(2400 / (ideal.average_ua / 1000 * 24))
    twice = estimate(airtime_ms, QUARTER_HOURLY, battery=Battery("ideal, twice", 4800.0, usable=1.0, self_discharge_per_year=0.0))
    assert twice.days == pytest.approx(2 * ideal.days)
    # the default cell: 80 % of it, and 1 % a year lost whatever the node does (so twice the cell, less than twice the life)
    real = estimate(airtime_ms, QUARTER_HOURLY)
    assert real.average_ua == ideal.average_ua and real.days < 0.8 * ideal.days
    big = estimate(airtime_ms, QUARTER_HOURLY, battery=Battery("2 x ER14505 in parallel", 4800.0))
    assert 1.9 * real.days < big.days < 2 * real.days


def test_a_report_extrapolates_to_the_same_life_as_the_model() -> None:
    # A node's STATUS `air` after an hour at SF9, four uplinks: tx_ms counted in whole ms (473 each), two 500 ms windows
    # after each
    from_report = estimate_from_report(tx_ms=4 * 473, rx_ms=4 * 1000, elapsed_s=3600, wakes=4)
    modelled = estimate(472.064, QUARTER_HOURLY)
    assert from_report.days == pytest.approx(modelled.days, rel=0.005)
    # a node that listened longer (a downlink came in its windows) lasts less
    assert estimate_from_report(tx_ms=4 * 473, rx_ms=4 * 1400, elapsed_s=3600, wakes=4).days < from_report.days


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: estimate(-1.0, 96), "airtime_ms -1"),
        (lambda: estimate(100.0, -5), "uplinks_per_day -5"),
        (lambda: estimate(100.0, 96, rx_ms=float("nan")), "rx_ms nan"),
        (lambda: estimate(100.0, 96, battery=Battery("flat", 0.0)), "capacity_mah 0"),
        (lambda: estimate(100.0, 96, battery=Battery("odd", 2400.0, usable=1.5)), "usable share"),
        (lambda: estimate(100.0, 96, power_dbm=27), "transmit power 27 dBm: SX1276's table covers 7 to 20 dBm"),
        (lambda: estimate(5000.0, 20_000), "a day holds 86400000 ms"),
        (lambda: estimate_from_report(100, 100, 0, 1), "elapsed_s must be a positive number of seconds, not 0"),
        (lambda: estimate_from_report(100, -3, 60, 1), "rx_ms -3"),
    ],
)
def test_nonsense_is_refused_with_a_message(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
