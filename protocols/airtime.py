"""LoRa time on air (Semtech SX1276/77/78/79 datasheet §4.1.1.7, the LoRa Modem Designer's Guide AN1200.13).

    Tsym      = 2^SF / BW
    Tpreamble = (n_preamble + 4.25) * Tsym
    n_payload = 8 + max(ceil((8*PL - 4*SF + 28 + 16*CRC - 20*IH) / (4*(SF - 2*DE))) * (CR + 4), 0)
    Tpacket   = Tpreamble + n_payload * Tsym

PL: payload bytes (the radio's payload: for a bridged node, one edgegw frame, SPEC.md §5.11); SF 7-12;
BW 125, 250 or 500 kHz; CR 1-4 for coding rates 4/5-4/8; CRC 1 (the payload CRC on, as edgegw uses);
IH 0 (explicit header); DE 1 (low data rate optimisation) where a symbol lasts 16 ms or more, which
at 125 kHz is SF11 and SF12. Integer microseconds throughout: the same result on a node (MicroPython,
no float on some ports' hot paths) and at the gateway, and every value here is exact (a symbol at
125 kHz is 2^SF * 8 us). Checked against the designer's guide's worked values in tests/test_radio.py.
"""

from ._compat import const

PREAMBLE = const(8)  # symbols, as LoRaWAN's EU868 uses
_LDRO_SYMBOL_US = const(16384)  # a symbol this long or longer: low data rate optimisation on


def symbol_us(sf: int, bw: int = 125000) -> int:
    """One symbol: 2^SF / BW, in microseconds (exact for 125, 250 and 500 kHz)."""
    if not 6 <= sf <= 12 or bw not in (125000, 250000, 500000):
        raise ValueError("LoRa SF 6-12 at 125, 250 or 500 kHz, not SF%d at %d Hz" % (sf, bw))
    return (1 << sf) * (1000000 // bw)


def payload_symbols(length: int, sf: int, bw: int = 125000, cr: int = 1, crc: bool = True, explicit: bool = True) -> int:
    """Symbols after the preamble for a payload of `length` bytes."""
    de = 2 if symbol_us(sf, bw) >= _LDRO_SYMBOL_US else 0  # 2 * DE
    numerator = 8 * length - 4 * sf + 28 + (16 if crc else 0) - (0 if explicit else 20)
    denominator = 4 * (sf - de)
    blocks = -(-numerator // denominator) if numerator > 0 else 0  # ceil, and max(.., 0)
    return 8 + blocks * (cr + 4)


def airtime_us(length: int, sf: int, bw: int = 125000, cr: int = 1, preamble: int = PREAMBLE) -> int:
    """Time on air of one packet of `length` payload bytes, in microseconds (explicit header, CRC on)."""
    tsym = symbol_us(sf, bw)
    return (4 * preamble + 17) * tsym // 4 + payload_symbols(length, sf, bw, cr) * tsym
