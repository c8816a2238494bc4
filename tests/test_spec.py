"""SPEC.md stays true to the code: its worked examples and its constants are checked here."""

from __future__ import annotations

import calendar
import json
import re
import zlib

import pytest

from protocols import errors, messages
from protocols import frame as fr
from tests.conftest import ROOT

SPEC = (ROOT / "protocols" / "SPEC.md").read_text()
VECTORS = {v["name"]: v for v in json.loads((ROOT / "protocols" / "vectors" / "vectors.json").read_text())["frames"]}
EXAMPLES = re.findall(r"<!-- vector: (\w+) -->\s*```\n(.*?)```", SPEC, re.S)


def test_spec_has_worked_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize(("name", "hex_text"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_worked_example_matches_golden_vector(name: str, hex_text: str) -> None:
    assert "".join(hex_text.split()) == VECTORS[name]["hex"]


def test_limits_in_spec_match_the_code() -> None:
    assert "| `MAX_FRAME` — decoded frame, header and trailer included | %d bytes |" % fr.MAX_FRAME in SPEC
    assert "| `MAX_PAYLOAD` — CBOR payload | %d bytes |" % fr.MAX_PAYLOAD in SPEC
    assert "| `MAX_ENCODED` — COBS-encoded frame, delimiter excluded | %d bytes |" % fr.MAX_ENCODED in SPEC
    assert fr.MAX_PAYLOAD == fr.MAX_FRAME - fr.HEADER_LEN - fr.CRC_LEN
    assert fr.cobs.max_encoded_len(fr.MAX_FRAME) == fr.MAX_ENCODED
    assert "| samples per READINGS frame | %d |" % messages.MAX_SAMPLES in SPEC
    assert "| channels per node | %d |" % messages.MAX_CHANNELS in SPEC
    assert "| counters per ACK | %d |" % messages.MAX_ACKS in SPEC


def test_error_table_matches_the_code() -> None:
    for code, reason in errors.REASONS.items():
        assert re.search(r"^\| %d \| `%s` \|" % (code, reason), SPEC, re.M), reason


def test_message_type_table_matches_the_code() -> None:
    for mtype, name in messages.NAMES.items():
        assert "| `0x%02X` | %s |" % (mtype, name) in SPEC, name


def test_schema_tables_match_the_code() -> None:
    """Every (key, name) pair of every schema appears in that message's table."""
    for mtype, schema in messages.SCHEMAS.items():
        for key, name, _kind, required in messages.schema_rows(schema):
            row = re.search(r"^\| %d \| `%s` \| [^|]+ \| (yes|no) \|" % (key, name), SPEC, re.M)
            assert row, "%s.%s" % (messages.NAMES[mtype], name)
            assert (row.group(1) == "yes") == required, "%s.%s required" % (messages.NAMES[mtype], name)


def test_crc_check_value_and_epoch_offset() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert "`0xCBF43926`" in SPEC
    assert calendar.timegm((2000, 1, 1, 0, 0, 0)) == messages.EPOCH_2000_OFFSET
    assert "**%d**" % messages.EPOCH_2000_OFFSET in SPEC
