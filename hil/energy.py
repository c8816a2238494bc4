"""Battery life of a class-A LoRa node (issue 15): what a day of uplinks costs in charge, and how long a cell lasts. Sans-I/O.

A battery node wakes, samples, sends one uplink, listens in the two receive windows that open a fixed delay
after it (protocols/lora.py: RX_DELAY_MS and RX2_DELAY_MS after the uplink ended, RX_WINDOW_MS long each;
firmware/radio_port.py opens both) and sleeps again. Its average current is a day's charge, state by state,
divided by the day (n uplinks a day; T_tx the airtime, T_rx the two windows, T_awake the MCU's time awake per
wake, until RX2 closed):

    Q_day = n * (T_tx * I_tx(P) + T_rx * I_rx + T_awake * I_mcu)
            + (day - n * T_awake) * I_mcu_sleep + (day - n * (T_tx + T_rx)) * I_radio_sleep
    I_avg = Q_day / day
    life  = C * usable / (I_avg + C * self_discharge_per_year / year)

The currents, each from the table it is quoted from (typical values):

- Semtech SX1276/77/78/79 datasheet, §2.5.1 Table 6 "Power Consumption Specification": sleep 0.2 µA (IDDSL);
  receive 11.5 mA (IDDR, LnaBoost on, band 1: 862-1020 MHz; 10.8 mA with LnaBoost off); transmit (IDDT, with
  impedance matching) 20 mA at +7 dBm and 29 mA at +13 dBm on the RFO pins, 87 mA at +17 dBm and 120 mA at
  +20 dBm on PA_BOOST. Between rows the current is interpolated linearly in dBm. The table has no +14 dBm row
  (EU868's limit, what edgegw's nodes send): the interpolation gives 43.5 mA there, more than the RFO path
  draws (RAK's RAK4260 module datasheet measures 33.1 mA at +14 dBm on RFO_HF), so on the safe side, and
  nearer what modules that wire only PA_BOOST draw. Not modelled: the standby and synthesiser ramp before
  each transmission and window (1.6-5.8 mA, Table 6, for a few ms).
- Espressif ESP32 Series Datasheet, "Power Consumption by Power Modes": deep-sleep with the RTC timer and RTC
  memory 10 µA; modem-sleep (CPU on, radio off) at 80 MHz 20-31 mA for a dual-core chip, the upper figure
  taken. The default MCU (`ESP32`); those are the chip's figures: a board's regulator, USB-serial chip and
  LEDs add to the 10 µA. A Raspberry Pi Pico asleep in MicroPython's machine.lightsleep(ms) measured about
  1.5 mA (MicroPython's commit adding lightsleep to the rp2 port), 150 times that: pass an `Mcu` of your own.
- The MCU's time awake per wake (`class_a_awake_ms`): MicroPython starts afresh after deep sleep (boot ROM,
  flash, the VM, the firmware's imports) and then samples and frames: WORK_MS = 500 ms, an assumption, not a
  measurement. It then stays awake through the uplink, the receive delays and both windows, counted at the active
  current. Measure a board and pass `awake_ms`.
- That is the design. The firmware as built has no deep sleep yet: on a board a radio node light-sleeps
  between its loop's steps (`ESP32_LIGHT_SLEEP`: the datasheet's 0.8 mA), which caps a cell at about 100 days
  (bench/radio.py `frame_figures`, docs/PERFORMANCE.md "Battery life as built").

The battery (`Battery`; default `ER14505`): one lithium thionyl chloride AA cell, 3.6 V, 2400 mAh nominal
(Tadiran TL-5903, EVE ER14505; Saft's LS14500 rates 2600 mAh), feeding the 3.3 V radio and MCU through a
low-dropout regulator; self-discharge about 1 % of the capacity a year at 20 °C. Derated to 80 % usable: our
allowance, not a datasheet figure, for what a bobbin cell does not give under 30-120 mA pulses (passivation,
voltage delay; a buffer capacitor or a hybrid cell is the usual remedy), in the cold, and at the regulator's
cut-off. Two alkaline AA cells (3.0 V falling to 2 V) would need a boost converter for an ESP32; its losses are
not modelled. Nor are the sensor's current, the regulator's quiescent current or temperature.

tests/test_energy.py holds a worked example computed by hand, and the regimes: TX-dominated, sleep-dominated.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from protocols.lora import RX2_DELAY_MS, RX_WINDOW_MS

DAY_MS = 86_400_000
YEAR_DAYS = 365.25
WORK_MS = 500.0  # the MCU awake per wake besides the radio's part: boot after deep sleep, sample, frame (assumed)
RX_WINDOWS_MS = 2 * RX_WINDOW_MS  # a node listens in RX1 and RX2 after each uplink


@dataclass(frozen=True)
class Radio:
    name: str
    sleep_ua: float
    rx_ma: float
    tx_ma: tuple[tuple[float, float], ...]  # (dBm, mA), rising in dBm: interpolated linearly between rows

    def tx_current_ma(self, power_dbm: float) -> float:
        rows = self.tx_ma
        if not rows[0][0] <= power_dbm <= rows[-1][0]:
            raise ValueError(
                "transmit power %s dBm: %s's table covers %s to %s dBm" % (_num(power_dbm), self.name, _num(rows[0][0]), _num(rows[-1][0]))
            )
        for (low_dbm, low_ma), (high_dbm, high_ma) in itertools.pairwise(rows):
            if power_dbm <= high_dbm:
                return low_ma + (high_ma - low_ma) * (power_dbm - low_dbm) / (high_dbm - low_dbm)
        return rows[-1][1]


@dataclass(frozen=True)
class Mcu:
    name: str
    sleep_ua: float  # between wakes
    active_ma: float  # awake


@dataclass(frozen=True)
class Battery:
    name: str
    capacity_mah: float  # nominal
    usable: float = 0.8  # the share of the nominal capacity counted on
    self_discharge_per_year: float = 0.01  # share of the nominal capacity lost a year, the node or not


@dataclass(frozen=True)
class Estimate:
    """A node's average current, its parts, and how long the battery lasts at it."""

    tx_ua: float
    rx_ua: float
    awake_ua: float  # the MCU awake
    sleep_ua: float  # the MCU and the radio asleep
    days: float

    @property
    def average_ua(self) -> float:
        return self.tx_ua + self.rx_ua + self.awake_ua + self.sleep_ua

    @property
    def years(self) -> float:
        return self.days / YEAR_DAYS


