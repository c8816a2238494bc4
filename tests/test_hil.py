"""The HIL harness's own parts, without the whole chain: faults, continuity, reports, scenarios, the pytest plugin."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gateway import cli
from hil import flaky_link
from hil.continuity import analyse, percentile
from hil.faults import DOWN, UP, Fault, FaultError, LineFaults
from hil.report import FaultResult, Report
from hil.scenario import ScenarioError, load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "hil" / "scenarios"


def chunked(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 300)
        out.append(data[pos : pos + step])
        pos += step
    return out


def damage(faults: list[Fault], data: bytes, chunks_seed: int, seed: int = 5) -> bytes:
    line = LineFaults(faults, node=0, seed=seed)
    return b"".join(line.process(UP, chunk, 1.0)[0] for chunk in chunked(data, chunks_seed))


def test_a_seed_gives_the_same_damage_however_the_reads_are_chunked() -> None:
    data = bytes(random.Random(1).getrandbits(8) for _ in range(200_000))
    faults = [Fault("bitflip", at=0, duration=10, rate=1e-3), Fault("drop", at=0, duration=10, rate=1e-3)]
    first = damage(faults, data, chunks_seed=1)
    assert first == damage(faults, data, chunks_seed=2)
    assert first != damage(faults, data, chunks_seed=1, seed=6)  # another seed, other damage
    assert first != data


def test_bit_error_rate_and_drop_rate_are_what_was_asked() -> None:
    data = bytes(1_000_000)
    flipped = damage([Fault("bitflip", at=0, duration=10, rate=1e-4)], data, 3)
    bits = sum(bin(byte).count("1") for byte in flipped)
    assert len(flipped) == len(data)
    assert 600 < bits < 1000  # 8e6 bits at 1e-4: 800 expected, 7 sigma either side
    dropped = len(data) - len(damage([Fault("drop", at=0, duration=10, rate=1e-3)], data, 3))
    assert 850 < dropped < 1150


def test_timeline_latency_throttle_garbage_and_unplug() -> None:
    faults = [
        Fault("latency", at=1, duration=2, ms=250),
        Fault("throttle", at=5, duration=2, baud=1000),
        Fault("garbage", at=10, duration=3, size=16, every=1.0, direction="down"),
        Fault("unplug", at=20, duration=5, nodes=(1,)),
    ]
    line = LineFaults(faults, node=1, seed=1)
    assert line.process(UP, b"x", 0.5) == (b"x", 0.5)  # before any fault
    assert line.process(UP, b"x", 1.5) == (b"x", 1.75)
    _data, at = line.process(UP, bytes(100), 5.0)
    assert at == pytest.approx(6.0)  # 100 bytes * 10 bits at 1000 baud
    assert line.process(UP, bytes(100), 5.1)[1] == pytest.approx(7.0)  # queued behind the first
    assert line.garbage(UP, 10.0) == b""  # only downstream
    bursts = [line.garbage(DOWN, 10.0 + step / 10) for step in range(40)]
    assert [len(b) for b in bursts if b] == [16, 16, 16]
    assert not line.unplugged(19.9) and line.unplugged(20) and line.unplugged(24.9) and not line.unplugged(25)
    assert not LineFaults(faults, node=0, seed=1).unplugged(22)  # node 0's cable stays in
    assert line.damage["garbage_bytes"] == 48


def test_a_delayed_link_passes_bytes_on_after_its_seeded_delay_in_the_order_they_came() -> None:
    """hil/flaky_link.py's delay, as for a congested radio link: each direction on its own, never overtaking."""

    def plan() -> flaky_link.LinkPlan:
        return flaky_link.LinkPlan({flaky_link.UP: None, flaky_link.DOWN: None}, None, seed=3, now=0.0, delay=0.5, jitter=0.2)

    reads = [k / 100 for k in range(200)]
    first, again = plan(), plan()
    up = [first.release_at(flaky_link.UP, now) for now in reads]
    assert up == [again.release_at(flaky_link.UP, now) for now in reads], "a seed gives the same delays"
    assert up == sorted(up), "bytes never overtake bytes read before them"
    late = [due - now for due, now in zip(up, reads, strict=True)]
    assert min(late) >= 0.3 and max(late) <= 0.7 and max(late) - min(late) > 0.2, "delay 0.5 s give or take 0.2 s"
    assert first.release_at(flaky_link.DOWN, 5.0) >= 5.3, "the other direction is delayed too"
    plain = flaky_link.LinkPlan({flaky_link.UP: None}, None, seed=3, now=0.0)
    assert plain.release_at(flaky_link.UP, 1.5) == 1.5, "no delay asked: at once"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "lightning", "at": 0}, "unknown fault kind"),
        ({"kind": "bitflip", "at": 0, "duration": 5}, "rate must be between 0 and 1"),
        ({"kind": "latency", "at": 0, "duration": 5}, "ms must be above 0"),
        ({"kind": "drop", "at": -1, "rate": 0.1}, "must not be negative"),
        ({"kind": "drop", "at": 0, "rate": 0.1, "direction": "sideways"}, "direction must be up, down or both"),
    ],
)
def test_a_bad_fault_is_refused_with_a_reason(options: dict[str, object], message: str) -> None:
    with pytest.raises(FaultError, match=message):
        Fault(**options)  # type: ignore[arg-type]


