#!/usr/bin/env bash
# Runs one load scenario against Beacon and its peers alternately (A B A B ...), each server
# pinned to one core and the load generator to another, and prints medians and ratios.
#
# Usage: benches/run.sh SCENARIO [--rounds N] [--smoke] [--servers "beacon node-ws bun ..."]
#                        [--rates "50 250 500"]
#   SCENARIO: echo | echo10k | broadcast | broadcast200 | rooms | publish | idle | storm
#             | handshakes | busyroom | busyroom-http
#   servers:  beacon tokio node-ws bun django-memory django-redis, `beacon-all` (Beacon with a
#             shard per core, not pinned), `beacon-delay` (1 shard, write_delay_ms =
#             BENCH_WRITE_DELAY_MS, default 5), `beacon-all-spread0` / `-spread1` (beacon-all
#             with spread_rooms_at 0: never, 1: every room), and `baseline`: another Beacon binary named by
#             BEACON_BASELINE, to compare a change side by side (default: every installed one;
#             busyroom*: beacon beacon-all bun node-ws; --smoke defaults to beacon alone)
#   --rates:  a sweep, each rate measured for every round and server (default: BENCH_RATE or
#             the scenario's rate; busyroom*: "50 250 500" publishes/s)
# Results (one JSON line per run) land in target/bench-results/SCENARIO-TIMESTAMP.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

scenario=${1:-}
[ -n "$scenario" ] || { sed -n 2,14p "$0"; exit 2; }
shift
rounds=5
smoke=0
servers=""
rates=""
install=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --servers) servers=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --install) install=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

export BEACON_JWT_SECRET=${BEACON_JWT_SECRET:-bench-secret-that-is-at-least-32-bytes-long}
export BEACON_API_KEY=${BEACON_API_KEY:-bench-api-key}
# Below the ephemeral range, random so back-to-back invocations do not meet each other's
# TIME_WAIT sockets.
BASE_PORT=${BENCH_PORT:-$((10000 + RANDOM % 20000))}
PORT=$BASE_PORT
# A fresh port per run: the previous server's sockets linger in TIME_WAIT on the old one, and
# Beacon's listener (glommio, SO_REUSEPORT without SO_REUSEADDR) refuses to bind beside them.
runs_started=0
REDIS_PORT=${BENCH_REDIS_PORT:-16379}
# The protocol Beacon serves; benches/protocol-history.toml is the same with history on the
# booking rooms (what history costs a busy room).
PROTOCOL=${BENCH_PROTOCOL:-benches/protocol.toml}

# 10k-connection scenarios need more descriptors than the default soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Server on core 0, load generator on core 1, when there are two cores to split.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  SERVER_PIN=(taskset -c 0)
  LOAD_PIN=(taskset -c 1)
else
  SERVER_PIN=()
  LOAD_PIN=()
fi

# Scenario shapes: conns rooms rate(ops/s offered) warmup duration shards(beacon) path
via=""
sweep=""
connect_rate=0
case "$scenario" in
  echo)      conns=1000;  rooms=1;    rate=20000; mode="echo" ;;
  echo10k)   conns=10000; rooms=1;    rate=20000; mode="echo" ;;
  broadcast) conns=10000; rooms=1;    rate=2;     mode=broadcast ;;
  # The same with a room small enough for Django Channels to keep up with.
  broadcast200) conns=200; rooms=1;    rate=20;    mode=broadcast ;;
  rooms)     conns=10000; rooms=1000; rate=2000;  mode=broadcast ;;
  publish)   conns=1000;  rooms=100;  rate=5000;  mode=broadcast ;;
  idle)      conns=15000; rooms=15000; rate=0;    mode=idle ;;
  # 5,000 sockets (a room each) opened at 1,000/s, each on its own schedule: handshake latency.
  handshakes) conns=5000; rooms=5000;  rate=0;    mode=idle; connect_rate=1000 ;;
  storm)     conns=64;    rooms=1;    rate=0;     mode=storm ;;
  # One room of 2,000: 2 publishers at 50/250/500 publishes/s, 100k/500k/1M deliveries/s
  # offered, as client `location_update`s over WebSocket or as pipelined publish API calls.
  busyroom)  conns=2000;  rooms=1;    rate=50;    mode=busy-room; via=ws; sweep="50 250 500" ;;
  busyroom-http) conns=2000; rooms=1; rate=50;    mode=busy-room; via=http; sweep="50 250 500" ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