# SX1276 datasheet §2.5.1 Table 6 (typical): IDDSL, IDDR (LnaBoost on, band 1), IDDT (RFO +7/+13, PA_BOOST +17/+20)
SX1276 = Radio("SX1276", sleep_ua=0.2, rx_ma=11.5, tx_ma=((7.0, 20.0), (13.0, 29.0), (17.0, 87.0), (20.0, 120.0)))
# ESP32 Series Datasheet, power modes: deep-sleep (RTC timer + RTC memory) 10 µA; modem-sleep at 80 MHz 20-31 mA
ESP32 = Mcu("ESP32 (deep sleep 10 uA, awake 31 mA)", sleep_ua=10.0, active_ma=31.0)
# The same datasheet's light-sleep (RAM and peripherals kept, the CPU paused) 0.8 mA: how the firmware waits on a
# board today (firmware/hal_board.py), between the node loop's steps; not deep sleep (docs/PERFORMANCE.md)
ESP32_LIGHT_SLEEP = Mcu("ESP32 (light sleep 0.8 mA, awake 31 mA)", sleep_ua=800.0, active_ma=31.0)
# One ER14505 Li-SOCl2 AA cell, 3.6 V, 2400 mAh; 80 % counted on; about 1 % a year of self-discharge
ER14505 = Battery("ER14505 (Li-SOCl2 AA, 3.6 V, 2400 mAh)", capacity_mah=2400.0)


def class_a_awake_ms(airtime_ms: float, work_ms: float = WORK_MS) -> float:
    """The MCU's time awake per wake: its work, the uplink, and from its end until RX2 closed (the firmware waits
    for both windows in its idle(), neither slept through)."""
    return work_ms + airtime_ms + RX2_DELAY_MS + RX_WINDOW_MS


def estimate(
    airtime_ms: float,
    uplinks_per_day: float,
    *,
    power_dbm: float = 14.0,
    rx_ms: float = RX_WINDOWS_MS,
    awake_ms: float | None = None,
    mcu: Mcu = ESP32,
    radio: Radio = SX1276,
    battery: Battery = ER14505,
) -> Estimate:
    """A node sending `uplinks_per_day` uplinks of `airtime_ms` each at `power_dbm`, listening `rx_ms` after each
    (both windows), its MCU awake `awake_ms` per wake (default: `class_a_awake_ms`)."""
    _check(airtime_ms=airtime_ms, uplinks_per_day=uplinks_per_day, rx_ms=rx_ms)
    # a window held open longer (a frame detected in it) keeps the MCU awake that much longer too
    awake = class_a_awake_ms(airtime_ms) + max(0.0, rx_ms - RX_WINDOWS_MS) if awake_ms is None else awake_ms
    _check(awake_ms=awake)
    n = uplinks_per_day
    return _per_day(n * airtime_ms, n * rx_ms, n * awake, power_dbm, mcu, radio, battery)


