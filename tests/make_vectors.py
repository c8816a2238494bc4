"""Writes protocols/vectors/vectors.json, the golden vectors (run: python tests/make_vectors.py).

Run it only when the protocol changes on purpose; tests/test_vectors.py then
holds both interpreters to the file. Every frame vector's bytes are re-checked
there with zlib.crc32 and cbor2, independently of this generator.
"""

import json
import pathlib
import struct
import sys
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocols import Message, cbor, cobs, encode, messages  # noqa: E402
from protocols import frame as fr  # noqa: E402
from tests.portable.vector_runner import message_to_json, to_json  # noqa: E402

NODE = bytes.fromhex("0000a4cf12b3c4d5")  # an ESP32 MAC, left-padded
BRIDGE = bytes.fromhex("e66038b7134f2a21")  # an RP2040 flash id
UP = fr.F_ACK_REQ
DOWN = fr.F_DOWNLINK

VALID = [
    (
        "hello",
        Message(
            messages.HELLO,
            NODE,
            1,
            {
                "proto": [1, 0],
                "fw_version": "0.1.0",
                "hw_model": "esp32-devkitc",
                "caps": 0x0F,
                "interval": 10,
                "channels": [
                    {"name": "temperature", "unit": "Cel", "scale": -2},
                    {"name": "humidity", "unit": "%RH", "scale": -1},
                    {"name": "counter", "unit": "", "scale": 0},
                ],
            },
            UP,
        ),
    ),
    (
        "readings",
        Message(
            messages.READINGS,
            NODE,
            2,
            {"base_time": 1795000000, "samples": [0, 2137, 0, 1, 553, 0, 2, 1, 0, 0, 2141, 10, 1, 551, 10, 2, 2, 10]},
            UP,
        ),
    ),
    ("readings_float_and_no_time", Message(messages.READINGS, NODE, 3, {"samples": [0, 21.5, 0, 1, -0.25, 0.5]}, UP | fr.F_RETRY)),
    ("ack", Message(messages.ACK, NODE, 7, {"counters": [2, 3]}, DOWN)),
    ("time", Message(messages.TIME, NODE, 8, {"unix": 1795000000, "ms": 250}, DOWN)),
    ("time_request", Message(messages.TIME, NODE, 4, {}, 0)),
    (
        "status",
        Message(
            messages.STATUS,
            NODE,
            5,
            {
                "uptime": 3600,
                "free_heap": 41234,
                "reset_cause": messages.RESET_WATCHDOG,
                "battery_mv": 3712,
                "rssi": -67,
                "snr": 7.5,
                "dropped": 0,
                "retransmits": 3,
                "rx_errors": 1,
                "heap_peak": 22016,
            },
            UP,
        ),
    ),
    (
        # a radio node's (SPEC.md 5.7): its `air` keys numbered, tx 0, tx_ms 1, rx 2, rx_ms 3, dropped 4, sf 5, power 6,
        # fallback 7; a bridge's are names
        "status_radio_node",
        Message(
            messages.STATUS,
            NODE,
            15,
            {"uptime": 1800, "reset_cause": 1, "air": {0: 7, 1: 26624, 2: 3, 3: 41000, 4: 0, 5: 12, 6: 14, 7: 0}},
            UP,
        ),
    ),
    ("config_set", Message(messages.CONFIG, NODE, 9, {"op": messages.CONFIG_SET, "values": {"interval": 30}}, DOWN | fr.F_ACK_REQ)),
    ("config_get", Message(messages.CONFIG, NODE, 10, {"op": messages.CONFIG_GET, "keys": ["interval"]}, DOWN)),
    (
        "config_report",
        Message(
            messages.CONFIG, NODE, 6, {"op": messages.CONFIG_REPORT, "values": {"interval": 30}, "errors": {"colour": "unknown key"}}, UP
        ),
    ),
    ("command", Message(messages.COMMAND, NODE, 11, {"id": 4711, "action": "dim", "args": {"level": 40}}, DOWN | fr.F_ACK_REQ)),
    ("command_result", Message(messages.COMMAND_RESULT, NODE, 12, {"id": 4711, "outcome": messages.OUTCOME_OK, "value": 40}, UP)),
    ("log", Message(messages.LOG, NODE, 13, {"severity": 4, "text": "bme280: no ack on i2c, retrying"}, UP)),
    (
        "hello_channel_name_characters",
        Message(
            messages.HELLO,
            NODE,
            17,
            {"proto": [1, 0], "fw_version": "1", "hw_model": "x", "caps": 1, "channels": [{"name": "Aa0-._z9Z", "unit": "", "scale": 0}]},
            UP,
        ),
    ),
    (
        "radio_rx",
        Message(
            messages.RADIO_RX,
            BRIDGE,
            14,
            {
                "frame": bytes.fromhex("1002027011223344556677000000010102030405"),
                "rssi": -112,
                "snr": -7.25,
                "freq": 868100000,
                "sf": 9,
                "bw": 125000,
            },
            UP,
        ),
    ),
    (
        "radio_tx",
        Message(
            messages.RADIO_TX,
            BRIDGE,
            15,
            {"frame": bytes.fromhex("1003017011223344556677000000020a0b0c0d"), "freq": 869525000, "sf": 12, "power": 14, "delay_ms": 1000},
            DOWN,
        ),
    ),
    (
        "readings_extreme_values",
        Message(
            messages.READINGS,
            NODE,
            17,
            {"base_time": messages.MAX_TIME, "samples": [0, -(2**64), messages.MIN_OFFSET, 31, 2**64 - 1, messages.MAX_OFFSET]},
            UP,
        ),
    ),
    ("readings_earliest_time", Message(messages.READINGS, NODE, 72, {"base_time": messages.MIN_TIME, "samples": [0, 1, 0]}, UP)),
    ("time_extreme_values", Message(messages.TIME, NODE, 18, {"unix": messages.MAX_TIME, "ms": messages.MAX_MS}, DOWN)),
    # Depth (SPEC.md §5.1): payload map 1, args map 2, list 3 ... list 7, the scalar in it 8.
    ("depth_8_scalar", Message(messages.COMMAND, NODE, 19, {"id": 1, "action": "x", "args": {"a": [[[[[1]]]]]}}, DOWN | fr.F_ACK_REQ)),
    (
        "depth_8_empty_array",
        Message(messages.COMMAND, NODE, 20, {"id": 2, "action": "x", "args": {"a": [[[[[[]]]]]]}}, DOWN | fr.F_ACK_REQ),
    ),
    (
        "reject",
        Message(messages.REJECT, NODE, 16, {"reason": 5, "detail": "major version 2, this side speaks 1", "counter": 99, "type": 2}, DOWN),
    ),
]


