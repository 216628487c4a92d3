#!/usr/bin/env python3
"""bench-report.py: turns the JSON lines of `larder bench --json` (with "transport" added by
scripts/bench-vs-redis.sh, and "round" too by scripts/bench-targets.sh) into Markdown and an
SVG chart. It owns the project's performance targets (TARGETS): what each compares, its bound,
and the figure it started from. Standard library only, so it runs wherever Python 3 does.

    bench-report.py --results results.jsonl [--machine machine.txt]
                    [--markdown report.md] [--chart chart.svg]
        the matrix's report (the targets its runs answer, tables per transport, the machine)
        and the chart of ops/s per op: Larder, the bare tonic server and Redis side by side
    bench-report.py --targets --results results.jsonl [--skipped PART=REASON ...]
                    [--markdown targets.md]
        the table of every target (bench-targets.sh): each round measured on its own, the
        median round reported with the spread; a target whose part did not run says why

--check runs the module's own tests of its maths and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import unittest
from collections.abc import Callable
from dataclasses import dataclass
from xml.sax.saxutils import escape

OPS = ["get", "set", "incr", "getmany", "session_get", "ratelimit_sliding", "ratelimit_gcra",
       "enqueue", "dequeue_ack"]
QUEUE_OPS = ["enqueue", "dequeue_ack"]
# The ops of one key each that the open-loop targets cover (the queue ops have targets of
# their own).
SINGLE_KEY_OPS = [op for op in OPS if op != "getmany" and op not in QUEUE_OPS]
# The callers the queue targets are stated for.
QUEUE_CALLERS = 16
OTHER_CORES_WARNING = 0.25
# The systems of the pipelined path, as `larder bench --pipeline` and `--redis-pipeline N`
# label their JSON lines, and the Redis depth the targets are stated for.
LARDER_PIPELINE = "larder-pipeline"
REDIS_PIPELINE = "redis-pipeline"
REDIS_PIPELINE_DEPTH = 16


@dataclass(frozen=True)
class Sel:
    """Which run of a round a target reads: system, op, transport, callers, open loop or not,
    and (Redis pipelined) the depth. Footprint runs are apart from every other kind."""

    system: str
    op: str
    transport: str = "tcp"
    callers: int = 64
    open_loop: bool = False
    depth: int | None = None
    footprint: bool = False


def pick(runs: list[dict], s: Sel) -> dict | None:
    """The first run that `s` selects (the first part of a round that ran it)."""
    for run in runs:
        if (
            run["system"] == s.system
            and run["op"] == s.op
            and run["transport"] == s.transport
            and run.get("footprint", False) == s.footprint
            and (s.footprint or (run["concurrency"], run["open"]) == (s.callers, s.open_loop))
            and (s.depth is None or run.get("pipeline_depth") == s.depth)
        ):
            return run
    return None


# What a target reads from one round's runs: (its figure, the figures it came from), or None
# when the round lacks them.
Measure = Callable[[list[dict]], "tuple[float, str] | None"]


def field_ratio(field: str, num: Sel, den: Sel) -> Measure:
    """A target measured as num's `field` over den's, with both figures as its detail."""

    def measure(runs: list[dict]) -> tuple[float, str] | None:
        a, b = pick(runs, num), pick(runs, den)
        if a is None or b is None or a.get(field) is None or b.get(field) is None:
            return None
        r = ratio(a[field], b[field])
        if r is None:
            return None
        unit = {"server_cpu_us_per_op": " µs/call", "p50_us": " µs"}.get(field, "/s")
        return r, f"{fmt_num(a[field])}{unit} vs {fmt_num(b[field])}{unit}"

    return measure


def worst_open(field: str) -> Measure:
    """The open-loop target: the worst `field` (p99 or p99.9) over every single-key op of
    Larder, with Redis's worst beside it."""

    def measure(runs: list[dict]) -> tuple[float, str] | None:
        larder = [r for op in SINGLE_KEY_OPS if (r := pick(runs, Sel("larder", op, callers=16,
                                                                   open_loop=True)))]
        if not larder:
            return None
        worst = max(larder, key=lambda r: r[field])
        redis = [r for op in SINGLE_KEY_OPS if (r := pick(runs, Sel("redis", op, callers=16,
                                                                  open_loop=True)))]
        detail = f"worst {worst['op']}, {len(larder)} ops at {fmt_num(worst['target_rate'])}/s"
        if redis:
            r = max(redis, key=lambda r: r[field])
            detail += f"; Redis worst {fmt_value(r[field], ' µs')} ({r['op']})"
        return worst[field], detail

    return measure


