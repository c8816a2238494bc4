"""`edgegw hil run SCENARIO.toml` and `edgegw demo`, added to the edgegw CLI through the `edgegw.commands` entry point.

The gateway's CLI does not import hil (imports point one way); it asks the
entry point for `register`, which adds these commands to its parser.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from gateway.fwtools.emulate import EmulatorError

from .bench import BenchError
from .scenario import Progress, ScenarioError, load_scenario, make_rig, run_scenario

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:  # type: ignore[type-arg]
    hil = sub.add_parser("hil", help="hardware-in-the-loop: run a scenario end to end and report", description=__doc__)
    tools = hil.add_subparsers(dest="hil_command", metavar="ACTION", required=True)
    run = tools.add_parser("run", help="run a scenario (nodes, a flow, a fault timeline) and report continuity")
    run.add_argument("scenario", help="a scenario file, or the name of one in hil/scenarios (%s)" % ", ".join(_shipped()))
    run.add_argument("--report-dir", default="hil-reports", help="where NAME.json and NAME.junit.xml go (default: hil-reports)")
    run.add_argument("--target", choices=["emulated", "bench"], default="emulated", help="emulated nodes (default) or a bench of boards")
    run.add_argument("--bench", metavar="FILE", help="the bench file for --target bench (boards and their ports)")
    run.add_argument(
        "--shortened", action="store_true", help="the scenario's [shortened] version (fewer nodes, shorter outages: make test's)"
    )
    run.add_argument("--workdir", help="keep logs, databases and the broker's files here (default: a temporary folder)")
    sub.add_parser("demo", help="3 emulated nodes -> gateway -> local broker, with a live view (Ctrl-C stops it)")
    return {"hil": do_hil, "demo": do_demo}


def _shipped() -> list[str]:
    return sorted(path.stem for path in SCENARIOS.glob("*.toml"))


def do_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run()


def do_hil(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    path = Path(args.scenario)
    if not path.exists() and (SCENARIOS / ("%s.toml" % args.scenario)).exists():
        path = SCENARIOS / ("%s.toml" % args.scenario)
    try:
        scenario = load_scenario(path, shortened=getattr(args, "shortened", False))
        workdir = Path(args.workdir).resolve() if args.workdir else None  # its paths go to processes that run elsewhere
        if workdir is None:
            import tempfile

            workdir = Path(tempfile.mkdtemp(prefix="edgegw-hil-"))
        rig = make_rig(scenario, workdir / "rig", args.target, Path(args.bench) if args.bench else None)
    except (ScenarioError, BenchError) as error:
        print("edgegw: %s" % error, file=sys.stderr)
        return 2
    print("scenario %s: %s" % (scenario.name, scenario.description), file=out, flush=True)
    display = ProgressLine(out)
    try:
        report = run_scenario(scenario, workdir, rig=rig, progress=display)
    except (RuntimeError, OSError, ValueError, AssertionError, EmulatorError) as error:  # the harness failed, not the scenario
        display.done()
        print("edgegw: the scenario could not be run: %s (logs in %s)" % (error, workdir), file=sys.stderr)
        return 2
    display.done()
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(report_dir / ("%s.json" % scenario.name))
    report.write_junit(report_dir / ("%s.junit.xml" % scenario.name))
    print(report.summary(), file=out)
    print("reports: %s, %s" % (report_dir / ("%s.json" % scenario.name), report_dir / ("%s.junit.xml" % scenario.name)), file=out)
    return 0 if report.passed else 1


class ProgressLine:
    """One line rewritten in place on a terminal; a line every 5 s anywhere else (CI logs)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        text = "[%5.1f/%g s] %-6s %s %5d  %s %5d  backlog %4d  %s" % (
            progress.elapsed,
            progress.duration,
            progress.phase,
            progress.labels[0],
            progress.produced,
            progress.labels[1],
            progress.delivered,
            progress.produced - progress.delivered,
            ("faults: " + "; ".join(progress.active)) if progress.active else "",
        )
        if self.tty:
            self.out.write("\r\x1b[K" + text[:160])
            self.out.flush()
        elif time.monotonic() - self._last >= 5.0:
            self._last = time.monotonic()
            print(text, file=self.out, flush=True)

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