for _name, _message in VALID:
    _message.version = 0x10  # the 1.0 vectors keep their bytes (SPEC.md §7: 1.1 only adds)

# 1.1 (SPEC.md §3.3, §5.3, §5.8, §5.9): made with version 0x11.
VALID_1_1 = [
    (
        "readings_priority_event",
        Message(messages.READINGS, NODE, 80, {"base_time": 1795000123, "samples": [3, 1, 0, 4, 1840, 0]}, UP | fr.F_PRIORITY),
    ),
    (
        "hello_with_commands",
        Message(
            messages.HELLO,
            NODE,
            81,
            {
                "proto": [1, 1],
                "fw_version": "0.2.0",
                "hw_model": "esp32-devkitc",
                "caps": 0x0F,
                "channels": [{"name": "level", "unit": "%", "scale": 0}, {"name": "power", "unit": "W", "scale": -1}],
                "interval": 60,
                "commands": {"dim": "level u0-100! fade_s u0-600", "reboot": "", "sample_now": "", "set_interval": "s n1-86400!"},
            },
            UP,
        ),
    ),
    (
        "config_set_with_id",
        Message(messages.CONFIG, NODE, 65600, {"op": messages.CONFIG_SET, "values": {"interval": 30}, "id": 7}, DOWN | fr.F_ACK_REQ),
    ),
    (
        "config_report_with_id",
        Message(messages.CONFIG, NODE, 82, {"op": messages.CONFIG_REPORT, "values": {"interval": 30, "status_interval": 60}, "id": 7}, UP),
    ),
    (
        "command_dim",
        Message(messages.COMMAND, NODE, 65601, {"id": 8, "action": "dim", "args": {"level": 40, "fade_s": 5}}, DOWN | fr.F_ACK_REQ),
    ),
    ("command_result_ok", Message(messages.COMMAND_RESULT, NODE, 83, {"id": 8, "outcome": messages.OUTCOME_OK, "value": 40}, UP)),
    (
        "command_result_bad_args",
        Message(
            messages.COMMAND_RESULT,
            NODE,
            84,
            {"id": 9, "outcome": messages.OUTCOME_BAD_ARGS, "detail": "dim.level 140 is outside 0-100"},
            UP,
        ),
    ),
    ("reject_stale_from_node", Message(messages.REJECT, NODE, 85, {"reason": 11, "counter": 12, "type": messages.COMMAND}, 0)),
]


