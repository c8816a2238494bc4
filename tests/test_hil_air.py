"""City scenarios on the air, without processes: the [air] table, where the rig installs the nodes, what its tap reads
and what the report makes of the air (hil/timeline.py, hil/radio_rig.py, hil/air_report.py). The scenarios themselves
run end to end in tests/test_hil_radio_e2e.py."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hil.air_record import DEAF, AirRecord
from hil.air_report import AirOutcome, _battery_years, analyse_air, duty_breaches, hourly_breaches, unestimated
from hil.energy import estimate_from_report
from hil.radio import DELIVERED, SENSITIVITY_DBM, Medium, PathLoss, Reception, Transmission
from hil.radio_rig import INSTALL_MARGIN_DB, RadioRig
from hil.scenario import ScenarioError, parse_scenario
from protocols import Message, cobs, encode, messages
from protocols import frame as fr

AIR = {"bridges": [{"x": 0, "y": 0, "sf": 9}, {"x": 500, "y": 0, "sf": 10, "freq": 868300000}], "boot_spread_s": 30}
ROLES = [
    {"role": "lora_sensor", "count": 4, "sf": [9, 10], "distance_m": [300, 2500], "interval": 900},
    {"role": "streetlight", "count": 2, "sf": 9},
]


def scenario(air: Any = AIR, roles: Any = ROLES, **more: Any) -> Any:
    return parse_scenario({"name": "t", "duration": 60, "air": air, "roles": roles, **more})


def test_an_air_table_puts_the_roles_on_the_air_behind_its_bridges() -> None:
    parsed = scenario()
    assert parsed.air is not None and parsed.air.boot_spread_s == 30
    assert [(b.x, b.y, b.sf, b.freq) for b in parsed.air.bridges] == [(0, 0, 9, 868100000), (500, 0, 10, 868300000)]
    assert parsed.roles[0].sf == (9, 10) and parsed.roles[0].distance_m == (300, 2500)
    assert parsed.roles[1].sf == (9,) and parsed.roles[1].distance_m == (200.0, 1500.0)
    assert parse_scenario({"name": "t", "roles": [{"role": "gauge", "count": 1}]}).air is None


@pytest.mark.parametrize(
    ("air", "roles", "message"),
    [
        ({}, ROLES, "air: 'bridges' must list at least one bridge"),
        ({"bridges": [{"x": 0}]}, ROLES, "air: bridges #1: needs 'x' and 'y' (metres)"),
        ({"bridges": [{"x": 0, "y": 0, "sf": 13}]}, ROLES, "air: bridges #1: 'sf' must be 7..12, not 13"),
        ({"bridges": [{"x": 0, "y": 0, "freq": 869525000}]}, ROLES, "air: bridges #1: 'freq' must be an uplink channel"),
        ({"bridges": [{"x": 0, "y": 0, "power": 14}]}, ROLES, "air: bridges #1: unknown key 'power'"),
        ({**AIR, "boot_spread_s": -1}, ROLES, "air: 'boot_spread_s' must be 0 or more seconds, not -1"),
        (AIR, [{"role": "gauge", "count": 1, "sf": 6}], "roles #1: 'sf' must be a spreading factor 7..12"),
        (AIR, [{"role": "gauge", "count": 1, "sf": [7, True]}], "roles #1: 'sf' must be a spreading factor 7..12"),
        (AIR, [{"role": "gauge", "count": 1, "distance_m": [500, 100]}], "roles #1: 'distance_m' must be [near, far] in metres"),
        (AIR, [{"role": "gauge", "count": 1, "distance_m": [0, 100]}], "roles #1: 'distance_m' must be [near, far] in metres"),
        (None, [{"role": "gauge", "count": 1, "sf": 7}], "roles #1: 'sf' and 'distance_m' place nodes on the air"),
    ],
)
def test_a_bad_air_table_names_the_key(air: Any, roles: Any, message: str) -> None:
    data: dict[str, Any] = {"name": "t", "duration": 60, "roles": roles}
    if air is not None:
        data["air"] = air
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(data)
    assert message in str(raised.value)


def test_the_rig_installs_each_node_where_a_bridge_on_its_sf_hears_it(tmp_path: Path) -> None:
    parsed = scenario()
    assert parsed.air is not None
    rig = RadioRig.for_scenario(tmp_path, parsed.air, parsed.roles, interval=30, status_interval=60, seed=3)
    try:
        assert [placed.node.settings["sf"] for placed in rig.bridges] == [9, 10] and rig.boot_spread_s == 30
        assert [placed.node.role for placed in rig.radios] == ["lora_sensor"] * 4 + ["streetlight"] * 2
        assert [placed.node.settings["sf"] for placed in rig.radios] == [9, 10, 9, 10, 9, 9]  # a group's SFs in turn
        assert [placed.node.interval for placed in rig.radios] == [900] * 4 + [None] * 2  # None: the scenario's
        medium = rig.air.medium
        for placed in rig.radios:
            settings = placed.node.settings
            assert settings["channels"] == [868100000, 868300000]  # those its bridges listen on
            assert math.hypot(placed.x, placed.y) <= (2500 if placed.node.role == "lora_sensor" else 1500)
            margins = [
                14 - medium.path_loss.loss_db(math.hypot(placed.x - b.x, placed.y - b.y), medium.shadowing_db(placed.name, b.name))
                for b in rig.bridges
                if b.node.settings["sf"] == settings["sf"]
            ]
            assert max(margins) - SENSITIVITY_DBM[int(settings["sf"])] >= INSTALL_MARGIN_DB
        again = RadioRig.for_scenario(tmp_path / "again", parsed.air, parsed.roles, interval=30, status_interval=60, seed=3)
        assert [(p.x, p.y) for p in again.radios] == [(p.x, p.y) for p in rig.radios]  # seeded
        again.air.stop()
        assert set(rig.keys()) == {placed.node_hex for placed in rig.bridges + rig.radios}
    finally:
        rig.air.stop()


def test_a_node_no_bridge_can_hear_is_refused_by_name(tmp_path: Path) -> None:
    far = scenario(roles=[{"role": "lora_sensor", "count": 1, "sf": 9, "distance_m": [40000, 60000]}])
    with pytest.raises(ScenarioError, match="node node2 at SF9: no spot up to 60000 m out where a bridge hears it"):
        RadioRig.for_scenario(tmp_path, far.air, far.roles, interval=30, status_interval=60, seed=1)
    deaf = scenario(roles=[{"role": "lora_sensor", "count": 1, "sf": 12}])
    with pytest.raises(ScenarioError, match="air: no bridge listens on SF12"):
        RadioRig.for_scenario(tmp_path / "deaf", deaf.air, deaf.roles, interval=30, status_interval=60, seed=1)


def test_the_tap_reads_each_sample_a_node_put_on_air_with_its_key(tmp_path: Path) -> None:
    rig = RadioRig(tmp_path)
    try:
        rig.bridge(0, 0)
        node = rig.radio(100, 0)
        node_id = bytes.fromhex(node.node_hex)
        channels = [{"name": "temperature", "unit": "Cel", "scale": -2}, {"name": "counter", "unit": "", "scale": 0}]
        hello = {"proto": [1, 1], "fw_version": "t", "hw_model": "t", "caps": 0x0B | messages.CAP_AUTH, "channels": channels}
        frames = [
            Message(messages.HELLO, node_id, 1, hello, fr.F_ACK_REQ | fr.F_AUTH),
            Message(messages.READINGS, node_id, 2, {"samples": [0, 2150, 0, 1, 7, 0]}, fr.F_ACK_REQ | fr.F_AUTH),
            Message(messages.READINGS, node_id, 3, {"samples": [1, 8, 0]}, fr.F_ACK_REQ | fr.F_AUTH | fr.F_PRIORITY),
        ]
        for at, message in enumerate(frames, 10):
            rig._tapped(Transmission(node.name, float(at), 868100000, 7, 0, payload=on_air(message, node.key)))
        forged = Message(messages.READINGS, node_id, 4, {"samples": [1, 9, 0]}, fr.F_ACK_REQ | fr.F_AUTH)
        rig._tapped(Transmission(node.name, 20.0, 868100000, 7, 0, payload=on_air(forged, bytes(32))))  # not its key
        rig._tapped(Transmission("bridge0", 21.0, 869525000, 7, 0, payload=on_air(frames[1], node.key)))  # a downlink
        assert rig.tap.snapshot() == {(node.node_hex, 7): 11.0, (node.node_hex, 8): 12.0}
        assert rig.tap.events_sent() == {(node.node_hex, 3): 12.0}
        assert rig.tap.event_moments() == {(node.node_hex, ("frame", 3)): 12.0}  # no base_time: by its frame
        for counter in (5, 6):  # two event frames of one moment (a flood and a rise in one reading): one event
            fields = {"samples": [0, 9, 2], "base_time": 1.8e9 + 0.5}
            dated = Message(messages.READINGS, node_id, counter, fields, fr.F_AUTH | fr.F_PRIORITY)
            rig._tapped(Transmission(node.name, 20.0 + counter, 868100000, 7, 0, payload=on_air(dated, node.key)))
        assert rig.tap.event_moments()[(node.node_hex, 1800000002.5)] == 25.0 and len(rig.tap.event_moments()) == 2
    finally:
        rig.air.stop()


def on_air(message: Message, key: bytes) -> bytes:
    """The frame as a radio sends it: one packet, no COBS (encode gives it as a cable carries it)."""
    return cobs.decode(encode(message, key).rstrip(b"\x00"))


def _sent(sender: str, start: float, channel: int = 868100000, length: int = 50) -> Transmission:
    return Transmission(sender, start, channel, 7, length)


def test_a_transmission_inside_its_senders_time_off_is_a_breach_per_sub_band() -> None:
    airtime = _sent("a", 0).airtime  # 1 %: the sub-band is closed 99 airtimes after it
    kept = [_sent("a", 0), _sent("b", 0.01), _sent("a", 100 * airtime), _sent("a", 100 * airtime + 0.1, 869525000)]
    assert duty_breaches(kept) == []
    broken = duty_breaches([*kept, _sent("a", 100 * airtime + 50 * airtime, 868300000)])  # h1.4 again, too soon
    assert len(broken) == 1 and broken[0].startswith("a at ")


def _status(uptime: int, tx_ms: int, rx_ms: int, tx: int) -> dict[str, Any]:
    return {"uptime": uptime, "air": {"tx_ms": tx_ms, "rx_ms": rx_ms, "tx": tx}}


def test_battery_life_comes_from_what_the_node_measured_between_its_first_and_last_status() -> None:
    documents = [_status(900, 5000, 3000, 4), {"uptime": 900}, _status(1800, 9000, 5000, 7), _status(2700, 14000, 8000, 11)]
    years = _battery_years(documents, 14.0)
    assert years == pytest.approx(estimate_from_report(9000, 5000, 1800, 7, power_dbm=14.0).years)
    assert years is not None and 0 < years < 20
    assert _battery_years(documents[:2], 14.0) is None  # one report: nothing measured in between
    documents[-1]["air"]["power"] = 8  # link adaptation lowered it: the current a transmission draws is less
    assert _battery_years(documents, 14.0) == pytest.approx(estimate_from_report(9000, 5000, 1800, 7, power_dbm=8).years)
    documents[-1]["air"]["power"] = 2  # under the datasheet's lowest row (+7 dBm): counted at its current
    assert _battery_years(documents, 14.0) == pytest.approx(estimate_from_report(9000, 5000, 1800, 7, power_dbm=7).years)
    assert _battery_years([_status(900, 5000, 3000, 4), _status(60, 100, 50, 1)], 14.0) is None  # rebooted between
    # Two boots of two reports each, the second's counts all past the first's: the second boot's alone
    boots = [_status(900, 5000, 3000, 4), _status(1800, 9000, 5000, 7), _status(600, 9500, 5500, 8), _status(1500, 12000, 7000, 11)]
    assert _battery_years(boots, 14.0) == pytest.approx(estimate_from_report(2500, 1500, 900, 3, power_dbm=14.0).years)
    assert _battery_years(boots[:3], 14.0) == pytest.approx(estimate_from_report(4000, 2000, 900, 3, power_dbm=14.0).years)
    # its radio's counts went back though its uptime did not (a boot between two reports the gateway missed)
    missed = [_status(900, 5000, 3000, 4), _status(4000, 100, 50, 1), _status(4900, 2100, 1050, 4)]
    assert _battery_years(missed, 14.0) == pytest.approx(estimate_from_report(2000, 1000, 900, 3, power_dbm=14.0).years)
    assert _battery_years([_status(900, 5000, 3000, 4), _status(1800, 5100, 3500, 5)], 14.0) is None  # 1 uplink: no round
    # a whole round (a READINGS and a STATUS) between two STATUS is enough: what is left when the STATUS of a
    # round after them was lost on the air
    two = [_status(900, 5000, 3000, 4), _status(1800, 5100, 3500, 6)]
    assert _battery_years(two, 14.0) == pytest.approx(estimate_from_report(100, 500, 900, 2, power_dbm=14.0).years)


def test_the_air_checks_name_what_failed() -> None:
    outcome = AirOutcome(10, 8, 3, 2, ["node3 at 5.00 s, 1.00 s after a frame of 0.100 s"], 0, years={"e1": 2.0}, over_duty=4)
    failures = {check.name: check.failure for check in outcome.checks(battery_estimates=True)}
    assert failures == {
        "air: every transmission kept its sender's duty cycle": "node3 at 5.00 s, 1.00 s after a frame of 0.100 s",
        "air: every node received a downlink": "2 of 3",
        "gateway: no node heard past its duty cycle": "4 frames",
        "energy: a battery life estimated for every node": "2 of 3 nodes sent too few STATUS for an estimate",
    }
    fine = AirOutcome(10, 8, 1, 1, [], 0, years={"e1": 2.0})
    assert all(check.failure is None for check in fine.checks(battery_estimates=True))
    assert "uplinks 10  downlinks 8  nodes answered 1 of 1" in fine.summary()[0]


def test_a_boot_the_vm_crashed_is_tried_again_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MicroPython VM now and then dies of SIGSEGV before a node's ready line (gateway/fwtools/emulate.py): the
    node is booted again, at most BOOT_TRIES in all; any other death before the ready line is an error at once."""
    import sys

    from gateway.fwtools import emulate

    script = (
        "import os, signal, sys, time\n"
        "marker = sys.argv[2] + '/crashed-%s'\n"
        "count = len([n for n in os.listdir(sys.argv[2]) if n.startswith('crashed-')])\n"
        "if count < int(os.environ['CRASHES']):\n"
        "    open(marker % count, 'w').close()\n"
        "    os.kill(os.getpid(), signal.SIGSEGV if os.environ['HOW'] == 'segv' else signal.SIGTERM)\n"
        "print('edgegw-node e100000000000001 ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    monkeypatch.setattr(emulate, "node_command", lambda bundle, heap: [sys.executable, "-c", script])

    def boot(crashes: int, how: str) -> emulate.EmulatedNode:
        monkeypatch.setenv("CRASHES", str(crashes))
        monkeypatch.setenv("HOW", how)
        node = emulate.EmulatedNode(0, 1, tmp_path / ("%s%d" % (how, crashes)))
        node.open_uart()
        try:
            node.spawn(tmp_path, "64k", 1.0, 60.0)
        finally:
            node.close()
        return node

    node = boot(2, "segv")
    assert node.node_id == "e100000000000001" and node.boot_crashes == 2
    assert node.log.count("edgegw: the MicroPython VM crashed booting node 0 (SIGSEGV); booting it again") == 2
    with pytest.raises(emulate.EmulatorError, match="node 0 did not start"):
        boot(emulate.BOOT_TRIES, "segv")  # every try crashed
    with pytest.raises(emulate.EmulatorError, match="node 0 did not start"):
        boot(1, "term")  # not the VM's crash: not hidden


def test_the_air_record_says_why_each_uplink_was_lost(tmp_path: Path) -> None:
    """The real medium judges; the record keeps the best a bridge got of each uplink, and writes every transmission."""
    medium = Medium(1, PathLoss(sigma_db=0.0))
    medium.place("bridge0", 0, 0, {(868100000, 7)})
    for name, x in (("near", 100), ("far", 9000), ("other", 120), ("elsewhere", 200)):
        medium.place(name, x, 0)
    record = AirRecord({"bridge0"})
    sent = [
        Transmission("near", 0.0, 868100000, 7, 20),  # alone: delivered
        Transmission("far", 5.0, 868100000, 7, 20),  # 9 km at SF7: too weak
        Transmission("near", 10.0, 868100000, 7, 20),  # both at once, equally strong: a collision
        Transmission("other", 10.0, 868100000, 7, 20),
        Transmission("elsewhere", 20.0, 868300000, 7, 20),  # a channel no bridge listens on
        Transmission("bridge0", 30.0, 868100000, 7, 20),  # the bridge sends while a node's frame comes in
        Transmission("near", 30.01, 868100000, 7, 20),
    ]
    for transmission in sent:
        medium.transmit(transmission)
    for reception in medium.outcomes(math.inf):
        record(reception, heard=True)
    assert [record.fate(t) for t in sent] == ["delivered", "too_weak", "collision", "collision", "unheard", "unheard", "half_duplex"]
    nodes = {"near", "far", "other", "elsewhere"}
    assert record.fates(sent, nodes)["near"] == {"delivered": 1, "collision": 1, "half_duplex": 1}
    record(Reception(sent[0], "bridge0", DELIVERED, -80.0, 9.0), heard=False)  # delivered, but its start went unheard
    assert record.fate(sent[0]) == DEAF
    outcome = analyse_air(sent, Counter(), 0, {n: "hex-" + n for n in nodes}, {"bridge0": "hex-b"}, _NoCapture(), record=record)
    heard_none = {"hex-far": {"too_weak": 1}, "hex-other": {"collision": 1}, "hex-elsewhere": {"unheard": 1}}
    assert outcome.unheard == {**heard_none, "hex-near": {"deaf": 1, "collision": 1, "half_duplex": 1}}
    assert outcome.fates[7] == {"deaf": 1, "too_weak": 1, "collision": 2, "half_duplex": 1, "unheard": 1}
    assert any(line.startswith("  on air     SF7  uplinks 6: collision 2") for line in outcome.summary())
    record.write(tmp_path / "air.jsonl", sent, {"near": "e1"})
    lines = [json.loads(line) for line in (tmp_path / "air.jsonl").read_text().splitlines()]
    assert len(lines) == len(sent) and lines[2]["t"] == 10.0 and lines[2]["got"] == {"bridge0": "collision"}
    assert lines[0]["from_node"] == "e1" and lines[0]["ms"] == pytest.approx(sent[0].airtime * 1000, abs=0.1)


class _NoCapture:
    def snapshot(self) -> list[Any]:
        return []


def test_a_bridge_breaks_its_duty_cycle_only_by_the_hour() -> None:
    """A bridge keeps ETSI's hourly limit, not a node's time-off: downlinks back to back are fine until the hour's
    10 % (RX2's sub-band) is spent."""
    frame = _sent("bridge0", 0, 869525000, 200)  # about 0.4 s at SF7
    burst = [_sent("bridge0", n * (frame.airtime + 0.01), 869525000, 200) for n in range(20)]
    assert hourly_breaches(burst, {"bridge0"}) == [] and duty_breaches(burst, {"bridge0"})  # a node's rule would break
    per_hour = int(360 / frame.airtime)  # 10 % of an hour
    spent = [_sent("bridge0", n * 3.0, 869525000, 200) for n in range(per_hour + 2)]
    broken = hourly_breaches(spent, {"bridge0"})
    assert broken and broken[0].startswith("bridge0 at ") and len(broken) == 2
    assert hourly_breaches(spent, {"node1"}) == []


class _StatusCapture:
    """What a run's subscriber got: the gateway's status documents, in order."""

    def __init__(self, *documents: dict[str, Any]) -> None:
        self.documents = documents

    def snapshot(self) -> list[Any]:
        from hil.capture import Received

        return [Received("edgegw/gw/status", json.dumps(d).encode(), True, 0.0, None) for d in self.documents]


def test_a_run_fails_when_the_gateway_judged_a_node_past_its_duty_cycle() -> None:
    """Every node of a run keeps its duty cycle, so the gateway's guard against one that does not (SPEC.md §5.11) must
    never trigger: the latest status document's radio ports are checked."""
    sent = [Transmission("node0", 0.0, 868100000, 7, 20)]

    def check(capture: Any) -> str | None:
        outcome = analyse_air(sent, Counter(), 0, {"node0": "hex-n"}, {"bridge0": "hex-b"}, capture)
        return next(c.failure for c in outcome.checks(False) if c.name.startswith("gateway: no node heard past"))

    def status(over: int) -> dict[str, Any]:
        return {
            "state": "online",
            "ports": {"/dev/ttyACM0": {"errors": {}}, "radio:00000000000b0001": {"errors": {"over_duty_cycle": over}}},
        }

    assert check(_NoCapture()) is None and check(_StatusCapture(status(0))) is None
    assert check(_StatusCapture(status(0), status(3))) == "3 frames"
    assert check(_StatusCapture(status(3), {"state": "offline"})) == "3 frames"  # the brief one at its stop says nothing


def test_a_node_status_without_a_delivery_ratio_is_a_node_but_no_ratio() -> None:
    """A restarted gateway leaves a radio node's `pdr` out until it hears a counter above the node's window on disk
    (gateway/delivery.py): the report counts the node at its SF and leaves it out of the ratio, not as 0."""
    from hil.capture import Received

    radio = {"rssi": -110, "snr": -5.0, "sf": 9, "freq": 868100000, "bridge": "hex-b", "counter": 9}

    class Capture:
        def snapshot(self) -> list[Any]:
            documents = {"hex-n0": {**radio, "pdr": 0.8, "margin_db": 7.5}, "hex-n1": radio}
            return [
                Received("edgegw/gw/nodes/%s/status" % node, json.dumps({"radio": r}).encode(), True, 0.0, None)
                for node, r in documents.items()
            ]

    nodes = {"node0": "hex-n0", "node1": "hex-n1"}
    outcome = analyse_air([], Counter(), 0, nodes, {"bridge0": "hex-b"}, Capture())
    assert outcome.by_sf[9]["nodes"] == 2 and outcome.by_sf[9]["pdr"] == {"min": 0.8, "median": 0.8, "max": 0.8}


def test_a_run_settles_until_every_probe_has_two_status_with_a_round_between() -> None:
    """What the settle of a run judged on battery estimates waits for (hil/city.py): a node with no STATUS, with
    one, or with two without a round between has none yet; a republished STATUS (same uptime) is not a second."""
    from hil.capture import Received

    published = {
        "hex-a": [_status(900, 5000, 3000, 4), _status(1800, 9000, 5000, 7)],
        "hex-b": [_status(900, 5000, 3000, 4), _status(900, 5000, 3000, 4)],
        "hex-c": [_status(900, 5000, 3000, 4), _status(1800, 5100, 3500, 5)],
    }

    class Capture:
        def snapshot(self) -> list[Any]:
            return [
                Received("edgegw/gw/nodes/%s/status" % node, json.dumps(d).encode(), True, 0.0, None)
                for node, documents in published.items()
                for d in documents
            ]

    assert unestimated(Capture(), ["hex-a", "hex-b", "hex-c", "hex-d"]) == ["hex-b", "hex-c", "hex-d"]
    published["hex-b"].append(_status(2700, 9000, 6000, 8))
    assert unestimated(Capture(), ["hex-a", "hex-b"]) == []
