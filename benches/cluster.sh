#!/usr/bin/env bash
# Cross-node fan-out (issue 15): one room of 500 subscribers, the publish API at 200/s (100k
# deliveries/s), three ways: one node alone; one node with [cluster] (every publish goes through
# Redis and back); publishes into node A with every subscriber on node B. Prints loadgen JSON
# lines and the Redis CPU. Needs `cargo build --release -p beacon -p beacon-load` and redis-server.
set -u
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
B=${BEACON:-$T/release/beacon}; L=${BEACON_LOAD:-$T/release/beacon-load}
W=$(mktemp -d)
export BEACON_JWT_SECRET=bench-secret-that-is-at-least-32-bytes-long BEACON_API_KEY=bench-key
RP=16379; PA=18081; PB=18082
redis-server --port $RP --save '' --appendonly no --bind 127.0.0.1 --loglevel warning >/dev/null 2>&1 & RPID=$!
sleep 0.5
cfg() { printf '[keys.jwt]\nsecret_env = "BEACON_JWT_SECRET"\n[cluster]\nbroker = "redis"\nurl = "redis://127.0.0.1:%s"\nnode_id = "%s"\n' $RP $1 > $W/$1.toml; }
cfg a; cfg b
printf '[keys.jwt]\nsecret_env = "BEACON_JWT_SECRET"\n' > $W/alone.toml
run() { # label, config, subs addr port, pub port, second node config or ""
  local label=$1 c1=$2 c2=$3
  $B serve --protocol benches/protocol.toml --config $W/$c1.toml --listen 127.0.0.1:$PA --shards 1 --log-level warn >/dev/null 2>&1 & P1=$!
  P2=""
  if [ -n "$c2" ]; then $B serve --protocol benches/protocol.toml --config $W/$c2.toml --listen 127.0.0.1:$PB --shards 1 --log-level warn >/dev/null 2>&1 & P2=$!; fi
  sleep 1.5
  local subs=$PA; [ -n "$c2" ] && subs=$PB
  $L busy-room --addr 127.0.0.1:$subs --publish-addr 127.0.0.1:$PA --conns 500 --rate 200 --publishers 2 \
     --publish-via http --warmup 1 --duration 5 --drain 2 --api-key $BEACON_API_KEY \
     --server-pid $P1${P2:+,$P2} --label "$label" 2>&1 | tail -3
  kill $P1 $P2 2>/dev/null; wait $P1 $P2 2>/dev/null
  sleep 0.5
}
run alone alone ""
run clustered-1-node a ""
run cross-node a b
echo "redis cpu (ticks): $(awk '{print $14+$15}' /proc/$RPID/stat)"
kill $RPID; wait $RPID 2>/dev/null