def wire(raw: bytes) -> str:
    return (cobs.encode(raw) + b"\x00").hex()


def with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def header(mtype: int, counter: int, flags: int = UP, version: int = 0x10, node: bytes = NODE) -> bytes:
    return struct.pack(">BBB8sI", version, mtype, flags, node, counter)


def framed(mtype: int, counter: int, payload_hex: str, flags: int = UP, version: int = 0x10) -> str:
    """A well-framed frame with a correct CRC around a (possibly bad) payload."""
    return wire(with_crc(header(mtype, counter, flags, version) + bytes.fromhex(payload_hex)))


def hello_payload(names: list) -> str:
    """A HELLO payload whose channels have these names, as hex."""
    return cbor.dumps({0: [1, 0], 1: "1", 2: "x", 3: 1, 4: [{0: name, 1: ""} for name in names]}).hex()


def error_vectors() -> list[dict]:
    good = fr.pack(fr.Frame(messages.LOG, NODE, 20, cbor.dumps({0: 6, 1: "ok"}), UP, 0x10))
    flipped = bytearray(good)
    flipped[17] ^= 0x01
    rows = [
        ("error_crc", "one payload bit flipped, CRC unchanged", wire(bytes(flipped)), "crc"),
        ("error_too_short", "10 bytes cannot hold header and CRC", wire(bytes(range(1, 11))), "too_short"),
        ("error_too_long", "256 decoded bytes", framed(messages.LOG, 21, "00" * 237), "too_long"),
        ("error_cobs", "code byte 0x09 with only 3 bytes left", "0901020300", "cobs"),
        ("error_version", "major version 2 with a valid CRC", framed(messages.LOG, 22, "a0", version=0x20), "version"),
        ("error_type", "type 0x7f is not defined in 1.x", framed(0x7F, 23, "a0"), "type"),
        ("error_auth", "F_AUTH set, no key", wire(header(messages.LOG, 24, flags=fr.F_AUTH) + b"\xa0" + bytes(8)), "auth"),
        ("error_auth_short", "F_AUTH set, 19 bytes: no room for a tag", wire(header(messages.LOG, 73, flags=fr.F_AUTH) + bytes(4)), "auth"),
        ("error_cbor_truncated", "map of 2 pairs with one present", framed(messages.LOG, 25, "a20004"), "cbor"),
        ("error_cbor_trailing", "bytes after the payload map", framed(messages.LOG, 26, "a0a0"), "cbor"),
        ("error_cbor_indefinite", "indefinite-length map", framed(messages.LOG, 27, "bf0004ff"), "cbor"),
        ("error_cbor_tag", "tag 1 (epoch time) is not accepted", framed(messages.READINGS, 28, "a200c11a6afd0a800180"), "cbor"),
        ("error_cbor_huge_count", "array claims 2**32-1 items", framed(messages.ACK, 29, "a1009affffffff", flags=DOWN), "cbor"),
        (
            "error_limit_depth",
            "nesting deeper than 8",
            framed(messages.COMMAND, 30, "a3000101617802a16161818181818181818101", DOWN),
            "limit",
        ),
        ("error_schema_missing", "READINGS without samples", framed(messages.READINGS, 31, "a1001a6afd0a80"), "schema"),
        ("error_schema_triples", "4 sample items: not a multiple of 3", framed(messages.READINGS, 32, "a1018400010200"), "schema"),
        ("error_schema_type", "LOG.text is a number", framed(messages.LOG, 33, "a2000401182a"), "schema"),
        ("error_type_zero", "type 0x00 is never defined", framed(0x00, 34, "a0"), "type"),
        ("error_too_long_encoded", "258 bytes without a delimiter", "01" * 258 + "00", "too_long"),
        ("error_cbor_duplicate_key", "key 0 twice, as 00 and as 18 00", framed(messages.LOG, 35, "a300060161781800 06"), "cbor"),
        ("error_cbor_overlong_utf8", "LOG text c0 80: an overlong NUL", framed(messages.LOG, 36, "a200060162c080"), "cbor"),
        ("error_cbor_surrogate", "LOG text ed a0 80: the surrogate U+D800", framed(messages.LOG, 37, "a200060163eda080"), "cbor"),
        (
            "error_limit_scalar_depth_9",
            "the scalar in a sixth nested list is at depth 9",
            framed(messages.COMMAND, 38, "a3 0002 016178 02a16161 818181818181 01", DOWN | fr.F_ACK_REQ),
            "limit",
        ),
        (
            "error_limit_key_depth_9",
            "a map at depth 8 with one entry: its key is at depth 9",
            framed(messages.COMMAND, 39, "a3 0002 016178 02a16161 8181818181 a1616b01", DOWN | fr.F_ACK_REQ),
            "limit",
        ),
        ("error_schema_not_a_map", "the payload is an array", framed(messages.LOG, 50, "820661 78"), "schema"),
        ("error_schema_float_for_uint", "LOG.severity is 4.0, a float", framed(messages.LOG, 51, "a200f944000161 78"), "schema"),
        ("error_schema_bool_for_number", "a sample value true", framed(messages.READINGS, 52, "a1018300f500"), "schema"),
        (
            "error_schema_null_for_optional",
            "base_time null is not an absent base_time",
            framed(messages.READINGS, 53, "a200f60180"),
            "schema",
        ),
        ("error_schema_base_time_negative", "base_time -1", framed(messages.READINGS, 54, "a200200180"), "schema"),
        ("error_schema_base_time_nan", "base_time NaN", framed(messages.READINGS, 55, "a200f97e000180"), "schema"),
        ("error_schema_base_time_u32", "base_time 2^32", framed(messages.READINGS, 56, "a2001b00000001000000000180"), "schema"),
        ("error_schema_offset_i32", "dt 2^31", framed(messages.READINGS, 57, "a1018300011a80000000"), "schema"),
        (
            "error_schema_base_time_relative",
            "base_time 5 < 2^28: relative in SenML",
            framed(messages.READINGS, 70, "a20005018300010a"),
            "schema",
        ),
        ("error_schema_sample_time_relative", "base_time 2^28, dt -1", framed(messages.READINGS, 71, "a2001a100000000183000120"), "schema"),
        ("error_schema_value_nan", "a sample value NaN", framed(messages.READINGS, 65, "a1018300f97e0000"), "schema"),
        ("error_schema_value_infinite", "a sample value -infinity", framed(messages.READINGS, 66, "a1018300f9fc0000"), "schema"),
        ("error_schema_time_ms", "TIME ms 1000", framed(messages.TIME, 58, "a2001a6afd86c0011903e8", DOWN), "schema"),
        ("error_schema_time_unix", "TIME unix 2^32", framed(messages.TIME, 59, "a1001b0000000100000000", DOWN), "schema"),
        (
            "error_schema_range_severity",
            "LOG.severity 8: syslog ends at 7",
            framed(messages.LOG, 60, cbor.dumps({0: 8, 1: "x"}).hex()),
            "schema",
        ),
        (
            "error_schema_range_sf",
            "RADIO_RX.sf 13: spreading factors are 7 to 12",
            framed(messages.RADIO_RX, 61, cbor.dumps({0: b"", 1: -80, 2: 1.0, 3: 868100000, 4: 13}).hex()),
            "schema",
        ),
        ("error_schema_channel_slash", "channel name with '/'", framed(messages.HELLO, 62, hello_payload(["ok", "a/b"])), "schema"),
        ("error_schema_channel_empty", "empty channel name", framed(messages.HELLO, 63, hello_payload([""])), "schema"),
        ("error_schema_channel_twice", "two channels named alike", framed(messages.HELLO, 64, hello_payload(["t", "t"])), "schema"),
        ("error_schema_config_keys", "CONFIG get keys [1]: keys are text", framed(messages.CONFIG, 67, "a20000028101", DOWN), "schema"),
        ("error_schema_config_error_key", "CONFIG errors {1: 'y'}", framed(messages.CONFIG, 68, "a2000203a1016179"), "schema"),
        ("error_schema_config_error_text", "CONFIG errors {'k': 1}", framed(messages.CONFIG, 69, "a2000203a1616b01"), "schema"),
    ]
    return [{"name": name, "why": why, "hex": hex_text, "error": reason} for name, why, hex_text, reason in rows]


