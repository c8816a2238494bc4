"""Duplicates on a slow broker link: the real gateway, live nodes, and a broker whose round trip sits
near broker_ack_wait (a congested cellular uplink), through hil/flaky_link.py's delay; no cuts, no
throttle, no backlog. Prints the trial's summary (hil/uplink_trial.py) as JSON: the fraction of
rounds the subscriber got more than once, and whether every acknowledged round arrived.

    python -m bench.slow_broker [--rtt 1.1] [--jitter 0.2] [--seconds 60] [--nodes 10] [--interval 0.5]

Issue 12's review found the router flapping between the broker and the disk path on such a link,
and a large share of the readings delivered twice; docs/PERFORMANCE-notes.md has the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hil.uplink_trial import TrialSettings, run_trial


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_broker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt", type=float, default=1.1, help="round trip to the broker, seconds (default 1.1)")
    parser.add_argument("--jitter", type=float, default=0.2, help="the round trip varies by up to this much either way (default 0.2)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the nodes send (default 60)")
    parser.add_argument("--nodes", type=int, default=10, help="live nodes (default 10)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between a node's rounds (default 0.5)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    settings = TrialSettings(
        backlog_rounds=0,
        backlog_nodes=1,
        live_nodes=args.nodes,
        live_interval=args.interval,
        rate=None,
        cut_every=None,
        delay=args.rtt / 2,
        jitter=args.jitter / 2,
        flaky_s=args.seconds,
        settle_s=120.0,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="edgegw-slow-broker-") as work:
        result = run_trial(Path(work), settings, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result.summary(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
