#!/usr/bin/env python3
"""Medians per server and Beacon's ratios against each peer, from beacon-load's JSON lines.

Usage: benches/report.py RESULTS.jsonl SCENARIO [--strict]   (benches/run.sh calls it)
--strict (smoke runs) exits 1 when a run failed, did nothing, or hit errors.
The busy-room scenarios get their own table: every rate offered, servers side by side.
"""
import json
import statistics
import sys

path, scenario = sys.argv[1], sys.argv[2]
strict = "--strict" in sys.argv[3:]
runs = {}
for line in open(path):
    line = line.strip()
    if not line:
        continue
    r = json.loads(line)
    runs.setdefault(r["label"], []).append(r)



def busy_room_report(runs_by_label):
    """The busy room: one table of every rate offered, servers side by side within each."""
    by_rate = {}
    for s, rs in runs_by_label.items():
        for r in rs:
            by_rate.setdefault(r.get("rate_offered", 0), {}).setdefault(s, []).append(r)
    print()
    print("| offered deliveries/s | server | runs | delivered/s | server CPU µs/delivery | p50 ms "
          "| p99 ms | not delivered | loadgen CPU | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rate in sorted(by_rate):
        first = True
        meds = {}
        for s, rs in by_rate[rate].items():
            ok = [r for r in rs if not r.get("failed")]
            m = {k: med(ok, k) for k in ("offered_deliveries_per_s", "deliveries_per_s",
                                          "server_cpu_us_per_delivery", "p50_ms", "p99_ms",
                                          "undelivered_frac", "loadgen_cpu_util",
                                          "subscribers_closed", "errors")}
            meds[s] = m
            notes = []
            if len(ok) < len(rs):
                notes.append(f"{len(rs) - len(ok)} failed")
            sat = sum(1 for r in ok if r.get("loadgen_saturated"))
            if sat:
                notes.append(f"LOAD GENERATOR SATURATED in {sat} run(s)")
            if m["subscribers_closed"]:
                notes.append(f"{m['subscribers_closed']:.0f} subscribers closed")
            if m["errors"]:
                notes.append(f"errors {m['errors']:.0f}")
            offered = m["offered_deliveries_per_s"]
            label = "{:.0f}k ({:g} publishes/s)".format(offered / 1e3, rate) if first and offered else ""
            first = False
            cells = [
                label, s, str(len(ok)),
                "-" if m["deliveries_per_s"] is None else "{:.0f}k".format(m["deliveries_per_s"] / 1e3),
                "-" if m["server_cpu_us_per_delivery"] is None else "{:.2f}".format(m["server_cpu_us_per_delivery"]),
                "-" if m["p50_ms"] is None else "{:.1f}".format(m["p50_ms"]),
                "-" if m["p99_ms"] is None else "{:.1f}".format(m["p99_ms"]),
                "-" if m["undelivered_frac"] is None else "{:.1%}".format(m["undelivered_frac"]),
                "-" if m["loadgen_cpu_util"] is None else "{:.0%}".format(m["loadgen_cpu_util"]),
                "; ".join(notes),
            ]
            print("| " + " | ".join(cells) + " |")
        for beacon in ("beacon", "beacon-all"):
            b = meds.get(beacon)
            if not b:
                continue
            for s, m in meds.items():
                if s in ("beacon", "beacon-all"):
                    continue
                parts = []
                if b["server_cpu_us_per_delivery"] and m["server_cpu_us_per_delivery"]:
                    parts.append("CPU per delivery {:.2f}x".format(
                        b["server_cpu_us_per_delivery"] / m["server_cpu_us_per_delivery"]))
                if b["deliveries_per_s"] and m["deliveries_per_s"]:
                    parts.append("delivered {:.2f}x".format(b["deliveries_per_s"] / m["deliveries_per_s"]))
                if b["p99_ms"] and m["p99_ms"]:
                    parts.append("p99 {:.2f}x (lower is better)".format(b["p99_ms"] / m["p99_ms"]))
                if parts:
                    print(f"  {rate:g} publishes/s, {beacon} vs {s}: " + ", ".join(parts))
    print("\np50/p99: deliveries received in the window; not delivered: deliveries owed for the"
          " window's publishes and not received by the end of the drain.")


COLS = [
    ("ops_per_s", "ops/s", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("p999_ms", "p999 ms", "{:.2f}"),
    ("last_p99_ms", "last-sub p99 ms", "{:.2f}"),
    ("server_cpu_s_per_mop", "CPU-s/Mop", "{:.2f}"),
    ("ops_per_server_cpu_s", "ops/CPU-s", "{:.0f}"),
    ("server_rss_kib", "RSS MiB", None),
    ("server_kib_per_conn", "KiB/conn", "{:.1f}"),
    ("server_runqueue_wait", "server runq wait", "{:.0%}"),
    ("loadgen_cpu_util", "loadgen CPU", "{:.0%}"),
    ("loadgen_send_lag_p99_ms", "loadgen lag p99 ms", "{:.2f}"),
    ("handshake_p50_ms", "handshake p50 ms", "{:.2f}"),
    ("handshake_p99_ms", "handshake p99 ms", "{:.2f}"),
    ("handshake_max_ms", "handshake max ms", "{:.2f}"),
]
HANDSHAKE = ("handshake_p50_ms", "handshake_p99_ms", "handshake_max_ms")
if scenario in ("idle",):
    COLS = [c for c in COLS if c[0] in ("server_rss_kib", "server_kib_per_conn", "loadgen_cpu_util")]
elif scenario == "handshakes":
    COLS = [c for c in COLS if c[0] in HANDSHAKE + ("server_kib_per_conn", "loadgen_cpu_util")]
else:
    COLS = [c for c in COLS if c[0] not in HANDSHAKE]
if scenario in ("storm",):
    COLS = [c for c in COLS if c[0] not in ("last_p99_ms", "server_kib_per_conn")]
if scenario.startswith("echo"):
    COLS = [c for c in COLS if c[0] not in ("last_p99_ms", "server_kib_per_conn")]


def med(rs, key):
    vals = [r[key] for r in rs if not r.get("failed") and key in r]
    return statistics.median(vals) if vals else None


def fmt(key, f, v):
    if v is None:
        return "-"
    if key == "server_rss_kib":
        return "{:.0f}".format(v / 1024)
    return f.format(v)


if scenario.startswith("busyroom"):
    busy_room_report(runs)
    print(f"\nraw results: {path}")
    if strict:
        bad = [f"{s}: failed, errors, closed subscribers or nothing delivered"
               for s, rs in runs.items() for r in rs
               if r.get("failed") or r.get("errors", 0) > 0 or r.get("subscribers_closed", 0) > 0
               or r.get("ops", 0) == 0]
        if bad:
            print("smoke run failed: " + "; ".join(bad), file=sys.stderr)
            sys.exit(1)
    sys.exit(0)

medians = {s: {k: med(rs, k) for k, _, _ in COLS + [("errors", "", ""), ("complete_publishes", "", "")]} for s, rs in runs.items()}
print()
print("| server | runs | " + " | ".join(h for _, h, _ in COLS) + " | notes |")
print("|---|---|" + "---|" * len(COLS) + "---|")
for s, rs in runs.items():
    ok = [r for r in rs if not r.get("failed")]
    notes = []
    if len(ok) < len(rs):
        notes.append(f"{len(rs) - len(ok)} failed")
    if any(r.get("loadgen_saturated") for r in ok):
        notes.append("LOAD GENERATOR SATURATED in %d run(s)" % sum(1 for r in ok if r.get("loadgen_saturated")))
    errs = medians[s].get("errors")
    if errs:
        notes.append(f"errors {errs:.0f}")
    cp = medians[s].get("complete_publishes")
    if cp is not None and cp < 0.999 and scenario in ("broadcast", "broadcast200", "rooms", "publish"):
        notes.append(f"complete publishes {cp:.1%}")
    # Where the server's CPU went, per shard thread (median per shard over the runs).
    shards = sorted({t for r in ok for t in r.get("threads_cpu_s", {}) if t.startswith("beacon-shard")})
    if len(shards) > 1:
        split = [statistics.median([r["threads_cpu_s"].get(t, 0.0) for r in ok]) for t in shards]
        notes.append("CPU-s per shard " + " / ".join("{:.2f}".format(v) for v in split))
    row = [fmt(k, f, medians[s][k]) for k, _, f in COLS]
    print(f"| {s} | {len(ok)} | " + " | ".join(row) + " | " + "; ".join(notes) + " |")

if "beacon" in medians:
    b = medians["beacon"]
    print()
    for s, m in medians.items():
        if s == "beacon":
            continue
        parts = []
        if scenario == "handshakes":
            if b.get("handshake_p99_ms") and m.get("handshake_p99_ms"):
                parts.append("handshake p99 {:.2f}x (lower is better)".format(b["handshake_p99_ms"] / m["handshake_p99_ms"]))
        elif scenario == "idle":
            if b.get("server_kib_per_conn") and m.get("server_kib_per_conn"):
                parts.append("memory/conn {:.2f}x".format(b["server_kib_per_conn"] / m["server_kib_per_conn"]))
        else:
            if b.get("ops_per_server_cpu_s") and m.get("ops_per_server_cpu_s"):
                parts.append("ops per CPU-second {:.2f}x".format(b["ops_per_server_cpu_s"] / m["ops_per_server_cpu_s"]))
            if b.get("ops_per_s") and m.get("ops_per_s"):
                parts.append("throughput {:.2f}x".format(b["ops_per_s"] / m["ops_per_s"]))
            if b.get("p99_ms") and m.get("p99_ms"):
                parts.append("p99 {:.2f}x (lower is better)".format(b["p99_ms"] / m["p99_ms"]))
        print(f"beacon vs {s}: " + ", ".join(parts))
print(f"\nraw results: {path}")

if strict:
    bad = []
    for s, rs in runs.items():
        for r in rs:
            if r.get("failed") or r.get("errors", 0) > 0:
                bad.append(f"{s}: failed or errors")
            elif scenario in ("idle", "handshakes") and r.get("conns", 0) == 0:
                bad.append(f"{s}: no connection opened")
            elif scenario not in ("idle", "handshakes") and r.get("ops", 0) == 0:
                bad.append(f"{s}: no operation completed")
    if bad:
        print("smoke run failed: " + "; ".join(bad), file=sys.stderr)
        sys.exit(1)
