"""The node roles (firmware/roles/) and their emulated worlds, on the real MicroPython VM.

The role checks run the roles in emulated time against the real emulations
(tests/portable/roles_check.py, judged here); the node tests run the whole
firmware with a role behind a pty, talking to the test's Peer.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
from typing import Any

import pytest

from gateway.fwtools import build, world
from gateway.fwtools.emulate import EmulatorError, write_node_json
from tests.conftest import ROOT

ROLES = ("streetlight", "gauge", "parking")
ROLE_CHECK = ROOT / "tests" / "portable" / "roles_check.py"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("bundle")
    build.build(out, emulator=True)
    return out


def role_check(micropython: str, bundle: pathlib.Path, folder: pathlib.Path, mode: str, *args: str) -> dict[str, Any]:
    return bundle_check(micropython, bundle, ROLE_CHECK, "512k", str(folder), mode, *args)


def bundle_check(micropython: str, bundle: pathlib.Path, script: pathlib.Path, heap: str, *args: str) -> dict[str, Any]:
    """A check script of tests/portable run on the MicroPython VM from the compiled bundle; its JSON answer."""
    pathlib.Path(args[0]).mkdir(exist_ok=True)  # the node's flash folder
    # From the compiled bundle, as a node runs; cwd there: MicroPython puts "" first on sys.path.
    done = subprocess.run(
        [micropython, "-X", "heapsize=%s" % heap, str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=bundle,
        env=dict(os.environ, MICROPYPATH=".frozen:%s" % bundle),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def test_streetlight_dims_fades_counts_hours_and_reports_a_failed_lamp_at_once(
    micropython: str, bundle: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = role_check(micropython, bundle, tmp_path, "streetlight")
    assert out["boot"] == [100, 600, 1, 0], "a new lamp starts at full: 60 W, alight, no hours"
    assert out["dim40"] == [0, None, 40] and out["after_dim40"][:3] == [40, 276, 1], "no fade: at once; 6 W + 54 W x 40 %"
    fade = out["fade"]
    assert out["dim80"] == [0, None, 80]
    assert fade == sorted(fade) and fade[0] == 40 and fade[-1] == 80, "the fade moves one way, to the level"
    reached = fade.index(80) * 20  # ms after the command, at 20 ms a poll
    assert 3900 <= reached <= 4100, "a 4 s fade takes 4 s, not %d ms" % reached
    assert out["after_fade"][:2] == [80, 492]
    assert out["hours_after_12s"] == 3, "12 s lit: 3 milli-hours"
    assert out["events_before_fault"] == [], "dimming is no event"
    assert out["fault_events"] == [[80, 0, 0, 3]], "one event: lamp_ok 0, no power drawn"
    assert out["fault_after_ms"] <= 500
    assert out["dim_failed"] == [3, "lamp failed", 60], "a dark lamp cannot be dimmed: failed, the level kept for a new lamp"
    assert out["hours_while_failed"] == 0
    assert out["repaired_events"] == [[60, 384, 1, 3]], "a replaced lamp is an event too, at the level kept"
    assert out["rebooted"] == [60, 384, 1, 3], "level and hours (save_s 5 here) survive a reboot"
    log = out["log"]
    assert [level for _, level in log][:2] == [100, 40] and log[-1][1] == 60
    assert [level for _, level in log][2:-1] == list(range(41, 81)), "the fade: one line per level, each level once"
    assert [ms for ms, _ in log] == sorted(ms for ms, _ in log)


def test_gauge_alarms_at_once_on_the_flood_mark_and_on_a_fast_rise_not_on_a_slow_one(
    micropython: str, bundle: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = role_check(micropython, bundle, tmp_path, "gauge")
    assert out["boot"][0] in range(399, 402) and out["boot"][2:] == [0, 0]
    slow = out["slow_rise"]
    assert slow[2:] == [0, 0] and 100 < slow[1] < 500, "300 mm/h is under the 600 mm/h default: no alarm, %r" % slow
    events = out["events"]  # [second, level, rate, flood, rise]
    assert [event[3:] for event in events] == [[0, 1], [1, 1], [1, 0], [0, 0]], events
    rise, flood, top, ebb = events
    assert 720 <= rise[0] <= 735, "the steep part starts at 720 s: rise alarm within seconds, not %d" % rise[0]
    # The profile of roles_check.py: the flood mark (1,500 mm) is reached at 1,170 s, the level is under the mark
    # less 50 mm at 1,951 s; the node reads every 0.5 s with +-1 mm of noise.
    up, down = world.crossings([(0, 400), (120, 400), (720, 450), (1320, 1850), (1620, 1850), (2820, 400)], 1500)
    assert (round(up[0]), up[1], round(down[0]), down[1]) == (1170, 1, 1951, 0)
    assert abs(flood[0] - up[0]) <= 1.5 and flood[1] >= 1500
    assert 7000 < flood[2] < 10000, "8,400 mm/h on the way up"
    assert 1380 <= top[0] <= 1400, "the rise alarm ends once the level stops rising"
    assert abs(ebb[0] - down[0]) <= 3 and ebb[1] < 1450 and ebb[2] < 0
    assert out["set"] == [0, None, None]
    assert [event[2] for event in out["after_set"]] == [1], "a mark set under the water is a flood at once"
    assert out["rebooted"] == [300], "the mark is kept on flash"


def test_parking_reports_every_arrival_and_departure_once_in_order_through_noise_and_wobble(
    micropython: str, bundle: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = role_check(micropython, bundle, tmp_path, "parking")
    assert [event[0] for event in out["events"]] == [1, 0, 1, 0, 1], "passing cars, noise and parking wobble: no extra events"
    expected = [60, 300, 310, 600, 900]  # arrivals and departures in cars.txt
    for when, then in zip(out["times"], expected, strict=True):
        assert then < when < then + 3, "changes seen within 3 s: %r" % out["times"]
    assert out["calibrate_occupied"][0] == 4, "no calibration with a car on the bay: busy"


def test_each_role_costs_the_heap_at_most_2_kb_more_than_the_sensor_nodes_sources(
    micropython: str, bundle: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """The ring is sized from the heap left after boot, about 300 bytes a frame: 2 KB is 7 frames of the 64 KB node's ring."""
    cost = {role: role_check(micropython, bundle, tmp_path / role, "heap:" + role)["bytes"] for role in ("sensor", *ROLES)}
    print("heap cost of the role's modules and objects (bytes): %s" % cost)
    for role in ROLES:
        assert cost[role] <= cost["sensor"] + 2048, "%s costs %d bytes, the sensor node's sources %d" % (role, cost[role], cost["sensor"])


