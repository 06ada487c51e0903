#!/usr/bin/env bash
# Runs Autobahn TestSuite cases 1.* to 10.* (through kosoku, a native runner of the Autobahn
# case files) against a WebSocket echo server and compares the verdicts with expected.json.
#
#   tests/autobahn/run.sh ws://127.0.0.1:9002 [outdir]
#
# Start the server first, e.g. the codec's dev echo server:
#   cargo run -p beacon --example codec_echo -- 127.0.0.1:9002
#
# Writes <outdir>/reports/ (kosoku's Autobahn-format index.json + HTML) and <outdir>/summary.json
# (case id -> behaviour, the same shape as expected.json). Exits non-zero if any case is not
# OK / NON-STRICT / INFORMATIONAL, or if a verdict differs from expected.json.
# Only network use: pip installing kosoku from PyPI into a venv (reused on later runs).
set -euo pipefail

url="${1:?usage: $0 ws://host:port [outdir]}"
here="$(cd "$(dirname "$0")" && pwd)"
outdir="${2:-$(cd "$here/../.." && pwd)/target/autobahn}"
venv="${KOSOKU_VENV:-$outdir/venv}"
kosoku_version="0.1.0"

mkdir -p "$outdir"
if ! "$venv/bin/python" -c "import kosoku" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kosoku==$kosoku_version"
fi

# kosoku wants host:port, not a URL.
address="${url#ws://}"
address="${address%%/*}"

cases=()
for section in 1 2 3 4 5 6 7 9 10; do # Autobahn has no section 8.
    cases+=(-i "$section.*")
done

rm -rf "$outdir/reports"
set +e
"$venv/bin/kosoku" -m fuzzingclient "${cases[@]}" -o "$outdir/reports" "$address"
kosoku_status=$?
set -e

"$venv/bin/python" - "$outdir/reports/index.json" "$outdir/summary.json" "$here/expected.json" "$kosoku_status" <<'PY'
import json, sys
from collections import Counter

index_path, summary_path, expected_path, kosoku_status = sys.argv[1:5]
with open(index_path) as f:
    index = json.load(f)
verdicts = {}
for agent_cases in index.values():
    for case_id, result in agent_cases.items():
        verdicts[case_id] = result["behavior"]
key = lambda case_id: tuple(int(p) for p in case_id.split("."))
summary = {case_id: verdicts[case_id] for case_id in sorted(verdicts, key=key)}
with open(summary_path, "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")

counts = Counter(summary.values())
print("autobahn 1-10:", ", ".join(f"{n} {b}" for b, n in sorted(counts.items())), f"({len(summary)} cases)")
acceptable = {"OK", "NON-STRICT", "INFORMATIONAL"}
bad = [c for c, b in summary.items() if b not in acceptable]
for case_id in bad:
    print(f"  {case_id}: {summary[case_id]}")

problems = len(bad)
try:
    with open(expected_path) as f:
        expected = json.load(f)
except FileNotFoundError:
    expected = None
    print(f"no {expected_path}; copy {summary_path} there to pin these verdicts")
if expected is not None:
    for case_id in sorted(set(expected) | set(summary), key=key):
        want, got = expected.get(case_id), summary.get(case_id)
        if want != got:
            print(f"  {case_id}: expected {want}, got {got}")
            problems += 1
print(f"{len(summary) - len(bad)} passed, {len(bad)} failed")
sys.exit(1 if problems else 0)
PY