[ -n "${BENCH_RATE:-}" ] && rate=$BENCH_RATE && sweep=""
warmup=${BENCH_WARMUP:-2}; duration=${BENCH_DURATION:-10}; publishers=2
drain=${BENCH_DRAIN:-2}
# The publish scenario is about rooms on both shards; the others give every server one core.
shards=1
[ "$scenario" = publish ] && shards=2
if [ "$smoke" = 1 ]; then
  rounds=1; warmup=0.3; duration=1
  conns=$(( conns > 200 ? 200 : conns ))
  rooms=$(( rooms > conns ? conns : rooms ))
  [ "$mode" = echo ] && rate=2000
  [ "$mode" = storm ] && conns=8
  [ -n "$servers" ] || servers=beacon
  sweep=""; drain=0.5
fi
[ -n "$rates" ] || rates=${sweep:-$rate}
if [ "$mode" = broadcast ] && [ "$rooms" -lt "$publishers" ]; then publishers=1; fi

installed() {
  case "$1" in
    beacon|beacon-all|beacon-delay|beacon-all-spread0|beacon-all-spread1) true ;;
    baseline) [ -x "${BEACON_BASELINE:-}" ] ;;
    tokio) [ -x benches/peers/tokio/target/release/beacon-peer-tokio ] ;;
    node-ws) [ -d benches/peers/node-ws/node_modules/ws ] ;;
    bun) [ -x benches/peers/bun/node_modules/@oven/bun-linux-x64/bin/bun ] ;;
    django-memory) [ -x benches/peers/django/.venv/bin/daphne ] ;;
    django-redis) [ -x benches/peers/django/.venv/bin/daphne ] && command -v redis-server >/dev/null ;;
    *) return 1 ;;
  esac
}

if [ "$install" = 1 ]; then
  for p in tokio node-ws bun django; do "benches/peers/$p/install.sh" || echo "warning: $p did not install" >&2; done
fi
# Smoke runs only prove the scenario still works: debug binaries (CI has them already) do.
profile=release
[ "$smoke" = 1 ] && [ -z "${BENCH_RELEASE:-}" ] && profile=debug
if [ "$profile" = release ]; then
  cargo build --release --quiet -p beacon -p beacon-load --bin beacon --bin beacon-load
else
  cargo build --quiet -p beacon -p beacon-load --bin beacon --bin beacon-load
fi
# Where cargo put them: CARGO_TARGET_DIR when set (a shared target directory), else ./target.
BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/$profile
BEACON=$BIN_DIR/beacon
LOAD=$BIN_DIR/beacon-load

if [ -z "$servers" ]; then
  candidates="beacon tokio node-ws bun django-memory django-redis"
  # Only these serve the client `location_update` the busy room's publishers send.
  [ "$mode" = busy-room ] && candidates="beacon beacon-all bun node-ws"
  for s in $candidates; do
    installed "$s" && servers="$servers $s"
  done
fi
for s in $servers; do
  installed "$s" || { echo "$s is not installed (benches/peers/*/install.sh, or --install)" >&2; exit 1; }
done

SERVER_PID=""
REDIS_PID=""
stop_servers() {
  for p in $SERVER_PID $REDIS_PID; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  SERVER_PID=""
  REDIS_PID=""
}
trap stop_servers EXIT

wait_port() {
  local port=$1
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on $port" >&2
  return 1
}

wait_port_free() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
    sleep 0.1
  done
}

