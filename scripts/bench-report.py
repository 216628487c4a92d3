#!/usr/bin/env python3
"""bench-report.py: turns the JSON lines of `larder bench --json` (with a "transport" field
added by scripts/bench-vs-redis.sh) into the Markdown report (tables per transport, the
project's performance targets with a verdict each, the machine) and an SVG chart of ops/s per
op, Larder vs Redis. Standard library only, so it runs wherever Python 3 does.

    bench-report.py --results results.jsonl [--machine machine.txt]
                    [--markdown report.md] [--chart chart.svg] [--check]

--check runs the module's own tests of its maths and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import unittest
from dataclasses import dataclass
from xml.sax.saxutils import escape

OPS = ["get", "set", "incr", "getmany", "session_get", "ratelimit_sliding", "ratelimit_gcra"]
SINGLE_KEY_OPS = [op for op in OPS if op != "getmany"]
P99_CEILING_US = 1000.0
P99_AT_CALLERS = 16
MIN_DURABLE_SETS = 30_000.0
OTHER_CORES_WARNING = 0.25


@dataclass(frozen=True)
class Target:
    """One row of the targets: Larder's `measure` of `op` over Redis's, at least `ratio`."""

    op: str
    ratio: float
    what: str
    larder_transport: str = "tcp"
    redis_transport: str = "tcp"
    # getmany is compared in keys a second, the rest in calls.
    field: str = "ops_per_sec"


TARGETS = [
    Target("get", 0.7, "get, TCP ≥ 0.7× Redis GET"),
    Target("get", 0.95, "get, Unix socket ≥ 0.95× Redis GET over TCP", larder_transport="unix"),
    Target("set", 0.5, "set (durable) ≥ 0.5× Redis SET with AOF everysec"),
    Target("incr", 0.5, "incr ≥ 0.5× Redis INCR"),
    Target("getmany", 0.8, "getmany keys/s ≥ 0.8× Redis MGET keys/s", field="keys_per_sec"),
    Target("session_get", 1.0, "session_get ≥ 1.0× Redis"),
    Target("ratelimit_sliding", 1.5, "ratelimit_sliding ≥ 1.5× Redis"),
    Target("ratelimit_gcra", 1.0, "ratelimit_gcra ≥ 1.0× Redis"),
]


def load(path: str) -> list[dict]:
    """The runs of a JSON-lines file; blank lines are skipped, anything else must parse."""
    runs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                run = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not JSON: {e}") from None
            for key in ("system", "op", "concurrency", "ops_per_sec", "p99_us"):
                if key not in run:
                    raise SystemExit(f"{path}:{n}: no {key!r} in {line}")
            run.setdefault("transport", "tcp")
            # `--rate` runs (open loop) are reported apart from the closed-loop matrix.
            run["open"] = run.get("target_rate") is not None
            runs.append(run)
    return runs


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None without a positive denominator."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def find(
    runs: list[dict], system: str, op: str, transport: str, callers: int, open_loop: bool = False
) -> dict | None:
    for run in runs:
        if (run["system"], run["op"], run["transport"], run["concurrency"],
                run.get("open", False)) == (system, op, transport, callers, open_loop):
            return run
    return None


def closed(runs: list[dict]) -> list[dict]:
    return [r for r in runs if not r.get("open", False)]


def verdict(value: float | None, target: float) -> str:
    """'met', or by how much it was missed."""
    if value is None:
        return "not run"
    if value >= target:
        return "met"
    return f"**missed** by {(1 - value / target) * 100:.0f}%"


def fmt_num(v: float | None) -> str:
    """A rate or a latency, whole, with thousands separators; "–" when it did not run."""
    return "–" if v is None else f"{v:,.0f}"


def fmt_ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def target_rows(runs: list[dict]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for every target the runs can answer."""
    callers = max((r["concurrency"] for r in closed(runs)), default=0)
    rows = []
    for t in TARGETS:
        larder = find(runs, "larder", t.op, t.larder_transport, callers)
        redis = find(runs, "redis", t.op, t.redis_transport, callers)
        if larder is None or redis is None:
            continue
        r = ratio(larder.get(t.field), redis.get(t.field))
        rows.append((f"{t.what} ({callers} callers)", fmt_ratio(r), verdict(r, t.ratio)))
        if t.op == "set" and t.larder_transport == "tcp":
            sets = larder["ops_per_sec"]
            rows.append(
                (
                    f"set (durable) ≥ {MIN_DURABLE_SETS:,.0f}/s ({callers} callers)",
                    f"{sets:,.0f}/s",
                    verdict(sets, MIN_DURABLE_SETS),
                )
            )
    for open_loop in (False, True):
        for transport in ("tcp", "unix"):
            p99s = [
                (op, find(runs, "larder", op, transport, P99_AT_CALLERS, open_loop))
                for op in SINGLE_KEY_OPS
            ]
            p99s = [(op, run) for op, run in p99s if run is not None]
            if not p99s:
                continue
            worst_op, worst_run = max(p99s, key=lambda p: p[1]["p99_us"])
            worst = worst_run["p99_us"]
            how = (
                f"open loop at {worst_run['target_rate']:,.0f} calls/s"
                if open_loop
                else "closed loop (saturated)"
            )
            rows.append(
                (
                    f"p99 < {P99_CEILING_US:,.0f} µs at {P99_AT_CALLERS} callers, every single-key "
                    f"op, {transport}, {how}",
                    f"worst {worst:,.0f} µs ({worst_op})",
                    "met"
                    if worst < P99_CEILING_US
                    else f"**missed** by {(worst / P99_CEILING_US - 1) * 100:.0f}%",
                )
            )
    return rows


