#!/usr/bin/env python3
"""Plots the busy-room runs: delivered/s and p99 against offered deliveries/s, one line per server.

Usage: benches/plot.py [RESULTS.jsonl ...] [-o BENCHMARKS-busyroom.svg] [--min-subscribers N]

Without files it takes, for each way of publishing (WebSocket, HTTP), the newest file under
target/bench-results/ written by `benches/run.sh busyroom` / `busyroom-http` whose runs had at
least --min-subscribers subscribers (default 1000, so smoke runs are skipped). Each point is the
median over that file's rounds. The SVG is written by hand (python3 standard library only) so
the plot needs nothing installed; the caption names the files it was drawn from.
"""
import argparse
import glob
import json
import math
import os
import statistics
import sys
from xml.sax.saxutils import escape

COLORS = {
    "beacon": "#1f77b4",
    "beacon-all": "#17becf",
    "beacon-delay": "#393b79",
    "baseline": "#9467bd",
    "bun": "#ff7f0e",
    "node-ws": "#2ca02c",
    "tokio": "#8c564b",
}
SPARE = ["#d62728", "#e377c2", "#7f7f7f", "#bcbd22"]
VIA_TITLE = {"ws": "WebSocket publishers", "http": "HTTP publishers (POST /api/publish)"}


def load(path):
    runs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                runs.append(json.loads(line))
    return runs


def busy_runs(runs):
    return [r for r in runs if r.get("scenario") == "busyroom" and not r.get("failed")]


def newest_files(min_subs):
    """The newest busy-room result file per publish_via, skipping smoke-sized runs."""
    found = {}
    for path in sorted(glob.glob("target/bench-results/busyroom*.jsonl"), reverse=True):
        rs = busy_runs(load(path))
        if not rs or min(r.get("subscribers", 0) for r in rs) < min_subs:
            continue
        via = rs[0].get("publish_via", "ws")
        found.setdefault(via, path)
    return [found[v] for v in ("ws", "http") if v in found]


def series(runs):
    """{server: [(offered, delivered/s, p99 ms, not delivered fraction)]}, medians per rate."""
    by = {}
    for r in runs:
        by.setdefault(r["label"], {}).setdefault(r["rate_offered"], []).append(r)
    out = {}
    for label, rates in by.items():
        pts = []
        for rate in sorted(rates):
            rs = rates[rate]
            pts.append((
                statistics.median(r["offered_deliveries_per_s"] for r in rs),
                statistics.median(r["deliveries_per_s"] for r in rs),
                statistics.median(r["p99_ms"] for r in rs),
                statistics.median(r["undelivered_frac"] for r in rs),
            ))
        out[label] = pts
    return out


def nice_max(v):
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * e:
            return m * e
    return 10 * e


def fmt_rate(v):
    if v >= 1e6:
        return "{:g}M".format(v / 1e6)
    if v >= 1e3:
        return "{:g}k".format(v / 1e3)
    return "{:g}".format(v)


def fmt_ms(v):
    return "{:g} s".format(v / 1000) if v >= 1000 else "{:g} ms".format(v)


class Panel:
    """One chart at (x, y) of size (w, h): a linear x axis and a linear or log y axis."""

    def __init__(self, out, x, y, w, h, xmax, ymin, ymax, log_y):
        self.out, self.x, self.y, self.w, self.h = out, x, y, w, h
        self.xmax, self.ymin, self.ymax, self.log_y = xmax, ymin, ymax, log_y

    def px(self, v):
        return self.x + self.w * v / self.xmax

    def py(self, v):
        if self.log_y:
            v = max(v, self.ymin)
            f = (math.log10(v) - math.log10(self.ymin)) / (math.log10(self.ymax) - math.log10(self.ymin))
        else:
            f = v / self.ymax
        return self.y + self.h * (1 - f)

    def axes(self, title, xlabel, ylabel, yticks, yfmt):
        o = self.out
        o.append(f'<text x="{self.x + self.w / 2}" y="{self.y - 12}" class="t">{escape(title)}</text>')
        for t in yticks:
            yy = self.py(t)
            o.append(f'<line x1="{self.x}" y1="{yy:.1f}" x2="{self.x + self.w}" y2="{yy:.1f}" class="g"/>')
            o.append(f'<text x="{self.x - 6}" y="{yy + 4:.1f}" class="yl">{escape(yfmt(t))}</text>')
        for i in range(6):
            v = self.xmax * i / 5
            xx = self.px(v)
            o.append(f'<line x1="{xx:.1f}" y1="{self.y}" x2="{xx:.1f}" y2="{self.y + self.h}" class="g"/>')
            o.append(f'<text x="{xx:.1f}" y="{self.y + self.h + 16}" class="xl">{fmt_rate(v)}</text>')
        o.append(f'<rect x="{self.x}" y="{self.y}" width="{self.w}" height="{self.h}" class="frame"/>')
        o.append(f'<text x="{self.x + self.w / 2}" y="{self.y + self.h + 34}" class="xl">{escape(xlabel)}</text>')
        o.append(f'<text transform="translate({self.x - 62},{self.y + self.h / 2}) rotate(-90)" '
                 f'class="xl">{escape(ylabel)}</text>')

    def line(self, pts, color, dashed=False):
        d = " ".join(f"{self.px(a):.1f},{self.py(b):.1f}" for a, b in pts)
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        self.out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        if not dashed:
            for a, b in pts:
                self.out.append(f'<circle cx="{self.px(a):.1f}" cy="{self.py(b):.1f}" r="3.5" fill="{color}"/>')


