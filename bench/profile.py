"""Where the gateway's time goes at full ingest: py-spy on the real process, summarised by function.

python -m bench.profile [SECONDS]      # writes docs/profile-ingest.txt
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


def main(seconds: float = 15.0) -> int:
    work = Path(tempfile.mkdtemp(prefix="edgegw-profile-"))
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
            subprocess.run(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-p",
                    str(gateway.process.pid),
                    "-d",
                    str(int(seconds)),
                    "--format",
                    "raw",
                    "-o",
                    str(raw),
                    "-t",
                ],
                check=True,
                capture_output=True,
            )
            feeders.results(timeout=seconds + 60)
        finally:
            gateway.close()
            feeders.stop()
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
    lines = ["py-spy samples of `edgegw run` at full ingest (4 ports x 50 nodes), %d samples" % total, "", "by thread:"]
    lines += ["  %5.1f%%  %s" % (100.0 * n / total, name) for name, n in threads.most_common(6)]
    lines += ["", "own time (the function itself):"]
    lines += ["  %5.1f%%  %s" % (100.0 * n / total, name) for name, n in own.most_common(25)]
    lines += ["", "inclusive time (the function and what it calls):"]
    lines += ["  %5.1f%%  %s" % (100.0 * n / total, name) for name, n in inclusive.most_common(40)]
    text = "\n".join(lines) + "\n"
    (ROOT / "docs" / "profile-ingest.txt").write_text(text)
    print(text)
    return 0


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    return "%s (%s)" % (name, "/".join(parts[-2:]) if parts else path)


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 15.0))
