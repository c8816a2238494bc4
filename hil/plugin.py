"""pytest plugin (entry point `pytest11: edgegw_hil`): the whole chain as fixtures.

    --hil-target=emulated   (default) real firmware on the real MicroPython VM, behind faulty cables
    --hil-target=bench --hil-config bench.toml
                            real boards on real serial ports (see hil/bench.py); they are flashed
                            with `edgegw fw flash` first, and faults a bench cannot apply make the
                            test SKIPPED with the reason, never a silent pass

Fixtures: `hil_broker` (a real mosquitto on a free loopback port; stop()/start()
for outages), `hil_gateway(ports, ...)` (the real `edgegw run`; kill()/start()),
`hil_nodes(count, ...)` (a started rig: `.ports`, `.reboot(i)`, `.unplug(i)`),
`hil_capture` (an MQTT subscriber decoding SenML with cbor2), `hil_continuity`
(continuity of the `counter` channel: lost, duplicated, latency) and
`hil_scenario(name_or_path_or_Scenario)` which runs a whole scenario and returns
its Report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .bench import BenchRig, load_bench
from .broker import Mosquitto
from .capture import MqttCapture
from .chain import Rig
from .city_report import CityReport
from .continuity import Flow, analyse
from .faults import Fault
from .gateway import GatewayProcess
from .report import Report
from .scenario import Scenario, ScenarioError, load_scenario, run_scenario

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


@dataclass(frozen=True)
class HilTarget:
    name: str  # "emulated" or "bench"
    bench_file: Path | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edgegw-hil", "edgegw hardware-in-the-loop")
    group.addoption("--hil-target", choices=["emulated", "bench"], default="emulated", help="where the nodes are (default: emulated)")
    group.addoption("--hil-config", metavar="FILE", help="the bench file for --hil-target=bench: boards and their serial ports")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil: an end-to-end test of the whole chain (nodes, serial, gateway, disk, broker)")
    if config.getoption("--hil-target", default="emulated") == "bench":
        bench = config.getoption("--hil-config", default=None)
        if not bench:
            raise pytest.UsageError("--hil-target=bench needs --hil-config FILE (the boards and their ports, see hil/bench.py)")
        if not Path(bench).is_file():
            raise pytest.UsageError("--hil-config: no such file: %s" % bench)


@pytest.fixture(scope="session")
def hil_target(pytestconfig: pytest.Config) -> HilTarget:
    name = pytestconfig.getoption("--hil-target")
    bench = pytestconfig.getoption("--hil-config")
    return HilTarget(name, Path(bench) if bench else None)


def _skip_if_not_applicable(rig: Rig, faults: list[Fault] | tuple[Fault, ...]) -> None:
    reasons = ["%s: %s" % (f.describe(), rig.not_applicable(f)) for f in faults if rig.not_applicable(f)]
    if reasons:
        pytest.skip("not applicable on the %s target: %s" % (rig.target, "; ".join(reasons)))


def _make_rig(target: HilTarget, workdir: Path, count: int, faults: list[Fault] | tuple[Fault, ...], **options: Any) -> Rig:
    if target.name == "bench":
        assert target.bench_file is not None
        boards = load_bench(target.bench_file)
        if count > len(boards):
            pytest.skip("the bench has %d board(s), the test needs %d" % (len(boards), count))
        return BenchRig(boards[:count], workdir)
    from .rig import EmulatedRig

    return EmulatedRig(workdir, count, faults=faults, **options)


@pytest.fixture
def hil_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def hil_capture(hil_broker: Mosquitto) -> Iterator[MqttCapture]:
    capture = MqttCapture(hil_broker.host, hil_broker.port, ["edgegw/#"])
    yield capture
    capture.close()


@pytest.fixture
def hil_gateway(tmp_path: Path, hil_broker: Mosquitto) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(ports: list[str], **options: Any) -> GatewayProcess:
        gateway = GatewayProcess(tmp_path / ("gateway%d" % len(started)), hil_broker.port, ports, **options)
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.close()


@pytest.fixture
def hil_nodes(tmp_path: Path, hil_target: HilTarget) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def start(count: int, *, faults: list[Fault] | tuple[Fault, ...] = (), **options: Any) -> Rig:
        rig = _make_rig(hil_target, tmp_path / ("rig%d" % len(rigs)), count, faults, **options)
        _skip_if_not_applicable(rig, faults)
        rigs.append(rig)
        rig.start()
        return rig

    yield start
    for rig in rigs:
        rig.stop()


@pytest.fixture
def hil_continuity(hil_capture: MqttCapture) -> Callable[..., Flow]:
    """flow = hil_continuity(rig, start=t0, cutoff=t1): lost, duplicated and latency of the `counter` channel."""

    def measure(rig: Rig, *, start: float, cutoff: float, fault_windows: list[tuple[float, float]] | None = None) -> Flow:
        deliveries = hil_capture.counter_deliveries()
        flow = analyse(rig.produced(deliveries), deliveries, start=start, cutoff=cutoff, fault_windows=fault_windows)
        if not rig.measures_latency:
            flow.latencies = []  # a bench has no tap: when a reading left the board is not known
        return flow

    return measure


@pytest.fixture
def hil_scenario(tmp_path: Path, hil_target: HilTarget) -> Callable[..., Report | CityReport]:
    """report = hil_scenario("broker-outage") (a file of hil/scenarios), a path, or a Scenario; a city scenario
    (roles, commands, world: hil/city.py) gives a CityReport; shortened=True: the file's [shortened] version."""

    runs = 0

    def run(which: str | Path | Scenario, *, shortened: bool = False, **overrides: Any) -> Report | CityReport:
        nonlocal runs
        runs += 1
        if isinstance(which, Scenario):
            scenario = dataclasses.replace(which, **overrides)
        else:
            path = Path(which)
            path = path if path.suffix == ".toml" else SCENARIOS / ("%s.toml" % which)
            scenario = dataclasses.replace(load_scenario(path, shortened=shortened), **overrides)
        if scenario.city:
            if hil_target.name != "emulated":
                pytest.skip("not applicable on the %s target: a city scenario's world (water, cars, lamps) is emulated" % hil_target.name)
            city = run_scenario(scenario, tmp_path / ("run%d" % runs))
            print(city.summary())
            return city
        late = [f.describe() for f in scenario.faults if f.end > scenario.duration]
        if late:
            raise ScenarioError("faults end after the flow (duration %g s): %s" % (scenario.duration, "; ".join(late)))
        rig = _make_rig(
            hil_target,
            tmp_path / ("rig%d" % runs),
            scenario.nodes,
            scenario.line_faults,
            interval=scenario.interval,
            heap=scenario.heap,
            seed=scenario.seed,
            status_interval=scenario.status_interval,
        )
        _skip_if_not_applicable(rig, scenario.faults)
        report = run_scenario(scenario, tmp_path / ("run%d" % runs), rig=rig)
        print(report.summary())
        return report

    return run