def decode_only_vectors() -> list[dict]:
    """Accepted input that the encoder never produces: forward-compatible extensions."""
    rows = [
        ("unknown_key_ignored", "key 24 is unknown to 1.0 and ignored", framed(messages.LOG, 40, "a30006016268691818646b6e6577")),
        ("minor_version_accepted", "version 1.3 is read as 1.x", framed(messages.LOG, 41, "a200060162686a", version=0x13)),
        ("leading_delimiters", "empty frames before a frame are skipped", "0000" + framed(messages.LOG, 42, "a200060162686b")),
        ("empty_payload", "n = 0 is the empty map: a TIME request", framed(messages.TIME, 43, "", flags=0)),
        ("non_shortest_integer", "severity 6 as 18 06", framed(messages.LOG, 44, "a20018060161 78")),
        (
            "non_shortest_floats",
            "value 21.5 as a double, dt 0.5 as a single",
            framed(messages.READINGS, 45, "a1018300fb4035800000000000fa3f000000"),
        ),
        ("keys_in_any_order", "key 1 before key 0", framed(messages.LOG, 46, "a2016178 0006")),
        (
            "unknown_keys_of_any_kind",
            "keys -1, 'foo' and 100 are ignored with their values",
            framed(messages.LOG, 47, "a500060161782001 63666f6ff5 1864a1616182 0102"),
        ),
        ("reserved_flags_ignored", "flag bits 3-6 set", framed(messages.LOG, 48, "a20006016178", flags=0x7A)),
    ]
    return [{"name": name, "why": why, "hex": hex_text} for name, why, hex_text in rows]