def estimate_from_report(
    tx_ms: float,
    rx_ms: float,
    elapsed_s: float,
    wakes: int,
    *,
    power_dbm: float = 14.0,
    work_ms: float = WORK_MS,
    mcu: Mcu = ESP32,
    radio: Radio = SX1276,
    battery: Battery = ER14505,
) -> Estimate:
    """Battery life extrapolated from what a node measured over `elapsed_s`: its radio's time on air and listening
    (STATUS `air`, SPEC.md §5.7: `tx_ms`, `rx_ms`) and its wakes (one per uplink: `tx`). The MCU is counted awake
    `work_ms` each wake, through the measured radio time, and between it (until RX1 opens, and between the windows:
    RX2_DELAY_MS - RX_WINDOW_MS)."""
    _check(tx_ms=tx_ms, rx_ms=rx_ms, wakes=wakes, work_ms=work_ms)
    if not (elapsed_s > 0 and math.isfinite(elapsed_s)):
        raise ValueError("elapsed_s must be a positive number of seconds, not %s" % _num(elapsed_s))
    per_day = DAY_MS / (elapsed_s * 1000.0)
    awake = wakes * (work_ms + RX2_DELAY_MS - RX_WINDOW_MS) + tx_ms + rx_ms
    return _per_day(tx_ms * per_day, rx_ms * per_day, awake * per_day, power_dbm, mcu, radio, battery)


def _per_day(tx_ms: float, rx_ms: float, awake_ms: float, power_dbm: float, mcu: Mcu, radio: Radio, battery: Battery) -> Estimate:
    """From a day's ms on air, listening and with the MCU awake."""
    if tx_ms + rx_ms > DAY_MS or awake_ms > DAY_MS:
        raise ValueError(
            "a day holds %d ms: this node would be on air and listening %s ms of it, awake %s ms"
            % (DAY_MS, _num(tx_ms + rx_ms), _num(awake_ms))
        )
    _check(capacity_mah=battery.capacity_mah)
    if not 0 < battery.usable <= 1 or not 0 <= battery.self_discharge_per_year < 1:
        raise ValueError(
            "battery %r: usable share must be in (0, 1] and self-discharge a year in [0, 1), not %s and %s"
            % (battery.name, _num(battery.usable), _num(battery.self_discharge_per_year))
        )
    _check(mcu_sleep_ua=mcu.sleep_ua, mcu_active_ma=mcu.active_ma, radio_sleep_ua=radio.sleep_ua)
    # mA * ms a day, state by state; / DAY_MS gives mA, * 1000 µA
    scale = 1000.0 / DAY_MS
    tx_ua = tx_ms * radio.tx_current_ma(power_dbm) * scale
    rx_ua = rx_ms * radio.rx_ma * scale
    awake_ua = awake_ms * mcu.active_ma * scale
    sleep_ua = ((DAY_MS - awake_ms) * mcu.sleep_ua + (DAY_MS - tx_ms - rx_ms) * radio.sleep_ua) / DAY_MS
    self_discharge_ma = battery.capacity_mah * battery.self_discharge_per_year / (YEAR_DAYS * 24)
    drain_ma = (tx_ua + rx_ua + awake_ua + sleep_ua) / 1000.0 + self_discharge_ma
    days = battery.capacity_mah * battery.usable / drain_ma / 24 if drain_ma > 0 else math.inf
    return Estimate(tx_ua, rx_ua, awake_ua, sleep_ua, days)


def _check(**values: float) -> None:
    """Every value a finite number >= 0 (a capacity > 0); ValueError naming each that is not."""
    bad = [
        "%s %s" % (name, _num(value))
        for name, value in values.items()
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0 or (name == "capacity_mah" and value == 0)
    ]
    if bad:
        raise ValueError("energy model: needs finite numbers >= 0 (a battery capacity > 0), got %s" % ", ".join(bad))


def _num(value: object) -> str:
    return "%g" % value if isinstance(value, int | float) else repr(value)