start_server() {
  local s=$1
  PORT=$((BASE_PORT + runs_started % 50))
  runs_started=$((runs_started + 1))
  export PORT
  wait_port_free "$PORT"
  exec 4>>"target/bench-results/server-$s.log"
  case "$s" in
    beacon|baseline)
      local bin=$BEACON
      [ "$s" = baseline ] && bin=$BEACON_BASELINE
      "${SERVER_PIN[@]}" "$bin" serve --protocol "$PROTOCOL" \
        --listen "127.0.0.1:$PORT" --shards "$shards" --log-level warn 2>&4 &
      ;;
    # A shard per core, each shard placed on its own core by Beacon: not pinned, so on two
    # cores one shard shares the load generator's.
    beacon-delay)
      local cfg=target/bench-results/beacon-delay.toml
      sed "s/^write_delay_ms = .*/write_delay_ms = ${BENCH_WRITE_DELAY_MS:-5}/" config/beacon.toml >"$cfg"
      "${SERVER_PIN[@]}" "$BEACON" serve --protocol "$PROTOCOL" --config "$cfg" \
        --listen "127.0.0.1:$PORT" --shards "$shards" --log-level warn 2>&4 &
      ;;
    beacon-all)
      "$BEACON" serve --protocol "$PROTOCOL" \
        --listen "127.0.0.1:$PORT" --shards 0 --log-level warn 2>&4 &
      ;;
    # beacon-all with rooms never spread over shards (0), or every room spread from its first
    # member (1): what spreading costs and gains at a room's size, for `spread_rooms_at`.
    beacon-all-spread0|beacon-all-spread1)
      local cfg=target/bench-results/$s.toml
      sed "s/^spread_rooms_at = .*/spread_rooms_at = ${s#beacon-all-spread}/" config/beacon.toml >"$cfg"
      "$BEACON" serve --protocol "$PROTOCOL" --config "$cfg" \
        --listen "127.0.0.1:$PORT" --shards 0 --log-level warn 2>&4 &
      ;;
    tokio) "${SERVER_PIN[@]}" benches/peers/tokio/start.sh 2>&4 & ;;
    node-ws) "${SERVER_PIN[@]}" benches/peers/node-ws/start.sh 2>&4 & ;;
    bun) "${SERVER_PIN[@]}" benches/peers/bun/start.sh 2>&4 & ;;
    django-memory) CHANNEL_LAYER=memory "${SERVER_PIN[@]}" benches/peers/django/start.sh 2>&4 & ;;
    django-redis)
      "${SERVER_PIN[@]}" redis-server --port "$REDIS_PORT" --save '' --appendonly no \
        --bind 127.0.0.1 --loglevel warning &
      REDIS_PID=$!
      wait_port "$REDIS_PORT"
      CHANNEL_LAYER=redis REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
        "${SERVER_PIN[@]}" benches/peers/django/start.sh 2>&4 &
      ;;
  esac
  SERVER_PID=$!
  wait_port "$PORT"
}

mkdir -p target/bench-results
out="target/bench-results/$scenario-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
extra=()
[ "$mode" = busy-room ] && extra=(--publish-via "$via" --drain "$drain")
[ "$connect_rate" != 0 ] && extra+=(--connect-rate "$connect_rate")
for rate in $rates; do
  echo "scenario $scenario: conns=$conns rooms=$rooms rate=$rate warmup=${warmup}s duration=${duration}s rounds=$rounds servers:$servers" >&2
  for _ in $(seq 1 "$rounds"); do
    for s in $servers; do
      start_server "$s"
      pids=$SERVER_PID
      [ -n "$REDIS_PID" ] && pids="$SERVER_PID,$REDIS_PID"
      if "${LOAD_PIN[@]}" "$LOAD" "$mode" --addr "127.0.0.1:$PORT" --conns "$conns" --rooms "$rooms" \
        --rate "$rate" --publishers "$publishers" --warmup "$warmup" --duration "$duration" \
        "${extra[@]}" --server-pid "$pids" --label "$s" >>"$out"; then
        :
      else
        echo "{\"label\":\"$s\",\"failed\":true,\"rate_offered\":$rate}" >>"$out"
      fi
      stop_servers
    done
  done
done

strict=()
[ "$smoke" = 1 ] && strict=(--strict)
python3 "$ROOT/benches/report.py" "$out" "$scenario" "${strict[@]}"