def test_continuity_counts_lost_duplicated_unexpected_backlog_and_recovery() -> None:
    produced = {("a", n): float(n) for n in range(1, 11)} | {("b", n): float(n) for n in range(1, 11)}
    deliveries = [("a", n, n + 0.5) for n in range(1, 11)]  # a: all on time
    deliveries += [("b", n, 20.0) for n in range(1, 11) if n != 7]  # b: held back until 20, 7 lost
    deliveries += [("a", 3, 30.0), ("b", 99, 21.0)]  # one duplicate, one sample nobody produced
    flow = analyse(produced, deliveries, start=0.0, cutoff=10.0, fault_windows=[(2.0, 4.0), (6.0, 12.0), (0.5, 1.5)])
    a, b = flow.nodes
    assert (a.produced, a.delivered, a.duplicated, a.lost) == (10, 10, 1, [])
    assert (b.produced, b.delivered, b.lost) == (10, 9, [7])
    assert flow.unexpected == 1
    assert flow.peak_backlog == 11  # at 10 s: b's ten wait for 20 s, a's tenth is in flight
    assert flow.recovery == [16.0, None, 18.5]  # 2..4 s: all there at 20 s; 6..12 s: b7 never came; 0.5..1.5 s: b1 at 20
    assert sorted(flow.latencies)[:2] == [0.5, 0.5] and max(flow.latencies) == 19.0
    assert percentile([1, 2, 3, 4], 0.5) == 2 and percentile([1, 2, 3, 4], 0.99) == 4 and percentile([], 0.5) is None


def test_a_node_that_produced_nothing_fails_the_report() -> None:
    flow = analyse({("a", 1): 0.0}, [("a", 1, 0.1)], start=0.0, cutoff=5.0)
    assert Report("two", "", "emulated", 1, 5.0, flow).passed
    silent = Report("two", "", "emulated", 2, 5.0, flow)  # two nodes in the scenario, one of them silent
    assert not silent.passed and "SILENT     1 of 2 nodes" in silent.summary()


def test_report_json_and_junit(tmp_path: Path) -> None:
    flow = analyse({("a", 1): 0.0, ("a", 2): 1.0}, [("a", 1, 0.1)], start=0.0, cutoff=5.0, fault_windows=[(1.0, 2.0)])
    report = Report("demo", "a test", "emulated", 1, 5.0, flow, [FaultResult("unplug at 1 s for 1 s", 2.0, None)])
    assert not report.passed
    report.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["readings"] == {"produced": 2, "delivered": 1, "duplicated": 0, "lost": 1, "unexpected": 0}
    assert data["per_node"][0]["lost_samples"] == [2] and data["passed"] is False
    report.write_junit(tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("failures") == "2"
    assert [case.get("name") for case in suite if case.tag == "testcase"][:2] == [
        "node a delivers every reading",
        "every node produced readings",
    ]
    failed = [case.get("name") for case in suite if case.find("failure") is not None]
    assert failed == ["node a delivers every reading", "recovers from unplug at 1 s for 1 s"]
    assert "LOST       node a: 1 readings (samples 2)" in report.summary()


def test_the_shipped_scenarios_load() -> None:
    names = {path.stem for path in SCENARIOS.glob("*.toml")}
    assert {"steady", "broker-outage", "gateway-kill", "line-noise", "unplug", "node-reboot"} <= names
    for path in SCENARIOS.glob("*.toml"):
        scenario = load_scenario(path)
        assert scenario.name == path.stem and scenario.description


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodes": 2, "duration": 10, "colour": "red"}, "scenario: unknown key 'colour'"),
        ({"nodes": "two"}, "scenario: 'nodes' must be int"),
        ({"duration": 10, "faults": [{"kind": "unplug", "at": 5, "duration": 10}]}, "faults #1: ends at 15 s, after the flow"),
        (
            {"nodes": 2, "duration": 10, "faults": [{"kind": "unplug", "at": 1, "nodes": [2]}]},
            "faults #1: 'nodes' must list node indexes 0..1",
        ),
        ({"duration": 10, "faults": [{"kind": "bitflip", "at": 1, "duration": 2}]}, "faults #1: bitflip: rate must be"),
        ({"duration": 10, "faults": [{"at": 1}]}, "faults #1: needs at least 'kind' and 'at'"),
        (
            {
                "duration": 30,
                "faults": [{"kind": "gateway_kill", "at": 5, "duration": 5}, {"kind": "gateway_kill", "at": 8, "duration": 2}],
            },
            "faults #2: overlaps an earlier gateway_kill",
        ),
    ],
)
def test_a_bad_scenario_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(data)