def open_table(runs: list[dict], transport: str) -> list[str]:
    """The open-loop runs over `transport`: the rate asked and reached, and the latencies."""
    rows = [r for r in runs if r.get("open") and r["transport"] == transport]
    if not rows:
        return []
    lines = [
        "| op | callers | calls/s asked | Larder calls/s | Redis calls/s "
        "| Larder p50 / p99 / p99.9 µs | Redis p50 / p99 / p99.9 µs | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for op in OPS:
        for c in sorted({r["concurrency"] for r in rows}):
            larder = find(runs, "larder", op, transport, c, True)
            redis = find(runs, "redis", op, transport, c, True)
            if larder is None and redis is None:
                continue
            asked = (larder or redis)["target_rate"]
            errors = sum(run.get("errors", 0) for run in (larder, redis) if run is not None)
            lines.append(
                f"| {op} | {c} | {fmt_num(asked)} "
                f"| {fmt_num(larder and larder['ops_per_sec'])} "
                f"| {fmt_num(redis and redis['ops_per_sec'])} "
                f"| {latencies(larder)} | {latencies(redis)} | {errors} |"
            )
    return lines


def latencies(run: dict | None) -> str:
    if run is None:
        return "–"
    return " / ".join(fmt_num(run.get(k)) for k in ("p50_us", "p99_us", "p999_us"))


def table(runs: list[dict], transport: str) -> list[str]:
    lines = [
        "| op | callers | Larder ops/s | Redis ops/s | Larder / Redis | Larder p50 / p99 / p99.9 µs "
        "| Redis p50 / p99 / p99.9 µs | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    callers = sorted({r["concurrency"] for r in closed(runs) if r["transport"] == transport})
    for op in OPS:
        for c in callers:
            larder = find(runs, "larder", op, transport, c)
            redis = find(runs, "redis", op, transport, c)
            if larder is None and redis is None:
                continue

            def rate(run: dict | None) -> float | None:
                if run is None:
                    return None
                return run["keys_per_sec"] if op == "getmany" else run["ops_per_sec"]

            errors = sum(run.get("errors", 0) for run in (larder, redis) if run is not None)
            name = "getmany (keys/s)" if op == "getmany" else op
            lines.append(
                f"| {name} | {c} | {fmt_num(rate(larder))} | {fmt_num(rate(redis))} "
                f"| {fmt_ratio(ratio(rate(larder), rate(redis)))} | {latencies(larder)} "
                f"| {latencies(redis)} "
                f"| {errors} |"
            )
    return lines


def markdown(runs: list[dict], machine: str) -> str:
    out = ["# Larder vs Redis", ""]
    if machine.strip():
        out += ["```", machine.strip(), "```", ""]
    out += ["## Targets", "", "| target | measured | verdict |", "|---|---:|---|"]
    out += [f"| {t} | {m} | {v} |" for t, m, v in target_rows(runs)]
    out.append("")
    for transport in ("tcp", "unix"):
        if not any(r["transport"] == transport for r in runs):
            continue
        title = "TCP (127.0.0.1)" if transport == "tcp" else "Unix socket"
        out += [f"## {title}, closed loop", ""] + table(runs, transport) + [""]
        opened = open_table(runs, transport)
        if opened:
            out += [
                f"## {title}, open loop",
                "",
                "Calls due on a fixed timetable; each timed from when it was due, so a stall "
                "counts against every call it held up (no coordinated omission).",
                "",
            ] + opened + [""]
    busy = max((r.get("other_cores") or 0.0 for r in runs), default=0.0)
    if busy > OTHER_CORES_WARNING:
        out += [
            f"**Warning:** other work used up to {busy:.2f} cores during a run; the figures are "
            "depressed by it.",
            "",
        ]
    out += [
        "Ratios are Larder over Redis in the same run, same op, same client, same callers; "
        "getmany counts keys (16 a call). Redis runs with appendonly yes, appendfsync everysec. "
        "Latencies are of successful calls.",
        "",
    ]
    return "\n".join(out)


def svg_chart(runs: list[dict]) -> str:
    """Horizontal bars: ops/s per op, Larder and Redis, one panel per transport, at the most
    callers that ran."""
    runs = closed(runs)
    callers = max((r["concurrency"] for r in runs), default=0)
    transports = [t for t in ("tcp", "unix") if any(r["transport"] == t for r in runs)]
    bar, gap, label_w, plot_w, top = 14, 14, 150, 470, 54
    colours = {"larder": "#2b6cb0", "redis": "#c53030"}
    panels = []
    y = top
    peak = max(
        (r["ops_per_sec"] for r in runs if r["concurrency"] == callers),
        default=1.0,
    ) or 1.0
    for transport in transports:
        rows = [op for op in OPS if find(runs, "larder", op, transport, callers)
                or find(runs, "redis", op, transport, callers)]
        title = "TCP" if transport == "tcp" else "Unix socket"
        panels.append(
            f'<text x="10" y="{y}" font-weight="bold">{escape(title)}, {callers} callers</text>'
        )
        y += 12
        for op in rows:
            pair = [find(runs, system, op, transport, callers) for system in ("larder", "redis")]
            r = ratio(*(run["ops_per_sec"] if run else None for run in pair))
            panels.append(f'<text x="10" y="{y + bar - 2}">{escape(op)}</text>')
            panels.append(
                f'<text x="10" y="{y + 2 * bar - 1}" font-size="11" fill="#555">'
                f"{escape(fmt_ratio(r))} Redis</text>"
            )
            for i, system in enumerate(("larder", "redis")):
                run = find(runs, system, op, transport, callers)
                if run is None:
                    continue
                v = run["ops_per_sec"]
                w = max(1.0, plot_w * v / peak)
                by = y + i * bar
                panels.append(
                    f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="{bar - 2}" '
                    f'fill="{colours[system]}"><title>{escape(system)} {escape(op)}: '
                    f'{v:,.0f} ops/s</title></rect>'
                )
                panels.append(
                    f'<text x="{label_w + w + 4:.1f}" y="{by + bar - 3}" font-size="11">'
                    f"{v:,.0f}</text>"
                )
            y += 2 * bar + gap
        y += 16
    height = y + 10
    width = label_w + plot_w + 90
    legend = (
        f'<rect x="{label_w}" y="30" width="12" height="12" fill="{colours["larder"]}"/>'
        f'<text x="{label_w + 16}" y="40">Larder</text>'
        f'<rect x="{label_w + 80}" y="30" width="12" height="12" fill="{colours["redis"]}"/>'
        f'<text x="{label_w + 96}" y="40">Redis (AOF everysec)</text>'
    )
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            '<text x="10" y="20" font-size="15" font-weight="bold">'
            "Calls per second, Larder vs Redis (same client, same run)</text>",
            legend,
            *panels,
            "</svg>",
            "",
        ]
    )


