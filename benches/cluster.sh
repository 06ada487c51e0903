#!/usr/bin/env bash
# Cross-node fan-out (issue 15): one room of 500 subscribers, the publish API at 200/s (100k
# deliveries/s): one node alone; one node with [cluster] (every publish goes through Redis and
# back); publishes into node A with every subscriber on node B; the subscribers spread over 2
# nodes (A, B) and over 3 (A, B, C), publishes into A. Prints loadgen JSON lines and Redis's CPU
# per run. Needs `cargo build --release -p beacon -p beacon-load` and redis-server.
set -u
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
B=${BEACON:-$T/release/beacon}; L=${BEACON_LOAD:-$T/release/beacon-load}
W=$(mktemp -d)
export BEACON_JWT_SECRET=bench-secret-that-is-at-least-32-bytes-long BEACON_API_KEY=bench-key
RP=16379; PA=18081; PB=18082; PC=18083
redis-server --port $RP --save '' --appendonly no --bind 127.0.0.1 --loglevel warning >/dev/null 2>&1 & RPID=$!
sleep 0.5
cfg() { printf '[keys.jwt]\nsecret_env = "BEACON_JWT_SECRET"\n[cluster]\nbroker = "redis"\nurl = "redis://127.0.0.1:%s"\nnode_id = "%s"\n' $RP $1 > $W/$1.toml; }
cfg a; cfg b; cfg c
printf '[keys.jwt]\nsecret_env = "BEACON_JWT_SECRET"\n' > $W/alone.toml
redis_ticks() { awk '{print $14+$15}' /proc/$RPID/stat; }
run() { # label, node configs (first: where publishes go), where subscribers connect (ports)
  local label=$1 nodes=$2 subs=$3 pids="" port=$PA
  for c in $nodes; do
    $B serve --protocol benches/protocol.toml --config $W/$c.toml --listen 127.0.0.1:$port --shards 1 --log-level warn >/dev/null 2>&1 &
    pids="$pids${pids:+,}$!"
    port=$((port + 1))
  done
  sleep 1.5
  local first=${subs%%,*} rest=""
  [ "$first" != "$subs" ] && rest="--spread-addr $(echo ${subs#*,} | sed 's/[0-9][0-9]*/127.0.0.1:&/g')"
  local r0; r0=$(redis_ticks)
  $L busy-room --addr 127.0.0.1:$first $rest --publish-addr 127.0.0.1:$PA --conns 500 --rate 200 --publishers 2 \
     --publish-via http --warmup 1 --duration 5 --drain 2 --api-key $BEACON_API_KEY \
     --server-pid $pids --label "$label" 2>&1 | tail -3
  echo "$label: redis CPU-s $(echo "$(redis_ticks) $r0" | awk '{print ($1-$2)/100}')"
  kill ${pids//,/ } 2>/dev/null; wait ${pids//,/ } 2>/dev/null
  sleep 0.5
}
run alone alone $PA
run clustered-1-node a $PA
run cross-node "a b" $PB
run spread-2-nodes "a b" $PA,$PB
run spread-3-nodes "a b c" $PA,$PB,$PC
kill $RPID; wait $RPID 2>/dev/null