def draw(groups, sources, subscribers, out_path):
    """groups: [(via, {server: points})]; one row of two panels per way of publishing."""
    W, row_h, top = 1120, 330, 40
    H = top + row_h * len(groups) + 30 + 16 * (2 + len(sources))
    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="12">',
        "<style>.t{font-size:14px;font-weight:bold;text-anchor:middle}"
        ".xl{text-anchor:middle;fill:#333}.yl{text-anchor:end;fill:#333}"
        ".g{stroke:#ddd;stroke-width:1}.frame{fill:none;stroke:#555}"
        ".lg{fill:#222}.cap{fill:#555;font-size:11px}</style>",
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" class="t">Busy room: one room of {subscribers:,} subscribers, '
        'delivered/s and p99 against offered deliveries/s</text>',
    ]
    servers = []
    for _, s in groups:
        servers += [k for k in s if k not in servers]
    colors = {}
    for k in servers:
        colors[k] = COLORS.get(k) or SPARE[len([c for c in colors if c not in COLORS]) % len(SPARE)]
    for row, (via, ser) in enumerate(groups):
        y0 = top + 30 + row * row_h
        xmax = nice_max(max(p[0] for pts in ser.values() for p in pts) * 1.05)
        ymax_d = nice_max(max(max(p[0], p[1]) for pts in ser.values() for p in pts) * 1.05)
        left = Panel(o, 90, y0, 360, 230, xmax, 0, ymax_d, False)
        left.axes(f"{VIA_TITLE.get(via, via)}: delivered/s", "offered deliveries/s",
                  "delivered/s", [ymax_d * i / 5 for i in range(6)], fmt_rate)
        left.line([(0, 0), (xmax, xmax)] if xmax <= ymax_d else [(0, 0), (ymax_d, ymax_d)], "#999", dashed=True)
        p99s = [p[2] for pts in ser.values() for p in pts if p[2] > 0]
        lo = 10 ** math.floor(math.log10(min(p99s))) if p99s else 1
        hi = 10 ** math.ceil(math.log10(max(p99s))) if p99s else 10
        hi = max(hi, lo * 10)
        right = Panel(o, 610, y0, 360, 230, xmax, lo, hi, True)
        decades = [lo * 10 ** i for i in range(int(round(math.log10(hi / lo))) + 1)]
        right.axes(f"{VIA_TITLE.get(via, via)}: p99 latency", "offered deliveries/s",
                   "p99 (log scale)", decades, fmt_ms)
        for k in servers:
            pts = ser.get(k)
            if not pts:
                continue
            left.line([(p[0], p[1]) for p in pts], colors[k])
            right.line([(p[0], p[2]) for p in pts], colors[k])
            for p in pts:
                if p[3] >= 0.005:
                    o.append(f'<text x="{left.px(p[0]) + 5:.1f}" y="{left.py(p[1]) + 14:.1f}" '
                             f'fill="{colors[k]}" font-size="10">{p[3]:.0%} not delivered</text>')
        ly = y0 + 6
        for k in servers:
            if k in ser:
                o.append(f'<line x1="990" y1="{ly}" x2="1010" y2="{ly}" stroke="{colors[k]}" stroke-width="3"/>')
                o.append(f'<text x="1015" y="{ly + 4}" class="lg">{escape(k)}</text>')
                ly += 18
    cap_y = top + 30 + row_h * len(groups) - 40
    caption = [
        "Dashed: delivered = offered. Points: medians over rounds. p99: deliveries received in the window.",
        "Not delivered: deliveries owed for the window's publishes and not received by the end of the drain.",
    ] + sources
    for i, line in enumerate(caption):
        o.append(f'<text x="20" y="{cap_y + 16 * i}" class="cap">{escape(line)}</text>')
    o.append("</svg>")
    with open(out_path, "w") as f:
        f.write("\n".join(o) + "\n")


def describe(path, runs):
    rounds = max(sum(1 for r in runs if r["label"] == lab and r["rate_offered"] == rate)
                 for lab, rate in {(r["label"], r["rate_offered"]) for r in runs})
    window = statistics.median(r["seconds"] for r in runs)
    saturated = sum(1 for r in runs if r.get("loadgen_saturated"))
    return (f"{os.path.basename(path)}: {rounds} round(s), {window:.0f} s windows, "
            f"{runs[0].get('publishers', '?')} publishers, drain {runs[0].get('drain_s', '?')} s"
            + (f"; LOAD GENERATOR SATURATED in {saturated} of {len(runs)} runs" if saturated else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("-o", "--out", default="BENCHMARKS-busyroom.svg")
    ap.add_argument("--min-subscribers", type=int, default=1000)
    a = ap.parse_args()
    files = a.files or newest_files(a.min_subscribers)
    if not files:
        sys.exit("no busy-room results under target/bench-results/ (benches/run.sh busyroom)")
    by_via = {}
    sources = []
    for path in files:
        runs = busy_runs(load(path))
        if not runs:
            continue
        for r in runs:
            by_via.setdefault(r.get("publish_via", "ws"), []).append(r)
        sources.append(describe(path, runs))
    groups = [(v, series(by_via[v])) for v in ("ws", "http") if v in by_via]
    if not groups:
        sys.exit("no busy-room runs in " + ", ".join(files))
    subscribers = max(r.get("subscribers", 0) for rs in by_via.values() for r in rs)
    draw(groups, sources, subscribers, a.out)
    print(f"wrote {a.out} from " + ", ".join(files))


if __name__ == "__main__":
    main()