class Tests(unittest.TestCase):
    def runs(self) -> list[dict]:
        def run(system, op, rate, transport="tcp", callers=64, p99=500.0, asked=None):
            keys = rate * 16 if op == "getmany" else rate
            return {"system": system, "op": op, "concurrency": callers, "transport": transport,
                    "ops_per_sec": rate, "keys_per_sec": keys, "p50_us": 100.0, "p99_us": p99,
                    "p999_us": 900.0, "errors": 0, "target_rate": asked,
                    "open": asked is not None}
        return [
            run("larder", "get", 35_000), run("redis", "get", 50_000),
            run("larder", "get", 49_000, transport="unix"),
            run("larder", "set", 20_000), run("redis", "set", 45_000),
            run("larder", "getmany", 4_000), run("redis", "getmany", 4_000),
            run("larder", "get", 30_000, callers=16, p99=1200.0),
            run("larder", "set", 15_000, callers=16, p99=800.0),
            # Open loop: must not be taken for the closed-loop figures of the same callers.
            run("larder", "get", 4_990, callers=16, p99=700.0, asked=5_000),
            run("redis", "get", 5_000, callers=16, p99=300.0, asked=5_000),
        ]

    def test_ratios_need_a_positive_denominator(self):
        self.assertEqual(ratio(3.0, 2.0), 1.5)
        self.assertIsNone(ratio(3.0, 0.0))
        self.assertIsNone(ratio(None, 2.0))

    def test_verdicts_say_by_how_much_a_target_was_missed(self):
        self.assertEqual(verdict(0.7, 0.7), "met")
        self.assertEqual(verdict(0.35, 0.7), "**missed** by 50%")
        self.assertEqual(verdict(None, 1.0), "not run")

    def test_targets_compare_the_right_rows(self):
        rows = {t: (m, v) for t, m, v in target_rows(self.runs())}
        self.assertEqual(rows["get, TCP ≥ 0.7× Redis GET (64 callers)"], ("0.70×", "met"))
        # The Unix-socket target is against Redis over TCP.
        self.assertEqual(
            rows["get, Unix socket ≥ 0.95× Redis GET over TCP (64 callers)"], ("0.98×", "met")
        )
        self.assertEqual(rows["set (durable) ≥ 30,000/s (64 callers)"][1], "**missed** by 33%")
        self.assertEqual(rows["getmany keys/s ≥ 0.8× Redis MGET keys/s (64 callers)"][0], "1.00×")
        p99 = rows["p99 < 1,000 µs at 16 callers, every single-key op, tcp, closed loop (saturated)"]
        self.assertEqual(p99, ("worst 1,200 µs (get)", "**missed** by 20%"))
        opened = rows[
            "p99 < 1,000 µs at 16 callers, every single-key op, tcp, open loop at 5,000 calls/s"
        ]
        self.assertEqual(opened, ("worst 700 µs (get)", "met"))
        # No incr run: no incr row.
        self.assertFalse(any(t.startswith("incr") for t in rows))

    def test_the_report_and_the_chart_are_well_formed(self):
        import xml.etree.ElementTree as ET

        text = markdown(self.runs(), "cpu: test")
        self.assertIn("| getmany (keys/s) | 64 | 64,000 | 64,000 | 1.00× |", text)
        self.assertIn("| get | 16 | 5,000 | 4,990 | 5,000 | 100 / 700 / 900 | 100 / 300 / 900 | 0 |",
                      text)
        self.assertIn("| get | 16 | 30,000 | – |", text)
        root = ET.fromstring(svg_chart(self.runs()))
        self.assertTrue(root.tag.endswith("svg"))
        self.assertGreaterEqual(len(root.findall("{http://www.w3.org/2000/svg}rect")), 6)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results")
    p.add_argument("--machine")
    p.add_argument("--markdown")
    p.add_argument("--chart")
    p.add_argument("--check", action="store_true", help="run this script's own tests")
    a = p.parse_args()
    if a.check:
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(Tests)
        return 0 if unittest.TextTestRunner(verbosity=2).run(suite).wasSuccessful() else 1
    if not a.results:
        p.error("--results is required")
    runs = load(a.results)
    if not runs:
        raise SystemExit(f"{a.results}: no runs")
    machine = ""
    if a.machine:
        with open(a.machine, encoding="utf-8") as f:
            machine = f.read()
    report = markdown(runs, machine)
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(report)
    else:
        sys.stdout.write(report)
    if a.chart:
        with open(a.chart, "w", encoding="utf-8") as f:
            f.write(svg_chart(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
