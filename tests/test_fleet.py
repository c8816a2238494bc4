"""Issue 16: many gateways, one broker (hil/fleet.py). Gateway processes with backlogs, a real mosquitto
restarted while they drain: every gateway comes back, the jittered backoff spreads them, no reading lost.
The 50-gateway run is recorded in docs/OPERATIONS.md (python -m hil.fleet)."""

from __future__ import annotations

from pathlib import Path

from hil.fleet import run


def test_gateways_come_back_spread_after_a_broker_restart_and_lose_nothing(tmp_path: Path) -> None:
    result = run(tmp_path, gateways=6, rounds=300, down_s=4.0, reconnect_max=8)
    assert result.not_back == [] and len(result.reconnect_s) == 6
    assert result.lost == 0  # 6 x 1,200 readings, each delivered at least once
    assert max(result.reconnect_s) - min(result.reconnect_s) > 0.5  # not all at once: the backoff's jitter
    assert result.passed