def lone_commit(runs: list[dict]) -> tuple[float, str] | None:
    """One caller over the Unix socket: Set's p50 less Get's, what a lone commit adds."""
    s = pick(runs, Sel("larder", "set", "unix", 1))
    g = pick(runs, Sel("larder", "get", "unix", 1))
    if s is None or g is None:
        return None
    return s["p50_us"] - g["p50_us"], f"Set {fmt_num(s['p50_us'])} µs, Get {fmt_num(g['p50_us'])} µs"


def rss_after_fill(runs: list[dict]) -> tuple[float, str] | None:
    """Larder's RSS right after the footprint's bulk fill, with its peak."""
    for run in runs:
        if run.get("rss_mib") is not None and run.get("state") == "filled":
            return run["rss_mib"], f"peak {fmt_num(run.get('peak_rss_mib'))} MiB"
    return None


@dataclass(frozen=True)
class Target:
    """One row of the targets: `measure` turns one round's runs into (figure, detail); the
    target is met when the figure is at least (`at_least`) or at most `goal`."""

    what: str
    now: str
    goal: float
    at_least: bool
    measure: Measure
    unit: str = "×"
    # The figure must be below the goal, not merely at most it.
    strict: bool = False
    # Which part of bench-targets.sh measures it, for the reason a row was not measured.
    part: str = "closed"


def closed_ratio(op: str) -> Measure:
    """Larder's calls a second over Redis's, closed loop, 64 callers over TCP."""
    return field_ratio("ops_per_sec", Sel("larder", op), Sel("redis", op))