# Counter windows (SPEC.md §4.3): [counter, class] steps, "hello" for a HELLO frame. Each NEW counter is
# accepted; a HELLO whose counter is STALE resets the window. The first step starts from the initial state.
WINDOWS = [
    (
        "a fresh window calls any counter new, and H < 256 needs no wrap-around",
        [
            [5, "new"],
            [5, "duplicate"],
            [0, "new"],
            [0, "duplicate"],
            [4, "new"],
            [300, "new"],
            [45, "new"],
            [44, "stale"],
            [45, "duplicate"],
        ],
    ),
    ("counter 0 first", [[0, "new"], [255, "new"], [0, "duplicate"], [256, "new"], [0, "stale"], [1, "new"], [1, "duplicate"]]),
    ("a jump of 256 or more forgets the bitmap", [[10, "new"], [11, "new"], [267, "new"], [11, "stale"], [12, "new"], [266, "new"]]),
    ("the top of the u32 range", [[0xFFFFFFFF, "new"], [0xFFFFFFFF, "duplicate"], [0xFFFFFF00, "new"], [0xFFFFFEFF, "stale"]]),
    ("a shift of 255 keeps the oldest bit", [[0, "new"], [255, "new"], [0, "duplicate"], [1, "new"], [256, "new"], [1, "duplicate"]]),
    (
        "a HELLO with a stale counter resets the window",
        [[1000, "new"], [3, "stale"], [3, "stale", "hello"], [3, "duplicate"], [4, "new"], [999, "new"], [1000, "new"]],
    ),
]


