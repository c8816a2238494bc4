"""The authenticated variant (SPEC.md §3.4): the tag against CPython's hmac, on both interpreters, and frames
with a tag that is wrong, missing, flipped or cut short, each refused with `auth`."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import auth
from protocols import errors as perr
from protocols.errors import ProtocolError
from protocols.frame import AUTH_TAG_LEN, F_AUTH, HEADER_LEN, MAX_FRAME, Frame, pack, unpack
from tests.conftest import run_micropython
from tests.portable import auth_check

KEY = bytes(range(32))
NODE = auth_check.NODE


def reference(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:AUTH_TAG_LEN]


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=600))
def test_the_tag_is_hmac_sha256_cut_to_8_bytes(key: bytes, data: bytes) -> None:
    assert auth.tag(key, data) == reference(key, data)
    assert auth.rfc2104(key, data) == hmac.new(key, data, hashlib.sha256).digest()  # what a node computes


def test_the_vector_in_the_spec() -> None:
    """SPEC.md §3.4 prints this one, so an implementer can check theirs without running ours."""
    assert auth.tag(KEY, b"edgegw").hex() == reference(KEY, b"edgegw").hex() == "e37c0f35d7cc8241"


def test_a_key_is_32_bytes_and_tags_compare_whole() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        auth.tag(KEY[:16], b"x")
    assert auth.same(b"12345678", b"12345678")
    assert not auth.same(b"12345678", b"12345670") and not auth.same(b"12345678", b"1234567")


def keys(node_id: bytes) -> bytes | None:
    return KEY if node_id == NODE else None


def test_an_authenticated_frame_round_trip_and_its_room() -> None:
    frame = Frame(0x07, NODE, 41, b"\xa0" * (MAX_FRAME - HEADER_LEN - AUTH_TAG_LEN), F_AUTH)
    raw = bytes(pack(frame, KEY))
    assert len(raw) == MAX_FRAME and raw[-AUTH_TAG_LEN:] == reference(KEY, raw[:-AUTH_TAG_LEN])
    back = unpack(raw, keys)
    assert (back.type, back.counter, back.flags, back.payload) == (0x07, 41, F_AUTH, frame.payload)
    with pytest.raises(ProtocolError) as too_long:
        pack(Frame(0x07, NODE, 41, frame.payload + b"\xa0", F_AUTH), KEY)
    assert too_long.value.code == perr.E_TOO_LONG, "the tag takes 4 bytes more than a CRC"
    with pytest.raises(ProtocolError) as no_key:
        pack(frame)
    assert no_key.value.code == perr.E_AUTH


@given(st.integers(min_value=0, max_value=8 * 40 - 1))
def test_every_flipped_bit_is_refused(bit: int) -> None:
    """Header, payload or tag: no single flipped bit is accepted (AUTH cleared: the tag's tail is no CRC)."""
    raw = bytearray(pack(Frame(0x07, NODE, 41, b"\xa1\x00\x18\x28" + bytes(18), F_AUTH), KEY))
    raw[bit // 8] ^= 1 << bit % 8
    with pytest.raises(ProtocolError):
        unpack(bytes(raw), keys)


def test_no_key_a_wrong_key_and_a_frame_too_short_for_its_tag() -> None:
    raw = bytes(pack(Frame(0x07, NODE, 41, b"\xa0", F_AUTH), KEY))
    for key_of in (None, lambda node_id: None, lambda node_id: bytes(32)):
        with pytest.raises(ProtocolError) as refused:
            unpack(raw, key_of)
        assert refused.value.code == perr.E_AUTH
    with pytest.raises(ProtocolError) as short:
        unpack(raw[: HEADER_LEN + 5], keys)
    assert short.value.code == perr.E_AUTH


def test_the_same_tags_and_frames_on_micropython(micropython: str) -> None:
    expected = json.loads(json.dumps(auth_check.run()))
    assert [line[1] for line in expected[-4:]] == [perr.E_AUTH] * 4, "every forgery refused, with auth"
    assert [line[1] for line in expected[:4]] == [reference(key, data).hex() for key, data in auth_check.CASES]
    done = run_micropython(micropython, "tests/portable/auth_check.py")
    assert done.returncode == 0, done.stderr + done.stdout
    assert [json.loads(line) for line in done.stdout.splitlines()] == expected