def test_node_json_names_a_known_role(tmp_path: pathlib.Path) -> None:
    write_node_json(tmp_path, "gauge", {"save_s": 60})
    assert json.loads((tmp_path / "node.json").read_text()) == {"role": "gauge", "save_s": 60}
    with pytest.raises(EmulatorError, match="role 'lamp': not one of sensor, streetlight, gauge, parking"):
        write_node_json(tmp_path, "lamp")


def test_world_files_are_written_whole_and_read_back(tmp_path: pathlib.Path) -> None:
    world.set_water(tmp_path, world.flood_wave(1800000000, 400, 1900, 600, 1200))
    assert (tmp_path / "water.txt").read_text().splitlines() == ["1800000000.000 400.0", "1800000600.000 1900.0", "1800001800.000 400.0"]
    world.set_cars(tmp_path, [(1800000000, 1800000060.5), (1800000100, None)])
    assert (tmp_path / "cars.txt").read_text() == "1800000000.000 1800000060.500\n1800000100.000\n"
    world.fail_lamp(tmp_path)
    assert (tmp_path / "lamp.fault").exists()
    world.fail_lamp(tmp_path, failed=False)
    world.fail_lamp(tmp_path, failed=False)  # replacing a lamp twice is no error
    assert not (tmp_path / "lamp.fault").exists()
    assert world.lamp_levels(tmp_path) == []
    (tmp_path / "lamp.log").write_text("1800000000000 100\n1800000001000 40\n")
    assert world.lamp_levels(tmp_path) == [(1800000000000, 100), (1800000001000, 40)]
    assert not list(tmp_path.glob("*.tmp"))


def test_crossings_say_when_a_gauge_raises_and_ends_its_flood_alarm() -> None:
    wave = world.flood_wave(1000, 400, 1900, 600, 1200)
    assert world.crossings(wave, 1500) == [(1440.0, 1), (1960.0, 0)]  # down: under 1,450 mm, the mark less 50
    assert world.crossings(wave, 2000) == []
    ripple = [(0, 1400), (10, 1510), (20, 1460), (30, 1520), (40, 1400)]  # a dip above mark less 50 is no end
    assert [state for _, state in world.crossings(ripple, 1500)] == [1, 0]