def test_hil_run_explains_a_missing_or_bad_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["hil", "run", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('nodes = 1\nduration = 5\n[[faults]]\nkind = "unplug"\nat = 1\nduration = 9\n')
    assert cli.main(["hil", "run", str(bad)]) == 2
    assert "faults #1: ends at 10 s, after the flow (duration 5 s)" in capsys.readouterr().err
    assert cli.main(["hil", "run", str(bad), "--target", "bench"]) == 2


BENCH_TEST = """
from hil.faults import Fault

def test_needs_a_cable_fault(hil_nodes):
    hil_nodes(1, faults=[Fault("bitflip", at=0, duration=5, rate=1e-4)])

def test_needs_a_reboot(hil_scenario):
    hil_scenario("node-reboot")
"""


def test_plugin_bench_target_reports_inapplicable_faults_as_skipped(pytester: pytest.Pytester, tmp_path: Path) -> None:
    bench = tmp_path / "bench.toml"
    bench.write_text('[[boards]]\nport = "/dev/ttyACM0"\nflash = false\n\n[[boards]]\nport = "/dev/ttyACM1"\nflash = false\n')
    pytester.makepyfile(BENCH_TEST)
    result = pytester.runpytest_subprocess("--hil-target=bench", "--hil-config", str(bench), "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*not applicable on the bench target: bitflip (BER 0.0001)*nothing on the line to damage*"])
    result.stdout.fnmatch_lines(["*not applicable on the bench target: node_reboot*needs its port*"])


def test_plugin_bench_target_needs_its_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--hil-target=bench")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--hil-target=bench needs --hil-config FILE*"])


def test_wire_tap_dates_samples_and_catches_a_reused_frame_counter() -> None:
    from hil.rig import WireTap
    from protocols import Message, encode, messages

    node = bytes.fromhex("e100000000000001")
    channels = [{"name": "temperature", "unit": "Cel", "scale": -2}, {"name": "counter", "unit": "", "scale": 0}]
    hello = {"proto": [1, 0], "fw_version": "t", "hw_model": "t", "caps": 1, "channels": channels}

    def wire(mtype: int, counter: int, fields: dict[str, object]) -> bytes:
        return encode(Message(mtype, node, counter, fields, 2))

    tap = WireTap()
    tap.feed(0, wire(messages.HELLO, 1, hello) + wire(messages.HELLO, 1, hello), 1.0)  # a resent HELLO is not a reuse
    tap.feed(0, wire(messages.READINGS, 2, {"samples": [0, 2150, 0, 1, 1, 0]}), 2.0)
    tap.feed(0, wire(messages.READINGS, 2, {"samples": [0, 2150, 0, 1, 1, 0]}), 3.0)  # a retransmission: still produced at 2.0
    tap.feed(0, wire(messages.READINGS, 3, {"samples": [1, 2, 0]}), 4.0)
    assert tap.snapshot() == {("e100000000000001", 1): 2.0, ("e100000000000001", 2): 4.0}
    assert tap.counter_reuse == {}
    tap.feed(0, wire(messages.HELLO, 66, hello), 5.0)  # reboot, counter continued from flash
    assert tap.counter_reuse == {}
    tap.feed(0, wire(messages.HELLO, 3, hello), 6.0)  # reboot that lost its counter
    assert tap.counter_reuse == {"e100000000000001": 1}