TARGETS = [
    Target("durable Set, server CPU per call / bare tonic Set", "2.1–2.5×", 1.4, False,
           field_ratio("server_cpu_us_per_op", Sel("larder", "set"), Sel("bare", "set"))),
    Target("durable Set throughput / Redis SET", "0.17–0.36×", 0.5, True, closed_ratio("set")),
    Target("Increment / Redis INCR", "0.17–0.28×", 0.5, True, closed_ratio("incr")),
    Target("session_get / Redis MULTI HGETALL+PEXPIRE", "0.5–0.76×", 0.9, True,
           closed_ratio("session_get")),
    Target("ratelimit sliding / Redis", "0.7–0.86×", 1.2, True, closed_ratio("ratelimit_sliding")),
    Target("ratelimit GCRA / Redis", "0.7–0.86×", 1.0, True, closed_ratio("ratelimit_gcra")),
    Target("open loop, 5,000 calls/s over 16 callers, TCP: p99, every single-key op",
           "1.0–14.6 ms", 1000.0, False, worst_open("p99_us"), unit=" µs", strict=True,
           part="open"),
    Target("open loop, the same: p99.9, every single-key op", "up to 25 ms", 3000.0, False,
           worst_open("p999_us"), unit=" µs", strict=True, part="open"),
    Target("pipelined get, 64 callers on one stream / Redis GET one at a time", "–", 2.0, True,
           field_ratio("ops_per_sec", Sel(LARDER_PIPELINE, "get"), Sel("redis", "get")),
           part="pipeline"),
    Target("pipelined durable set / Redis SET one at a time", "–", 1.0, True,
           field_ratio("ops_per_sec", Sel(LARDER_PIPELINE, "set"), Sel("redis", "set")),
           part="pipeline"),
    Target(f"pipelined get / Redis GET pipelined {REDIS_PIPELINE_DEPTH} deep", "–", 0.8, True,
           field_ratio("ops_per_sec", Sel(LARDER_PIPELINE, "get"),
                       Sel(REDIS_PIPELINE, "get", depth=REDIS_PIPELINE_DEPTH)),
           part="pipeline"),
    Target("one caller, Unix socket: durable Set p50 − Get p50", "~150 µs", 40.0, False,
           lone_commit, unit=" µs", part="one"),
    Target("one caller, Unix socket: Get p50 / Redis GET p50", "~2.0–2.3×", 1.5, False,
           field_ratio("p50_us", Sel("larder", "get", "unix", 1), Sel("redis", "get", "unix", 1)),
           part="one"),
    Target(f"dequeue_ack, {QUEUE_CALLERS} callers / Redis BLMOVE + LREM (reliable queue)", "–",
           0.5, True,
           field_ratio("ops_per_sec", Sel("larder", "dequeue_ack", callers=QUEUE_CALLERS),
                       Sel("redis", "dequeue_ack", callers=QUEUE_CALLERS)),
           part="queue"),
    Target(f"enqueue, {QUEUE_CALLERS} callers / durable Set in the same run", "–", 1.0, True,
           field_ratio("ops_per_sec", Sel("larder", "enqueue", callers=QUEUE_CALLERS),
                       Sel("larder", "set", callers=QUEUE_CALLERS)),
           part="queue"),
    Target("reads that miss memory (2M × 1 KiB, 64 MiB LRU, 16 callers) / Redis GET in memory",
           "0.14×", 0.5, True,
           field_ratio("ops_per_sec", Sel("larder", "get", "unix", footprint=True),
                       Sel("redis", "get", "unix", footprint=True)),
           part="footprint"),
    Target("RSS right after a 2M × 1 KiB bulk fill, 64 MiB LRU", "155–167 MiB", 128.0, False,
           rss_after_fill, unit=" MiB", part="footprint"),
]


def load(path: str) -> list[dict]:
    """The runs of a JSON-lines file; blank lines are skipped, anything else must parse. A line
    with "rss_mib" is a memory reading of bench-targets.sh's footprint part, not a run."""
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
            keys = ("system", "state") if "rss_mib" in run else (
                "system", "op", "concurrency", "ops_per_sec", "p99_us")
            for key in keys:
                if key not in run:
                    raise SystemExit(f"{path}:{n}: no {key!r} in {line}")
            run.setdefault("transport", "tcp")
            run.setdefault("round", 1)
            run.setdefault("op", "")
            run.setdefault("concurrency", 0)
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
    """The matrix's run of system, op, transport and callers (footprint runs left out)."""
    return pick(runs, Sel(system, op, transport, callers, open_loop))


def closed(runs: list[dict]) -> list[dict]:
    return [r for r in runs if not r.get("open", False) and "rss_mib" not in r
            and not r.get("footprint", False)]


def verdict(value: float | None, goal: float, at_least: bool = True, strict: bool = False) -> str:
    """'met', or by how much it was missed: the share of the goal still to go."""
    if value is None:
        return "not run"
    if strict and value == goal:
        return "**missed** (at the bound)"
    if (value >= goal) if at_least else (value <= goal):
        return "met"
    if not at_least and value >= 2 * goal:
        times = value / goal
        return f"**missed**: {times:.1f}× the bound" if times < 10 else (
            f"**missed**: {times:,.0f}× the bound")
    missed = (1 - value / goal) if at_least else (value / goal - 1)
    return f"**missed** by {missed * 100:.0f}%"


def fmt_num(v: float | None) -> str:
    """A rate or a latency, whole, with thousands separators; "–" when it did not run."""
    return "–" if v is None else f"{v:,.0f}"


