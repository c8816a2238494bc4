"""The golden vectors, on CPython and on the real MicroPython interpreter, plus independent checks."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import cbor2
import pytest

from protocols import cobs, messages
from protocols.frame import CRC_LEN, F_AUTH, HEADER_LEN
from tests.conftest import ROOT, run_micropython
from tests.portable.vector_runner import from_json, run_all, to_json

VECTORS_PATH = ROOT / "protocols" / "vectors" / "vectors.json"
VECTORS = json.loads(VECTORS_PATH.read_text())
FRAME_VECTORS = VECTORS["frames"]
CBOR_VECTORS = VECTORS["cbor"]
WINDOW_VECTORS = VECTORS["window"]


def check_frame_result(vector: dict[str, Any], result: dict[str, Any]) -> None:
    assert result["name"] == vector["name"]
    if "error" in vector:
        assert result.get("error") == vector["error"], vector.get("why")
        assert "message" not in result
    else:
        assert "error" not in result, result.get("error")
        assert result["message"] == vector["message"]
        if not vector.get("decode_only"):
            assert result["encoded"] == vector["hex"], "encoder output differs from the golden bytes"


def check_cbor_result(vector: dict[str, Any], result: dict[str, Any]) -> None:
    if "error" in vector:
        assert result.get("error") == vector["error"]
    elif vector.get("nan"):
        value = from_json(result["decoded"])
        assert value != value
    else:
        if not vector.get("decode_only"):
            assert result["encoded"] == vector["hex"]
        assert result["decoded"] == to_json(from_json(vector["value"]))


def check_window_result(vector: dict[str, Any], result: dict[str, Any]) -> None:
    assert result["classes"] == [step[1] for step in vector["steps"]], vector["why"]


def test_vectors_cover_every_message_type_and_error() -> None:
    from protocols import errors, messages

    decoded_types = {v["message"]["type"] for v in FRAME_VECTORS if "message" in v}
    assert decoded_types == set(messages.NAMES.values())
    error_reasons = {v["error"] for v in FRAME_VECTORS if "error" in v}
    # stale and unknown_node are session decisions, not decoding ones: no frame vector.
    assert error_reasons == set(errors.REASONS.values()) - {"stale", "unknown_node"}


CPYTHON_RESULTS = run_all(VECTORS)


@pytest.mark.parametrize("index", range(len(FRAME_VECTORS)), ids=[v["name"] for v in FRAME_VECTORS])
def test_frame_vector_cpython(index: int) -> None:
    check_frame_result(FRAME_VECTORS[index], CPYTHON_RESULTS["frames"][index])


@pytest.mark.parametrize("index", range(len(CBOR_VECTORS)), ids=[v["hex"][:24] for v in CBOR_VECTORS])
def test_cbor_vector_cpython(index: int) -> None:
    check_cbor_result(CBOR_VECTORS[index], CPYTHON_RESULTS["cbor"][index])


@pytest.mark.parametrize("index", range(len(WINDOW_VECTORS)), ids=[v["why"][:40] for v in WINDOW_VECTORS])
def test_window_vector_cpython(index: int) -> None:
    check_window_result(WINDOW_VECTORS[index], CPYTHON_RESULTS["window"][index])


@pytest.fixture(scope="module")
def micropython_results(micropython: str) -> dict[str, Any]:
    done = run_micropython(micropython, "tests/portable/vector_runner.py", str(ROOT), str(VECTORS_PATH))
    assert done.returncode == 0, done.stderr + done.stdout
    results: dict[str, Any] = json.loads(done.stdout)
    return results


@pytest.mark.micropython
@pytest.mark.parametrize("index", range(len(FRAME_VECTORS)), ids=[v["name"] for v in FRAME_VECTORS])
def test_frame_vector_micropython(index: int, micropython_results: dict[str, Any]) -> None:
    check_frame_result(FRAME_VECTORS[index], micropython_results["frames"][index])


@pytest.mark.micropython
@pytest.mark.parametrize("index", range(len(CBOR_VECTORS)), ids=[v["hex"][:24] for v in CBOR_VECTORS])
def test_cbor_vector_micropython(index: int, micropython_results: dict[str, Any]) -> None:
    check_cbor_result(CBOR_VECTORS[index], micropython_results["cbor"][index])


@pytest.mark.micropython
@pytest.mark.parametrize("index", range(len(WINDOW_VECTORS)), ids=[v["why"][:40] for v in WINDOW_VECTORS])
def test_window_vector_micropython(index: int, micropython_results: dict[str, Any]) -> None:
    check_window_result(WINDOW_VECTORS[index], micropython_results["window"][index])


@pytest.mark.parametrize("vector", [v for v in FRAME_VECTORS if "message" in v], ids=lambda v: v["name"])
def test_valid_vector_bytes_check_out_independently(vector: dict[str, Any]) -> None:
    """zlib's CRC and cbor2 agree with what the vector claims, without our decoder."""
    wire = bytes.fromhex(vector["hex"]).strip(b"\x00")
    raw = cobs.decode(wire)
    version, mtype, flags, node_id, counter = struct.unpack_from(">BBB8sI", raw)
    assert not flags & F_AUTH
    assert struct.unpack(">I", raw[-CRC_LEN:])[0] == zlib.crc32(raw[:-CRC_LEN])
    message = vector["message"]
    assert (version >> 4, mtype, flags, node_id.hex(), counter) == (
        1,
        {n: t for t, n in messages.NAMES.items()}[message["type"]],
        message["flags"],
        message["node_id"],
        message["counter"],
    )
    payload = raw[HEADER_LEN:-CRC_LEN]
    decoded = cbor2.loads(payload) if payload else {}
    assert isinstance(decoded, dict)
    if not vector.get("decode_only"):
        assert cbor2.dumps(decoded, canonical=True) == payload, "payload is not deterministic CBOR"


@pytest.mark.parametrize("vector", [v for v in CBOR_VECTORS if "value" in v], ids=lambda v: v["hex"][:24])
def test_cbor_vector_agrees_with_cbor2(vector: dict[str, Any]) -> None:
    value = from_json(vector["value"])
    if not vector.get("decode_only"):
        assert cbor2.dumps(value, canonical=True).hex() == vector["hex"]
    assert cbor2.loads(bytes.fromhex(vector["hex"])) == value
