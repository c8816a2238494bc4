"""docs/PERFORMANCE.md and its plots, regenerated from the newest line of bench/results.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BUDGET = [
    # (label, result, key, target, better, unit)
    ("durable end-to-end throughput", "ingest_gateway", "readings_per_s", 250_000, "higher", "readings/s"),
    ("p99 frame -> ACK at 10,000 readings/s (after a 2 s warm-up)", "steady_gateway", "ack_p99_ms", 20, "lower", "ms"),
    ("p99 frame -> subscriber at 10,000 readings/s (after a 2 s warm-up)", "steady_gateway", "e2e_p99_ms", 50, "lower", "ms"),
    ("p99 frame -> subscriber at 10,000 readings/s, warm-up included", "steady_gateway", "e2e_p99_with_warmup_ms", 50, "lower", "ms"),
    ("backlog drain", "drain_gateway", "drain_readings_per_s", 500_000, "higher", "readings/s"),
    ("live readings during the drain, p99", "drain_gateway", "live_p99_ms", 1000, "lower", "ms"),
    ("peak RSS, 1,000 nodes and the buffered backlog", "drain_gateway", "peak_rss_mb", 45, "lower", "MB"),
    ("bytes on disk per buffered reading", "drain_gateway", "disk_bytes_per_reading", 8, "lower", "B"),
    (
        "MQTT payload bytes per reading (50-reading pack, an emulated node's 6 channels)",
        "footprint",
        "senml_cbor_bytes_per_reading_50",
        12,
        "lower",
        "B",
    ),
    (
        "MQTT payload bytes per reading (50-reading pack, integers)",
        "footprint",
        "senml_cbor_bytes_per_reading_50_integer",
        12,
        "lower",
        "B",
    ),
    (
        "MQTT payload bytes per reading (50-reading pack, decimals)",
        "footprint",
        "senml_cbor_bytes_per_reading_50_decimal",
        12,
        "lower",
        "B",
    ),
    ("link bytes per reading (10-sample frame)", "footprint", "link_bytes_per_reading", 8, "lower", "B"),
    ("firmware heap: smallest heap the node runs in, its code in ROMFS (64-bit unix port)", "firmware", "heap_kb", 32, "lower", "KB"),
    (
        "flaky uplink, 10 KB/s cut every ~8 s for 126 s, 400 live readings/s: buffered at the end / at the start",
        "flaky_uplink",
        "backlog_kept",
        0.99,
        "lower",
        "",
    ),
    (
        "flaky uplink: rounds that arrived twice / rounds delivered (a stop and restart included)",
        "flaky_uplink",
        "duplicate_fraction",
        0.05,
        "lower",
        "",
    ),
    ("SIGTERM to exit during a drain on the flaky uplink", "flaky_uplink", "stop_s", 2, "lower", "s"),
]

COMPARED = [
    # (label, key, better)
    ("readings/s acknowledged, full speed", "ingest", "readings_per_s", "higher"),
    ("CPU seconds per million readings, full speed", "ingest", "cpu_s_per_million", "lower"),
    ("frame -> ACK p50 at 10,000 readings/s (ms)", "steady", "ack_p50_ms", "lower"),
    ("frame -> ACK p99 at 10,000 readings/s (ms)", "steady", "ack_p99_ms", "lower"),
    ("frame -> subscriber p50 at 10,000 readings/s (ms)", "steady", "e2e_p50_ms", "lower"),
    ("frame -> subscriber p99 at 10,000 readings/s (ms)", "steady", "e2e_p99_ms", "lower"),
    ("readings delivered at 10,000 readings/s (fraction)", "steady", "delivered_fraction", "higher"),
    ("CPU seconds per million readings at 10,000 readings/s", "steady", "cpu_s_per_million", "lower"),
    ("peak RSS at 10,000 readings/s, 1,000 nodes (MB)", "steady", "peak_rss_mb", "lower"),
    ("readings lost when the broker is away for 30 s (fraction)", "outage", "lost_fraction", "lower"),
]


# Issue 12: storage and CPU at city load. "Before" is main before any issue-12 change; "after" the newest run
# of other code. Budgets: the issue's; CPU at most half of what the issue measured on main (208 and 89 CPU-s
# per million readings) and below Node-RED's flow measured beside it (172 and 54).
BEFORE_COMMIT = "b336f55"
NODE_RED_CPU = {"cpu_1000": 172, "cpu_8000": 54}
ISSUE_CPU = {"cpu_1000": 208, "cpu_8000": 89}
CITY_STEPS = ("city_1000", "city_10000", "cpu_1000", "cpu_8000")
STEPS_COMPARED = (*CITY_STEPS, "ingest_gateway", "steady_gateway")
PHASE_FIGURES = [
    # (column, key, unit)
    ("readings/s ACKed", "readings_per_s", ""),
    ("bytes written per reading", "write_bytes_per_reading", "B"),
    ("GB a day", "gb_per_day", ""),
    ("fsyncs a second", "fsyncs_per_s", ""),
    ("CPU µs per reading", "cpu_us_per_reading", ""),
    ("frame -> ACK p99", "ack_p99_ms", "ms"),
]
STORAGE_BUDGET = {"broker_up": 16, "broker_down": 64, "broker_down_later": 64}  # bytes written per reading
PHASES = [("broker_up", "broker up"), ("broker_down", "broker down, 1st minute"), ("broker_down_later", "broker down, 2nd minute")]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return "%.3g" % value if abs(value) < 10 else "%.1f" % value
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(ours: Any, theirs: Any) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(theirs, (int, float)) or theirs == 0:
        return "-"
    return "%.2fx" % (ours / theirs)


def _newest_of_each_step(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest run's header, and for every step the newest run that measured it (partial runs, `--only`,
    measure some steps again without running everything)."""
    if records[-1].get("quick"):
        return records[-1]  # a smoke run reports itself alone
    merged: dict[str, Any] = {}
    for record in records:
        if not record.get("quick"):
            merged.update({key: value for key, value in record.items() if isinstance(value, dict) and key != "machine"})
    return {**records[-1], **merged}


