"""Where the gateway's time goes: py-spy on the real process, summarised by function.

python -m bench.profile [SECONDS]          # full ingest; writes docs/profile-ingest.txt
python -m bench.profile drain [SECONDS]    # a backlog drain; writes docs/profile-drain.txt
"""

from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
from pathlib import Path

from hil.broker import Mosquitto
from hil.gateway import GatewayProcess

from .feeder import Feeders

ROOT = Path(__file__).resolve().parent.parent


def _record(pid: int, seconds: float, raw: Path) -> None:
    py_spy = str(Path(sys.executable).parent / "py-spy")
    subprocess.run(
        [py_spy, "record", "-p", str(pid), "-d", str(int(seconds)), "--format", "raw", "-o", str(raw), "-t"],
        check=True,
        capture_output=True,
    )


def ingest(work: Path, seconds: float) -> tuple[Path, str]:
    raw = work / "gateway.raw"
    with Mosquitto(work / "broker") as broker:
        feeders = Feeders(work, 4, 50, 2000, seconds + 5)
        feeders.start()
        gateway = GatewayProcess(work / "gateway", broker.port, [str(link) for link in feeders.links])
        try:
            gateway.start()
            gateway.wait_for_log("running as", timeout=30)
            assert gateway.process is not None
            feeders.go()
            _record(gateway.process.pid, seconds, raw)
            feeders.results(timeout=seconds + 60)
        finally:
            gateway.close()
            feeders.stop()
    return raw, "at full ingest (4 ports x 50 nodes)"


def drain(work: Path, seconds: float) -> tuple[Path, str]:
    from .run import _fill_store

    raw = work / "gateway.raw"
    _fill_store(work / "gateway" / "data", 500_000, 1000)
    with Mosquitto(work / "broker") as broker:
        gateway = GatewayProcess(work / "gateway", broker.port, [], reconnect_max=2)
        try:
            gateway.start()
            gateway.wait_for_log("running as", timeout=120)
            assert gateway.process is not None
            _record(gateway.process.pid, seconds, raw)
        finally:
            gateway.close()
    return raw, "draining 5 million buffered readings of 1,000 nodes"


def main(kind: str = "ingest", seconds: float = 15.0) -> int:
    work = Path(tempfile.mkdtemp(prefix="edgegw-profile-"))
    raw, what = (drain if kind == "drain" else ingest)(work, seconds)
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        own[_short(frames[-1])] += count
        for name in {_short(frame) for frame in frames[1:]}:
            inclusive[name] += count
    lines = ["py-spy samples of `edgegw run` %s, %d samples" % (what, total), "", "by thread:"]
    lines += ["  %5.1f%%  %s" % (100.0 * n / total, name) for name, n in threads.most_common(6)]
    lines += ["", "own time (the function itself):"]
    lines += ["  %5.1f%%  %s" % (100.0 * n / total, name) for name, n in own.most_common(25)]
    lines += ["", "inclusive time (the function and what it calls):"]
    lines += ["  %5.1f%%  %s" % (100.0 * n / total, name) for name, n in inclusive.most_common(40)]
    text = "\n".join(lines) + "\n"
    (ROOT / "docs" / ("profile-%s.txt" % kind)).write_text(text)
    print(text)
    return 0


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    return "%s (%s)" % (name, "/".join(parts[-2:]) if parts else path)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    chosen = arguments.pop(0) if arguments and arguments[0] in ("ingest", "drain") else "ingest"
    sys.exit(main(chosen, float(arguments[0]) if arguments else 15.0))