def main() -> None:
    from protocols import StreamDecoder

    frames = []
    for name, message in VALID + VALID_1_1:
        frames.append({"name": name, "hex": encode(message).hex(), "message": message_to_json(message)})
    frames += error_vectors()
    for vector in decode_only_vectors():
        decoder = StreamDecoder()
        decoder.feed(bytes.fromhex(vector["hex"]))
        vector["message"] = message_to_json(decoder.next_message())
        vector["decode_only"] = True
        frames.append(vector)
    values = [
        0,
        1,
        10,
        23,
        24,
        25,
        100,
        1000,
        1000000,
        1000000000000,
        18446744073709551615,
        -1,
        -10,
        -100,
        -1000,
        -18446744073709551616,
        0.0,
        -0.0,
        1.0,
        1.1,
        1.5,
        65504.0,
        100000.0,
        3.4028234663852886e38,
        1.0e300,
        5.960464477539063e-8,
        0.00006103515625,
        -4.0,
        -4.1,
        float("inf"),
        float("-inf"),
        False,
        True,
        None,
        b"",
        bytes.fromhex("01020304"),
        "",
        "a",
        "IETF",
        '"\\',
        "\u00fc",
        "\u6c34",
        [],
        [1, 2, 3],
        [1, [2, 3], [4, 5]],
        list(range(1, 26)),
        {},
        {1: 2, 3: 4},
        {"a": 1, "b": [2, 3]},
        ["a", {"b": "c"}],
        {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
        {"b": 1, 10: 2, "a": 3, -1: 4},
        {24: 1, -1: 2},
    ]
    cbor_vectors: list[dict] = []
    for value in values:
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            cbor_vectors.append({"hex": cbor.dumps(value).hex(), "value": {"$float": repr(value)}})
        else:
            cbor_vectors.append({"hex": cbor.dumps(value).hex(), "value": to_json(value)})
    cbor_vectors.append({"hex": "f97e00", "nan": True})
    cbor_vectors.append({"hex": "8181818181818180", "value": [[[[[[[[]]]]]]]]})  # an empty array at depth 8
    # Accepted, never produced: non-shortest integers and floats, other NaNs, keys out of order.
    for hex_text, value in (
        ("1801", 1),
        ("1b0000000000000001", 1),
        ("3800", -1),
        ("fa3fc00000", 1.5),
        ("fb3ff8000000000000", 1.5),
        ("a2030401 02", {3: 4, 1: 2}),
        ("780161", "a"),
    ):
        cbor_vectors.append({"hex": hex_text, "value": to_json(value), "decode_only": True})
    for hex_text in ("fa7fc00000", "fb7ff8000000000000", "f97e01"):
        cbor_vectors.append({"hex": hex_text, "nan": True, "decode_only": True})
    for deep in ("818181818181818101", "818181818181818180", "81818181818181a10000"):
        cbor_vectors.append({"hex": deep, "error": "limit"})
    for bad in (
        "1c",
        "5f4101ff",
        "a1010101",
        "a20101",
        "c074323031332d30332d32315432303a30343a30305a",
        "f7",
        "f820",
        "62c328",
        "a1f401",
        "a201010102",
        "9b00000000ffffffff",
        "62c080",
        "63eda080",
        "64f4908080",
        "a1f93c0000",
    ):
        cbor_vectors.append({"hex": bad, "error": "cbor"})
    document = {
        "comment": "Golden vectors for the edgegw wire protocol 1.0; see protocols/SPEC.md. Generated by tests/make_vectors.py.",
        "frames": frames,
        "cbor": cbor_vectors,
        "window": [{"why": why, "steps": steps} for why, steps in WINDOWS],
    }
    path = ROOT / "protocols" / "vectors" / "vectors.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    print("wrote %d frame and %d CBOR vectors to %s" % (len(frames), len(cbor_vectors), path))


if __name__ == "__main__":
    main()
