"""The radio side of the protocol (SPEC.md §5.11): the channels and the class-A receive window that a LoRa
node, its bridge and the gateway agree on. Constants, and the one rule of chance built on two of them: the
firmware (firmware/radio_port.py, firmware/roles/bridge.py) and the gateway (gateway/air.py) import the same."""

from ._compat import const
from .airtime import symbol_us

UPLINK_CHANNELS = (868100000, 868300000, 868500000)  # sub-band h1.4, 1 %: nodes hop over them
DOWNLINK_FREQ = const(869525000)  # sub-band h1.6, 10 %: every node's second receive window
RX_DELAY_MS = const(1000)  # a node's first receive window opens this long after its uplink ended, on the uplink's channel
RX2_DELAY_MS = const(2000)  # and its second this long after it, on DOWNLINK_FREQ (another sub-band: its own duty cycle)
# ALOHA needs chance: after each time-off a node waits a random 0 .. max(CHANCE_MS, CHANCE_AIRTIMES x the frame's
# airtime) ms more, so that two frames that collided (time-offs that end together) meet again only by chance: a
# 7.4 s SF12 HELLO drawn within 4 s of another would collide with it after every time-off
CHANCE_MS = const(4096)
CHANCE_AIRTIMES = const(16)


def chance_ms(airtime_us: int) -> int:
    # The span of that random wait, in ms, after a frame of this airtime (firmware/radio_port.py, hil/swarm.py)
    return max(CHANCE_MS, CHANCE_AIRTIMES * airtime_us // 1000)


RX_WINDOW_MS = const(500)  # a downlink whose preamble is detected within this much of the opening is heard
# A receiver detects a LoRa preamble some symbols into it (SX1276 RegModemStat "signal detected", SX1262
# PreambleDetected), and a node keeps its window open once it has: its header's ValidHeader comes only after the
# preamble and the header, 20.25 symbols, at SF12 664 ms in, past the window. 6 symbols taken: Semtech's reference
# code waits 5-6 symbols to catch a preamble; the datasheets give no figure, so an assumption
DETECT_SYMBOLS = const(6)


def detect_ms(sf: int, bw: int = 125000) -> int:
    # How long a downlink must have been on air before a node's receiver has detected it, ms (rounded up)
    return (DETECT_SYMBOLS * symbol_us(sf, bw) + 999) // 1000


# A frame on air, at most: wrapped in a bridge's RADIO_RX (bw left out at 125 kHz, SNR in quarter dB as the
# chips give it) the bridge's tagged frame stays within 255 bytes, 3 to spare
MAX_RADIO_FRAME = const(204)
# From this SF up a node's HELLO offers no commands (SPEC.md 5.11): a 204-byte HELLO is 4.1 s on air at SF11 and
# 7.4 s at SF12 (then 7 and 12 minutes of time-off), and the longer a frame the likelier it meets another; without
# the offer a climate probe's is 125 bytes on air, 2.6 and 4.8 s
SHORT_HELLO_SF = const(11)
# The SNR a demodulator needs at SF7 ... SF12, in tenths of a dB (SX1276 datasheet: -7.5 ... -20 dB), for the
# link margin a gateway reports (a frame's SNR less its SF's floor) and the emulated medium (hil/radio.py)
SNR_FLOOR_DB10 = (-75, -100, -125, -150, -175, -200)
MARGIN_DB = const(10)  # the margin a link is advised to keep: the lowest SF that leaves this much is advised
# Link adaptation (SPEC.md 5.11, LoRaWAN's ADR the model): the gateway advises a node an SF and a TX power,
# the node applies them from its next uplink and falls back to its own when they stop working
SF_MIN = const(7)
SF_MAX = const(12)
MAX_POWER_DBM = const(14)  # EU868, 868.0-868.6 MHz: 25 mW ERP
MIN_POWER_DBM = const(2)  # the lowest power advised (an SX1276's PA_BOOST starts here)
POWER_STEP_DB = const(3)  # power is lowered in these steps: 14, 11, 8, 5, 2
ADR_FRAMES = const(10)  # the gateway keeps the best SNR of a node's last this many counters
ADR_FIRST = const(4)  # ... and decides once this many are known (after an advice: ADR_FRAMES at its settings)
ADR_SILENT = const(32)  # uplinks with nothing heard in their windows after which a node drops the advice