def fmt_ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def fmt_value(v: float, unit: str) -> str:
    if unit == "×":
        return f"{v:.2f}×"
    # Latencies of 10 ms and more read better in ms.
    if unit == " µs" and v >= 10_000:
        return f"{v / 1000:,.0f} ms"
    return f"{v:,.0f}{unit}"


def fmt_goal(t: Target) -> str:
    sign = ">" if t.at_least and t.strict else "≥" if t.at_least else "<" if t.strict else "≤"
    return f"{sign} {t.goal:g}×" if t.unit == "×" else f"{sign} {t.goal:,.0f}{t.unit}"


def rounds(runs: list[dict]) -> list[list[dict]]:
    """The runs grouped by their "round" (one group for the matrix), in round order."""
    return [[r for r in runs if r["round"] == n] for n in sorted({r["round"] for r in runs})]


def measure(t: Target, runs: list[dict]) -> tuple[str, str] | None:
    """(measured, verdict) of target t: each round measured on its own (both sides of a ratio
    from the same minute), then the median round, with the spread over rounds when there are
    several. None when no round has what t needs."""
    got = [m for group in rounds(runs) if (m := t.measure(group)) is not None]
    if not got:
        return None
    got.sort(key=lambda m: m[0])
    value, detail = got[(len(got) - 1) // 2]
    text = f"{fmt_value(value, t.unit)} ({detail})"
    if len(got) > 1:
        text += (f"; {len(got)} rounds, {fmt_value(got[0][0], t.unit)}–"
                 f"{fmt_value(got[-1][0], t.unit)}")
    return text, verdict(value, t.goal, t.at_least, t.strict)


def target_rows(
    runs: list[dict], skipped: dict[str, str] | None = None
) -> list[tuple[str, str, str, str, str]]:
    """(what, now, target, measured, verdict) per target. Without `skipped`, only the targets
    the runs answer (the matrix); with it, every target, and those not measured say why (the
    reason given for their part, else "not run")."""
    rows = []
    for t in TARGETS:
        m = measure(t, runs)
        if m is None:
            if skipped is None:
                continue
            m = ("–", f"not measured: {skipped.get(t.part, 'not run')}")
        rows.append((t.what, t.now, fmt_goal(t), *m))
    return rows


def targets_markdown(runs: list[dict], skipped: dict[str, str] | None = None) -> list[str]:
    lines = ["| what | before | target | measured | verdict |", "|---|---:|---:|---|---|"]
    return lines + [f"| {' | '.join(row)} |" for row in target_rows(runs, skipped)]


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


# The matrix's rows: (Larder-side system, Redis-side system, what the row says beyond the op).
ROW_KINDS = [
    ("larder", "redis", ""),
    (LARDER_PIPELINE, REDIS_PIPELINE, ", pipelined (Larder: one stream per connection; Redis: "
     "{depth} commands a round trip)"),
    ("bare", "redis", ", bare tonic server (HashMap, not durable)"),
]


def table(runs: list[dict], transport: str) -> list[str]:
    lines = [
        "| op | callers | Larder ops/s | Redis ops/s | Larder / Redis | Larder p50 / p99 / p99.9 µs "
        "| Redis p50 / p99 / p99.9 µs | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    callers = sorted({r["concurrency"] for r in closed(runs) if r["transport"] == transport})
    for op in OPS:
        for ours, theirs, how in ROW_KINDS:
            for c in callers:
                larder = find(runs, ours, op, transport, c)
                redis = find(runs, theirs, op, transport, c)
                # Larder's own rows show Redis alone too; the others only when they ran.
                if larder is None and (ours != "larder" or redis is None):
                    continue

                def rate(run: dict | None) -> float | None:
                    if run is None:
                        return None
                    return run["keys_per_sec"] if op == "getmany" else run["ops_per_sec"]

                errors = sum(run.get("errors", 0) for run in (larder, redis) if run is not None)
                name = "getmany (keys/s)" if op == "getmany" else op
                depth = (redis or {}).get("pipeline_depth", "?")
                lines.append(
                    f"| {name}{how.format(depth=depth)} | {c} | {fmt_num(rate(larder))} "
                    f"| {fmt_num(rate(redis))} "
                    f"| {fmt_ratio(ratio(rate(larder), rate(redis)))} | {latencies(larder)} "
                    f"| {latencies(redis)} "
                    f"| {errors} |"
                )
    return lines


def busy_warning(runs: list[dict]) -> list[str]:
    """A warning when other work shared the machine during a run, else nothing."""
    busy = max((r.get("other_cores") or 0.0 for r in runs), default=0.0)
    if busy <= OTHER_CORES_WARNING:
        return []
    return [
        "",
        f"**Warning:** other work used up to {busy:.2f} cores during a run; the figures are "
        "depressed by it.",
        "",
    ]


def markdown(runs: list[dict], machine: str) -> str:
    out = ["# Larder vs Redis", ""]
    if machine.strip():
        out += ["```", machine.strip(), "```", ""]
    out += ["## Targets", "", "The targets this run answers (scripts/bench-targets.sh measures "
            "them all).", ""] + targets_markdown(runs) + [""]
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
    out += busy_warning(runs)
    out += [
        "Ratios are Larder over Redis in the same run, same op, same client, same callers; "
        "getmany counts keys (16 a call). Redis runs with appendonly yes, appendfsync everysec. "
        "Latencies are of successful calls.",
        "",
    ]
    return "\n".join(out)


# The chart's bars per op, in this order, each system where it ran.
CHART_SYSTEMS = [
    ("larder", "Larder", "#2b6cb0"),
    (LARDER_PIPELINE, "Larder, pipelined", "#63b3ed"),
    ("bare", "bare tonic (HashMap)", "#718096"),
    ("redis", "Redis (AOF everysec)", "#c53030"),
    (REDIS_PIPELINE, "Redis, pipelined", "#fc8181"),
]


def svg_chart(runs: list[dict]) -> str:
    """Horizontal bars: ops/s per op, Larder, the bare tonic server and Redis side by side (and
    each pipelined, when that ran), one panel per transport, at the most callers that ran."""
    runs = closed(runs)
    callers = max((r["concurrency"] for r in runs), default=0)
    transports = [t for t in ("tcp", "unix") if any(r["transport"] == t for r in runs)]
    bar, gap, label_w, plot_w, top = 14, 14, 150, 470, 70
    systems = [s for s in CHART_SYSTEMS if any(r["system"] == s[0] for r in runs)]
    panels = []
    y = top
    peak = max(
        (r["ops_per_sec"] for r in runs if r["concurrency"] == callers),
        default=1.0,
    ) or 1.0
    for transport in transports:
        rows = [op for op in OPS
                if any(find(runs, system, op, transport, callers) for system, _, _ in systems)]
        title = "TCP" if transport == "tcp" else "Unix socket"
        panels.append(
            f'<text x="10" y="{y}" font-weight="bold">{escape(title)}, {callers} callers</text>'
        )
        y += 12
        for op in rows:
            present = [(s, colour) for s, _, colour in systems
                       if find(runs, s, op, transport, callers)]
            pair = [find(runs, system, op, transport, callers) for system in ("larder", "redis")]
            r = ratio(*(run["ops_per_sec"] if run else None for run in pair))
            panels.append(f'<text x="10" y="{y + bar - 2}">{escape(op)}</text>')
            panels.append(
                f'<text x="10" y="{y + 2 * bar - 1}" font-size="11" fill="#555">'
                f"{escape(fmt_ratio(r))} Redis</text>"
            )
            for i, (system, colour) in enumerate(present):
                v = find(runs, system, op, transport, callers)["ops_per_sec"]
                w = max(1.0, plot_w * v / peak)
                by = y + i * bar
                panels.append(
                    f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="{bar - 2}" '
                    f'fill="{colour}"><title>{escape(system)} {escape(op)}: '
                    f'{v:,.0f} ops/s</title></rect>'
                )
                panels.append(
                    f'<text x="{label_w + w + 4:.1f}" y="{by + bar - 3}" font-size="11">'
                    f"{v:,.0f}</text>"
                )
            y += max(2, len(present)) * bar + gap
        y += 16
    height = y + 10
    width = label_w + plot_w + 90
    legend = []
    x = 10
    for _, name, colour in systems:
        legend.append(f'<rect x="{x}" y="34" width="12" height="12" fill="{colour}"/>'
                      f'<text x="{x + 16}" y="44" font-size="12">{escape(name)}</text>')
        x += 26 + 7 * len(name)
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            '<text x="10" y="20" font-size="15" font-weight="bold">'
            "Calls per second, Larder, bare tonic and Redis (same client, same run)</text>",
            *legend,
            *panels,
            "</svg>",
            "",
        ]
    )