def _issue12(records: list[dict[str, Any]]) -> list[str]:
    """Storage and CPU at city load, before and after issue 12, against its budget."""
    full = [r for r in records if not r.get("quick")] or records[-1:]
    if not any(step in r for r in full for step in CITY_STEPS):
        return []
    # Runs that recorded their commit: "before" those of BEFORE_COMMIT, "after" the others; each step from the
    # newest run of its side that measured it (partial runs measure some steps again).
    # "After" is the newest code measured: runs of earlier issue-12 code (one helper's change landed before
    # another's) are named under the table, not mixed in.
    before = _merge([r for r in full if r.get("code_commit") == BEFORE_COMMIT])
    since = [r for r in full if r.get("code_commit") not in (None, "", BEFORE_COMMIT) and any(step in r for step in STEPS_COMPARED)]
    after = _merge([r for r in since if r["code_commit"] == since[-1]["code_commit"]]) if since else None
    between = sorted({"%s on %s" % (r["code_commit"], r.get("when", "?")) for r in since if r["code_commit"] != since[-1]["code_commit"]})

    def value(run: dict[str, Any] | None, step: str, *keys: str) -> Any:
        found: Any = run.get(step) if run else None
        for key in keys:
            found = found.get(key) if isinstance(found, dict) else None
        return found

    def verdict(subject: Any, target: float, better: str = "lower") -> str:
        if subject is None:
            return "not measured"
        return "met" if (subject >= target if better == "higher" else subject <= target) else "**not met**"

    def typical(run: dict[str, Any] | None, unit: str, step: str, *keys: str) -> tuple[Any, str]:
        """The median over every run of that side that measured it (these move with the machine's load), and
        how it is shown: the median, with the runs when there are several."""
        found = [value({step: result}, step, *keys) for result in (run or {}).get("every", {}).get(step, [])]
        numbers = sorted(x for x in found if isinstance(x, (int, float)))
        if not numbers:
            return None, "-"
        middle = numbers[len(numbers) // 2] if len(numbers) % 2 else (numbers[len(numbers) // 2 - 1] + numbers[len(numbers) // 2]) / 2
        shown = _with_unit(middle, unit)
        return middle, shown + ("" if len(numbers) == 1 else " (median of %s)" % ", ".join(_fmt(x) for x in found if x is not None))

    def row(label: str, key: tuple[str, ...], unit: str, target: float | None, better: str = "lower") -> str:
        (was, was_shown), (now, now_shown) = typical(before, unit, *key), typical(after, unit, *key)
        budget = "" if target is None else "%s %s" % ("≥" if better == "higher" else "≤", _with_unit(target, unit))
        judged = "" if target is None else verdict(now if after else was, target, better)
        return "| %s | %s | %s | %s | %s |" % (label, budget, was_shown, now_shown, judged)

    def named(run: dict[str, Any] | None) -> str:
        if run is None:
            return "not run yet"
        return ", ".join(run["runs"])

    out = [
        "## Issue 12: storage and CPU at city load, before and after",
        "",
        "Before: main before any issue-12 change, %s. After: %s." % (named(before), named(after)),
        "A verdict is the after run's (the before run's while there is none). Each node sends one 10-sample frame",
        "a minute, spread evenly; measured over a steady window after the HELLOs and a minute of warm-up (every",
        "node's first frame), then the same with the broker stopped. Bytes are the gateway process's `/proc/PID/io`",
        "`write_bytes` over the window (database, WAL, checkpoints and its log file together) divided by the",
        "readings ACKed in it; fsyncs come from strace in a separate sub-window; CPU is utime + stime. Each cell is",
        "before -> after. See the notes at the end for the commands and the machine.",
        "",
        "| load | " + " | ".join(column for column, _key, _unit in PHASE_FIGURES) + " | bytes budget | |",
        "|---|" + "---|" * (len(PHASE_FIGURES) + 2),
    ]
    for step, nodes in (("city_1000", "1,000"), ("city_10000", "10,000")):
        for phase, said in PHASES:
            if value(before, step, phase) is None and value(after, step, phase) is None:
                continue
            cells = [
                "%s -> %s" % (_with_unit(value(before, step, phase, key), unit), _with_unit(value(after, step, phase, key), unit))
                for _column, key, unit in PHASE_FIGURES
            ]
            subject = value(after or before, step, phase, "write_bytes_per_reading")
            budget = STORAGE_BUDGET[phase]
            out.append("| %s nodes, %s | %s | ≤ %d B | %s |" % (nodes, said, " | ".join(cells), budget, verdict(subject, budget)))
    out += ["", "| figure | budget | before | after | |", "|---|---|---|---|---|"]
    for step, rate in (("cpu_1000", "1,000"), ("cpu_8000", "8,000")):
        label = "CPU-seconds per million readings at %s readings/s (issue: %d; Node-RED %d)" % (rate, ISSUE_CPU[step], NODE_RED_CPU[step])
        out.append(row(label, (step, "broker_up", "cpu_us_per_reading"), "", min(ISSUE_CPU[step] / 2, NODE_RED_CPU[step])))
    out.append(row("frame -> ACK p99 at 10,000 readings/s", ("steady_gateway", "ack_p99_ms"), "ms", 20))
    out.append(row("frame -> subscriber p99 at 10,000 readings/s", ("steady_gateway", "e2e_p99_ms"), "ms", 50))
    throughput_before = typical(before, "", "ingest_gateway", "readings_per_s")[0] if after else None  # no verdict against itself
    out.append(
        row("durable end-to-end throughput, full speed (readings/s)", ("ingest_gateway", "readings_per_s"), "", throughput_before, "higher")
    )
    out.append(row("CPU-seconds per million readings, full speed", ("ingest_gateway", "cpu_s_per_million"), "", None))
    out += [
        "",
        "Where the writes go, from the strace sub-windows: bytes a second handed to write calls, by file (the kernel",
        "counts whole pages in `write_bytes`, so it can exceed these), and fsyncs a second by file.",
        "",
    ]
    out += ["| run | load | write calls, bytes a second by file | fsyncs a second by file |", "|---|---|---|---|"]
    for name, run in (("before", before), ("after", after)):
        for step in CITY_STEPS:
            for phase, _said in PHASES:
                found = value(run, step, phase)
                if not found:
                    continue
                by_file = found.get("write_call_bytes_per_s_by_file", {})
                syncs = found.get("fsyncs_by_file", {})
                traced = found.get("traced_s") or 1
                written = ", ".join("%s %s" % (f, _fmt(b)) for f, b in by_file.items()) or found.get("trace_error", "-")
                synced = ", ".join("%s %.3g" % (f, c / traced) for f, c in syncs.items()) or "-"
                out.append("| %s | %s, %s | %s | %s |" % (name, step, phase.replace("_", " "), written, synced))
    if between:
        out += ["", "Runs of issue-12 code older than the after column, in `bench/results.jsonl`: %s." % ", ".join(between)]
    return [*out, ""]


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Each step from the newest of `runs` that measured it, and which runs those were (commit and date)."""
    if not runs:
        return None
    merged: dict[str, Any] = {"every": {}}
    source: dict[str, str] = {}
    for run in runs:
        label = "%s%s on %s" % (run.get("code_commit"), " (edited)" if run.get("dirty") else "", run.get("when", "?"))
        for key, value in run.items():
            if not isinstance(value, dict) or key in ("machine", "every") or "error" in value:
                continue
            if key.startswith("ingest_") and value.get("ran_dry") is not False:
                continue  # the feeders' ceiling, not the gateway's (see the notes)
            merged[key] = value
            merged["every"].setdefault(key, []).append(value)
            source[key] = label
    merged["runs"] = sorted(set(source.values()), key=lambda label: label.split(" on ")[-1])
    return merged


def _with_unit(value: Any, unit: str) -> str:
    return "-" if value is None else ("%s %s" % (_fmt(value), unit)).strip()


def write_report(results_file: Path, doc: Path) -> None:
    lines = [line for line in results_file.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    latest: dict[str, Any] = _newest_of_each_step(records)
    out = [
        "# Performance",
        "",
        "Generated by `%s` on %s from `bench/results.jsonl` (%d run%s recorded; each step's newest run that measured it)."
        % (latest.get("command", "make bench"), latest.get("when", "?"), len(lines), "" if len(lines) == 1 else "s"),
        "Machine: %s, %s cores, Python %s, Linux %s."
        % (latest["machine"]["cpu"], latest["machine"]["cores"], latest["machine"]["python"], latest["machine"]["kernel"]),
        "Everything real: `edgegw run` as its own process, mosquitto 2.0.11 on loopback, pseudo-terminals as serial",
        "ports fed by `bench/feeder.py` (one process per port, pre-encoded 10-sample READINGS frames, span rule kept,",
        "ACKs read back), an MQTT subscriber in the benchmark process. Benchmarks measure; they never fail a build.",
        "",
        "## The budget",
        "",
        "| target | measured | budget | |",
        "|---|---|---|---|",
    ]
    for label, section, key, target, better, unit in BUDGET:
        value = latest.get(section, {}).get(key)
        met = None if value is None else (value >= target if better == "higher" else value <= target)
        verdict = "not measured" if met is None else ("met" if met else "**not met**")
        out.append(
            "| %s | %s %s | %s %s %s | %s |" % (label, _fmt(value), unit, "≥" if better == "higher" else "≤", _fmt(target), unit, verdict)
        )
    runs = [record for record in records if not record.get("quick") and not record.get("only")]
    if len(runs) > 1:
        out += [
            "",
            "These numbers move between runs on this shared 2-core machine (the feeders, mosquitto and the subscriber",
            "share the cores with the gateway). Every full run recorded in `bench/results.jsonl`, oldest first (code",
            "changed between them: see the notes below and `git log bench/results.jsonl`):",
            "",
            "| target | runs |",
            "|---|---|",
        ]
        for label, section, key, _target, _better, unit in BUDGET:
            values = [run.get(section, {}).get(key) for run in runs]
            out.append("| %s | %s |" % (label, ", ".join(_fmt(v) for v in values) + " " + unit))
    out += [
        "",
        "## edgegw against the baseline, same frames, same broker",
        "",
        "The baseline (`bench/baseline.py`) is the script a typical user would write: pyserial, ACK every frame at",
        "once, one JSON MQTT publish per reading at QoS 1, nothing on disk. One process per port.",
        "",
        "| figure | edgegw | baseline | edgegw / baseline |",
        "|---|---|---|---|",
    ]
    for label, section, key, _better in COMPARED:
        ours = latest.get("%s_gateway" % section, {}).get(key)
        theirs = latest.get("%s_baseline" % section, {}).get(key)
        out.append("| %s | %s | %s | %s |" % (label, _fmt(ours), _fmt(theirs), _ratio(ours, theirs)))
    out += ["", *_issue12(records)]
    out += ["## Every number shown (each step's newest run)", "", "```json", json.dumps(latest, indent=1), "```", ""]
    plots = _plots(latest, doc.parent)
    if plots:
        out += ["## Plots", ""] + ["![%s](%s)" % (name, name) for name in plots] + [""]
    notes = doc.parent / "PERFORMANCE-notes.md"
    if notes.exists():
        out += [notes.read_text()]
    doc.write_text("\n".join(out))


def _plots(latest: dict[str, Any], folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    labels = ["ingest, full speed", "backlog drain"]
    ours = [latest.get("ingest_gateway", {}).get("readings_per_s") or 0, latest.get("drain_gateway", {}).get("drain_readings_per_s") or 0]
    theirs = [latest.get("ingest_baseline", {}).get("readings_per_s") or 0, 0]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    positions = range(len(labels))
    axis.bar([p - 0.2 for p in positions], ours, width=0.4, label="edgegw")
    axis.bar([p + 0.2 for p in positions], theirs, width=0.4, label="baseline")
    axis.set_xticks(list(positions), labels)
    axis.set_ylabel("readings/s")
    axis.set_title("Throughput")
    axis.legend()
    figure.tight_layout()
    figure.savefig(folder / "perf-throughput.png", dpi=100)
    plt.close(figure)
    made.append("perf-throughput.png")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    names = ["ACK p50", "ACK p99", "subscriber p50", "subscriber p99"]
    keys = ["ack_p50_ms", "ack_p99_ms", "e2e_p50_ms", "e2e_p99_ms"]
    for offset, (who, section) in zip((-0.2, 0.2), (("edgegw", "steady_gateway"), ("baseline", "steady_baseline")), strict=True):
        values = [latest.get(section, {}).get(key) or 0 for key in keys]
        axis.bar([p + offset for p in range(len(names))], values, width=0.4, label=who)
    axis.set_xticks(list(range(len(names))), names)
    axis.set_ylabel("ms")
    axis.set_yscale("symlog")
    axis.set_title("Latency at 10,000 readings/s")
    axis.legend()
    figure.tight_layout()
    figure.savefig(folder / "perf-latency.png", dpi=100)
    plt.close(figure)
    made.append("perf-latency.png")
    return made
