"""SPEC.md stays true to the code: its worked examples and its constants are checked here."""

from __future__ import annotations

import calendar
import json
import pathlib
import re
import shutil
import subprocess
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


C_WINDOW = re.search(r"```c\n(/\* Bit i of the window.*?)```", SPEC, re.S)
C_MAIN = r"""
#include <stdio.h>
int main(void) {  /* stdin: "R" starts a fresh window, "counter hello" is one step; prints each class */
    window_t s = {0}, fresh = {0};
    char word[24];
    unsigned long counter;
    int hello;
    while (scanf("%23s", word) == 1) {
        if (word[0] == 'R') { s = fresh; continue; }
        counter = strtoul(word, NULL, 10);
        if (scanf("%d", &hello) != 1) return 1;
        int verdict = window_check(&s, (uint32_t)counter);
        printf("%d\n", verdict);
        if (verdict == NEW) window_accept(&s, (uint32_t)counter);
        else if (verdict == STALE && hello) window_reset(&s, (uint32_t)counter);
    }
    return 0;
}
"""


@pytest.mark.processes
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_c_window_code_in_spec_agrees_with_the_window_vectors(tmp_path: pathlib.Path) -> None:
    """§4.3's C code, compiled as it stands, gives every class the window vectors expect."""
    assert C_WINDOW, "SPEC.md §4.3 has no C window code"
    source = tmp_path / "window.c"
    source.write_text("#include <stdint.h>\n#include <stdlib.h>\n" + C_WINDOW.group(1) + C_MAIN)
    binary = tmp_path / "window"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-o", str(binary), str(source)], check=True, capture_output=True, timeout=120)
    lines, expected = [], []
    for vector in json.loads((ROOT / "protocols" / "vectors" / "vectors.json").read_text())["window"]:
        lines.append("R")
        for step in vector["steps"]:
            lines.append("%d %d" % (step[0], len(step) > 2 and step[2] == "hello"))
            expected.append(step[1])
    done = subprocess.run([str(binary)], input="\n".join(lines), capture_output=True, text=True, check=True, timeout=60)
    names = ["new", "duplicate", "stale"]
    assert [names[int(word)] for word in done.stdout.split()] == expected