class Tests(unittest.TestCase):
    @staticmethod
    def mk(system, op, rate, transport="tcp", callers=64, p99=500.0, asked=None, **extra):
        keys = rate * 16 if op == "getmany" else rate
        return {"system": system, "op": op, "concurrency": callers, "transport": transport,
                "ops_per_sec": rate, "keys_per_sec": keys, "p50_us": 100.0, "p99_us": p99,
                "p999_us": 900.0, "errors": 0, "target_rate": asked, "round": 1,
                "open": asked is not None, **extra}

    def runs(self) -> list[dict]:
        run = self.mk
        return [
            run("larder", "get", 35_000), run("redis", "get", 50_000),
            run("larder", "get", 49_000, transport="unix"),
            run("larder", "set", 20_000, server_cpu_us_per_op=42.0),
            run("bare", "set", 30_000, server_cpu_us_per_op=20.0),
            run("bare", "get", 36_000), run("redis", "set", 45_000),
            run("larder", "getmany", 4_000), run("redis", "getmany", 4_000),
            run("larder", "get", 30_000, callers=16, p99=1200.0),
            run("larder", "set", 15_000, callers=16, p99=800.0),
            # Open loop: must not be taken for the closed-loop figures of the same callers.
            run("larder", "get", 4_990, callers=16, p99=700.0, asked=5_000),
            run("larder", "set", 4_990, callers=16, p99=1_500.0, asked=5_000),
            run("redis", "get", 5_000, callers=16, p99=300.0, asked=5_000),
            run(LARDER_PIPELINE, "get", 120_000),
            run(REDIS_PIPELINE, "get", 200_000, pipeline_depth=16),
        ]

    def test_ratios_need_a_positive_denominator(self):
        self.assertEqual(ratio(3.0, 2.0), 1.5)
        self.assertIsNone(ratio(3.0, 0.0))
        self.assertIsNone(ratio(None, 2.0))

    def test_verdicts_say_by_how_much_a_target_was_missed_either_way(self):
        self.assertEqual(verdict(0.7, 0.7), "met")
        self.assertEqual(verdict(0.35, 0.7), "**missed** by 50%")
        self.assertEqual(verdict(None, 1.0), "not run")
        self.assertEqual(verdict(40.0, 40.0, at_least=False), "met")
        self.assertEqual(verdict(70.0, 40.0, at_least=False), "**missed** by 75%")
        self.assertEqual(verdict(150.0, 40.0, at_least=False), "**missed**: 3.8× the bound")
        self.assertEqual(verdict(1000.0, 1000.0, at_least=False, strict=True),
                         "**missed** (at the bound)")

    def test_targets_compare_the_right_rows(self):
        rows = {w: (g, m, v) for w, _, g, m, v in target_rows(self.runs())}
        self.assertEqual(rows["durable Set, server CPU per call / bare tonic Set"],
                         ("≤ 1.4×", "2.10× (42 µs/call vs 20 µs/call)", "**missed** by 50%"))
        self.assertEqual(rows["durable Set throughput / Redis SET"][1:],
                         ("0.44× (20,000/s vs 45,000/s)", "**missed** by 11%"))
        # The closed-loop p99 of 1,200 µs at 16 callers is not the open loop's.
        self.assertEqual(
            rows["open loop, 5,000 calls/s over 16 callers, TCP: p99, every single-key op"][1:],
            ("1,500 µs (worst set, 2 ops at 5,000/s; Redis worst 300 µs (get))",
             "**missed** by 50%"))
        self.assertEqual(
            rows["pipelined get, 64 callers on one stream / Redis GET one at a time"][1:],
            ("2.40× (120,000/s vs 50,000/s)", "met"))
        self.assertEqual(rows["pipelined get / Redis GET pipelined 16 deep"][1][:5], "0.60×")
        # No incr run, no pipelined set: no rows for them in the matrix's report.
        self.assertNotIn("Increment / Redis INCR", rows)
        self.assertNotIn("pipelined durable set / Redis SET one at a time", rows)

    def test_every_target_has_a_row_when_asked_and_a_reason_when_not_measured(self):
        rows = target_rows(self.runs(), {"pipeline": "this build has no --pipeline"})
        self.assertEqual(len(rows), len(TARGETS))
        by = {w: v for w, _, _, _, v in rows}
        self.assertEqual(by["pipelined durable set / Redis SET one at a time"],
                         "not measured: this build has no --pipeline")
        self.assertEqual(by["Increment / Redis INCR"], "not measured: not run")

    def test_rounds_are_measured_apart_and_the_median_round_reported(self):
        runs = []
        for n, (ours, theirs) in enumerate([(10, 100), (90, 100), (30, 100)], 1):
            runs += [dict(self.mk("larder", "incr", ours), round=n),
                     dict(self.mk("redis", "incr", theirs), round=n)]
        rows = {w: (m, v) for w, _, _, m, v in target_rows(runs)}
        self.assertEqual(rows["Increment / Redis INCR"],
                         ("0.30× (30/s vs 100/s); 3 rounds, 0.10×–0.90×", "**missed** by 40%"))

    def test_queue_targets_compare_dequeue_ack_with_redis_and_enqueue_with_set(self):
        run = self.mk
        runs = [
            run("larder", "set", 20_000, callers=16), run("larder", "enqueue", 24_000, callers=16),
            run("larder", "dequeue_ack", 9_000, callers=16),
            run("redis", "dequeue_ack", 25_000, callers=16),
            # The closed part's 64-caller Set is not the queue part's.
            run("larder", "set", 30_000),
            # Open-loop queue runs are not the closed ones, nor in the open-loop targets.
            run("larder", "dequeue_ack", 5_000, callers=16, p99=90_000.0, asked=5_000),
            run("larder", "get", 5_000, callers=16, p99=700.0, asked=5_000),
        ]
        rows = {w: (m, v) for w, _, _, m, v in target_rows(runs)}
        self.assertEqual(rows["dequeue_ack, 16 callers / Redis BLMOVE + LREM (reliable queue)"],
                         ("0.36× (9,000/s vs 25,000/s)", "**missed** by 28%"))
        self.assertEqual(rows["enqueue, 16 callers / durable Set in the same run"],
                         ("1.20× (24,000/s vs 20,000/s)", "met"))
        self.assertEqual(
            rows["open loop, 5,000 calls/s over 16 callers, TCP: p99, every single-key op"][0],
            "700 µs (worst get, 1 ops at 5,000/s)")
        text = markdown(runs, "")
        self.assertIn("| dequeue_ack | 16 | 9,000 | 25,000 | 0.36× |", text)
        self.assertIn("| dequeue_ack | 16 | 5,000 | 5,000 | – |", text)

    def test_one_caller_and_footprint_targets(self):
        run = self.mk
        runs = [
            dict(run("larder", "set", 4_000, transport="unix", callers=1), p50_us=250.0),
            dict(run("larder", "get", 9_000, transport="unix", callers=1), p50_us=98.0),
            dict(run("redis", "get", 20_000, transport="unix", callers=1), p50_us=49.0),
            # The footprint's reads: 16 callers over the Unix socket, apart from the matrix's.
            run("larder", "get", 19_700, transport="unix", callers=16, footprint=True),
            run("redis", "get", 140_000, transport="unix", callers=16, footprint=True),
            {"system": "larder", "state": "filled", "rss_mib": 160.0, "peak_rss_mib": 170.0,
             "round": 1, "transport": "unix", "op": "", "concurrency": 0, "open": False},
        ]
        rows = {w: (m, v) for w, _, _, m, v in target_rows(runs)}
        self.assertEqual(rows["one caller, Unix socket: durable Set p50 − Get p50"],
                         ("152 µs (Set 250 µs, Get 98 µs)", "**missed**: 3.8× the bound"))
        self.assertEqual(rows["one caller, Unix socket: Get p50 / Redis GET p50"],
                         ("2.00× (98 µs vs 49 µs)", "**missed** by 33%"))
        self.assertEqual(rows["RSS right after a 2M × 1 KiB bulk fill, 64 MiB LRU"],
                         ("160 MiB (peak 170 MiB)", "**missed** by 25%"))
        key = "reads that miss memory (2M × 1 KiB, 64 MiB LRU, 16 callers) / Redis GET in memory"
        self.assertEqual(rows[key][0][:5], "0.14×")
        # Footprint runs are not the matrix's 16-caller Unix rows.
        self.assertIsNone(find(runs, "larder", "get", "unix", 16))

    def test_load_takes_runs_and_memory_readings(self):
        import os
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write(json.dumps({"system": "larder", "op": "get", "concurrency": 1,
                                "ops_per_sec": 5.0, "p99_us": 1.0, "target_rate": None}) + "\n\n")
            f.write(json.dumps({"system": "larder", "state": "filled", "rss_mib": 3}) + "\n")
        try:
            runs = load(f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual([(r["transport"], r["round"], r["open"]) for r in runs],
                         [("tcp", 1, False), ("tcp", 1, False)])

    def test_the_report_and_the_chart_are_well_formed(self):
        import xml.etree.ElementTree as ET

        text = markdown(self.runs(), "cpu: test")
        self.assertIn("| getmany (keys/s) | 64 | 64,000 | 64,000 | 1.00× |", text)
        self.assertIn("| get | 16 | 5,000 | 4,990 | 5,000 | 100 / 700 / 900 | 100 / 300 / 900 | 0 |",
                      text)
        self.assertIn("| get | 16 | 30,000 | – |", text)
        self.assertIn("| get, pipelined (Larder: one stream per connection; Redis: 16 commands a "
                      "round trip) | 64 | 120,000 | 200,000 | 0.60× |", text)
        self.assertIn("| get, bare tonic server (HashMap, not durable) | 64 | 36,000 | 50,000 |",
                      text)
        root = ET.fromstring(svg_chart(self.runs()))
        self.assertTrue(root.tag.endswith("svg"))
        bars = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
        # get over TCP: Larder, pipelined Larder, bare, Redis and pipelined Redis side by side;
        # then the Unix socket's panel, Larder alone.
        self.assertEqual([b.split(" ")[0] for b in bars if " get:" in b],
                         ["larder", LARDER_PIPELINE, "bare", "redis", REDIS_PIPELINE, "larder"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results")
    p.add_argument("--machine")
    p.add_argument("--markdown")
    p.add_argument("--chart")
    p.add_argument("--targets", action="store_true",
                   help="print only the table of targets, every row (bench-targets.sh)")
    p.add_argument("--skipped", action="append", default=[], metavar="PART=REASON",
                   help="with --targets: why a part (closed, open, pipeline, queue, one, "
                   "footprint) was not measured")
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
    if a.targets:
        skipped = dict(s.split("=", 1) for s in a.skipped if "=" in s)
        report = "\n".join(targets_markdown(runs, skipped) + busy_warning(runs)) + "\n"
    else:
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
