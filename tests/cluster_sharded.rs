//! Rooms spread over several Redis servers (`[cluster] url = [..]`) and over a Redis Cluster
//! with sharded PUB/SUB (`redis_cluster = true`): real `beacon serve` processes on loopback,
//! real `redis-server`s (standalone, or three cluster masters created with
//! `redis-cli --cluster create`) that each test starts on free ports, real WebSocket clients.
//! Fault tests SIGKILL one Redis (or one master) and restart it on its port. Conditions are
//! waited for with generous bounds, never timed tightly.

mod apps_support;
mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// FNV-1a, 64 bits (offset basis 0xcbf29ce484222325, prime 0x100000001b3), as Beacon hashes
/// a room name to place it.
fn fnv64a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Jump consistent hash (Lamping & Veach, 2014): the bucket in `0..buckets` for `key`.
fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The partition (or, over a list of standalone Redis servers, the instance) of a room or user.
fn partition(room: &str, partitions: u32) -> u32 {
    jump(fnv64a(room), partitions)
}

/// The copies above follow their published definitions (FNV's test vectors; jump hash's
/// defining properties: key 0 stays in bucket 0, and growing from n to n + 1 buckets moves a
/// key only into the new bucket).
#[test]
fn the_placement_functions_match_their_definitions() {
    assert_eq!(fnv64a(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv64a("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv64a("foobar"), 0x85944171f73967e8);
    for n in 1..50 {
        assert_eq!(jump(0, n), 0);
    }
    for k in 0..2000u64 {
        let key = fnv64a(&format!("room:{k}"));
        for n in 1..40 {
            let (a, b) = (jump(key, n), jump(key, n + 1));
            assert!(
                a < n && (b == a || b == n),
                "key {k}: {a} of {n}, {b} of {}",
                n + 1
            );
        }
    }
    let mut spread = [0u32; 16];
    for k in 0..1600 {
        spread[partition(&format!("room:{k}"), 16) as usize] += 1;
    }
    assert!(spread.iter().all(|&c| (50..150).contains(&c)), "{spread:?}");
}

/// The harness itself: a three-master cluster comes up with every slot served, sharded
/// PUB/SUB works through `redis-cli` on the owning master (and is redirected elsewhere), and a
/// SIGKILLed master restarted on its port rejoins with its slots.
#[test]
fn the_redis_cluster_harness_works() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    // The partitions' tags land on more than one master.
    let owners: HashSet<usize> = (0..16)
        .map(|p| cluster.owner_of_key(&format!("{{{p}}}")))
        .collect();
    assert!(owners.len() > 1, "{owners:?}");
    assert_eq!(cluster.keyslot("beacon.{3}.room.x"), cluster.keyslot("{3}"));

    let p = partition("room:h", 16);
    let channel = &format!("beacon.{{{p}}}.room.room:h");
    let owner = cluster.owner_of_key(channel);
    let other = (owner + 1) % 3;
    let mut sub = Command::new("redis-cli")
        .args([
            "-p",
            &cluster.port(owner).to_string(),
            "SSUBSCRIBE",
            channel,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    assert_eq!(
        [next(), next(), next()],
        ["ssubscribe".to_owned(), channel.to_owned(), "1".to_owned()]
    );
    let listed = cluster.cli(owner, &["PUBSUB", "SHARDCHANNELS"]);
    assert!(listed.lines().any(|l| l == channel), "{listed}");
    assert_eq!(cluster.cli(owner, &["PUBSUB", "CHANNELS"]).trim(), "");
    let moved = cluster.cli(other, &["SPUBLISH", channel, "x"]);
    assert!(moved.contains("MOVED"), "{moved}");
    assert_eq!(
        cluster.cli(owner, &["SPUBLISH", channel, "hello"]).trim(),
        "1"
    );
    assert_eq!(
        [next(), next(), next()],
        [
            "smessage".to_owned(),
            channel.to_owned(),
            "hello".to_owned()
        ]
    );
    let _ = sub.kill();
    let _ = sub.wait();

    // A master killed and restarted on its port rejoins with the same slots; its keys were
    // not persisted, but it serves writes again.
    let key = &format!("{{{p}}}k");
    assert_eq!(cluster.cli(owner, &["SET", key, "v"]).trim(), "OK");
    let slot = cluster.keyslot(key);
    cluster.kill(owner);
    // The others keep serving their slots (cluster-require-full-coverage no).
    let survivor_key = (0..)
        .map(|k| format!("{{s{k}}}"))
        .find(|k| cluster.owner_of_key(k) == other)
        .unwrap();
    assert_eq!(
        cluster.cli(other, &["SET", &survivor_key, "v"]).trim(),
        "OK"
    );
    cluster.restart(owner);
    assert_eq!(cluster.owner_of_slot(slot), owner);
    assert_eq!(cluster.cli(owner, &["SET", key, "again"]).trim(), "OK");
    assert_eq!(cluster.cli(owner, &["GET", key]).trim(), "again");
}

fn protocol() -> PathBuf {
    root().join("tests/fixtures/cluster.toml")
}

/// tests/fixtures/cluster.toml with `max_connections_per_user = 2` (closing with 4029), in `dir`.
fn capped_protocol(dir: &TempDir) -> PathBuf {
    let src = std::fs::read_to_string(protocol()).unwrap();
    let src = src
        .replacen("[limits]\n", "[limits]\nmax_connections_per_user = 2\n", 1)
        .replacen(
            "[close_on]\n",
            "[close_on]\ntoo_many_connections = \"rate\"\n",
            1,
        );
    let path = dir.path().join("caps.toml");
    std::fs::write(&path, src).unwrap();
    path
}

/// `[cluster]` lines for several standalone Redis servers, in this order.
fn standalone(urls: &[String]) -> String {
    let list: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("broker = \"redis\"\nurl = [{}]\n", list.join(", "))
}

/// `[cluster]` lines for a Redis Cluster reached through `seeds`.
fn redis_cluster(seeds: &[String], partitions: Option<u32>) -> String {
    let mut s = standalone(seeds) + "redis_cluster = true\n";
    if let Some(p) = partitions {
        s.push_str(&format!("partitions = {p}\n"));
    }
    s
}

/// The lines of a `redis-cli` answer listing names.
fn names(out: &str) -> BTreeSet<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The room channel of `room:<name>` on standalone Redis.
fn channel(name: &str) -> String {
    format!("beacon.room.room:{name}")
}

/// The room channel of `room:<name>` in a Redis Cluster with `partitions` partitions.
fn shard_channel(name: &str, partitions: u32) -> String {
    let p = partition(&format!("room:{name}"), partitions);
    format!("beacon.{{{p}}}.room.room:{name}")
}

/// For each room, the index of the standalone Redis whose `PUBSUB CHANNELS` lists its channel
/// (each must be listed on exactly one), once every room is subscribed somewhere.
fn instance_of_rooms(brokers: &[&Broker], rooms: &[String]) -> Vec<usize> {
    eventually(20, "every room's channel subscribed", || {
        let on: Vec<BTreeSet<String>> = brokers
            .iter()
            .map(|b| names(&b.redis_cli(&["PUBSUB", "CHANNELS", "beacon.room.*"])))
            .collect();
        let mut placed = Vec::new();
        for room in rooms {
            let at: Vec<usize> = (0..on.len())
                .filter(|&i| on[i].contains(&channel(room)))
                .collect();
            assert!(
                at.len() <= 1,
                "{room}'s channel on several instances: {on:?}"
            );
            placed.push(*at.first()?);
        }
        Some(placed)
    })
}

/// Several standalone Redis servers share the rooms: each room's channel and presence live on
/// exactly one of them (the jump hash of its name over the list), both hold some, each user's
/// connection count lives on one, the per-user cap holds across nodes, and every kind of
/// delivery reaches members on every node, in one order per room under a burst from two
/// publishers on two nodes.
#[test]
fn several_redis_instances_share_rooms() {
    let Some(r0) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let r1 = Broker::start(Kind::Redis, free_port()).unwrap();
    let cfg = standalone(&[r0.url(), r1.url()]);
    let dir = TempDir::new("sharded-caps");
    let proto = capped_protocol(&dir);
    let nodes: Vec<BeaconProcess> = (1..=3)
        .map(|i| cluster_node(&proto, &cfg, &format!("s{i}")))
        .collect();
    let rooms: Vec<String> = (0..24).map(|k| format!("s{k}")).collect();
    let mut members: Vec<[Ws; 2]> = (0..rooms.len() as u64)
        .map(|k| {
            let room = &rooms[k as usize];
            [
                join(nodes[1].addr, room, 100 + k),
                join(nodes[2].addr, room, 200 + k),
            ]
        })
        .collect();

    // The publish API on node 1, where no room has members.
    for (k, room) in rooms.iter().enumerate() {
        let (status, body) = say(nodes[0].addr, room, &format!("api{k}"));
        assert_eq!(status, 200, "{room}: {body}");
        assert_eq!(body["nodes"], 2, "{room}: {body}");
    }
    for (k, m) in members.iter_mut().enumerate() {
        for ws in m {
            assert_eq!(recv_said(ws)["text"], format!("api{k}"));
        }
    }
    // A socket's broadcast on node 2, then one from a socket on node 1.
    for (k, m) in members.iter_mut().enumerate() {
        send(&mut m[0], json!({"type": "say", "text": format!("b{k}")}));
    }
    for (k, m) in members.iter_mut().enumerate() {
        for ws in m {
            assert_eq!(recv_said(ws)["text"], format!("b{k}"));
        }
    }
    let mut senders: Vec<Ws> = (0..rooms.len() as u64)
        .map(|k| join(nodes[0].addr, &rooms[k as usize], 300 + k))
        .collect();
    for (k, ws) in senders.iter_mut().enumerate() {
        send(ws, json!({"type": "say", "text": format!("c{k}")}));
    }
    for (k, (m, s)) in members.iter_mut().zip(&mut senders).enumerate() {
        for ws in m.iter_mut().chain([s]) {
            assert_eq!(recv_said(ws)["text"], format!("c{k}"));
        }
    }

    // Each room's channel is subscribed on exactly one instance; both hold some.
    let placed = instance_of_rooms(&[&r0, &r1], &rooms);
    for (k, room) in rooms.iter().enumerate() {
        let want = partition(&format!("room:{room}"), 2) as usize;
        assert_eq!(
            placed[k], want,
            "{room}: the jump hash of its name over the list"
        );
    }
    for i in 0..2 {
        assert!(
            placed.contains(&i),
            "no room on instance {i}: placement {placed:?}"
        );
    }
    // So do its presence hash and each user's connection count (on the user's instance).
    let keys: Vec<BTreeSet<String>> = [&r0, &r1]
        .iter()
        .map(|b| names(&b.redis_cli(&["KEYS", "beacon.*"])))
        .collect();
    for (k, room) in rooms.iter().enumerate() {
        let presence = format!("beacon.presence.room:{room}");
        assert!(keys[placed[k]].contains(&presence), "{presence}: {keys:?}");
        assert!(
            !keys[1 - placed[k]].contains(&presence),
            "{presence}: {keys:?}"
        );
    }
    let users: Vec<BTreeSet<&String>> = keys
        .iter()
        .map(|k| {
            k.iter()
                .filter(|k| k.starts_with("beacon.conns."))
                .collect()
        })
        .collect();
    assert!(users.iter().all(|u| !u.is_empty()), "{users:?}");
    assert!(users[0].is_disjoint(&users[1]), "{users:?}");
    for (i, keys) in users.iter().enumerate() {
        for key in keys {
            let user = key.strip_prefix("beacon.conns.").unwrap();
            assert_eq!(partition(user, 2) as usize, i, "{key} on instance {i}");
        }
    }
    assert_eq!(
        users[0].len() + users[1].len(),
        3 * rooms.len(),
        "{users:?}"
    );
    // And the cap holds across nodes: user 7 at 2 sockets on nodes 1 and 2 is refused on 3.
    let _caps = [
        join(nodes[0].addr, "caps", 7),
        join(nodes[1].addr, "caps", 7),
    ];
    let mut third = connect(&format!(
        "ws://{}/ws/rooms/caps/?token={}",
        nodes[2].addr,
        member(7)
    ));
    assert_eq!(
        expect_close(&mut third).0,
        4029,
        "over the cap on a third node"
    );
    drop(senders);

    // One order per room: a room on each instance, each with a socket publisher on node 1
    // and the publish API on node 3 bursting at once.
    let picks: Vec<usize> = (0..2)
        .map(|i| placed.iter().position(|&at| at == i).unwrap())
        .collect();
    const EACH: usize = 100;
    let start = std::sync::Arc::new(std::sync::Barrier::new(2 * picks.len()));
    let mut threads = Vec::new();
    for &k in &picks {
        let room = rooms[k].clone();
        let mut ws = join(nodes[0].addr, &room, 400 + k as u64);
        let go = start.clone();
        threads.push(std::thread::spawn(move || {
            go.wait();
            for i in 0..EACH {
                send(&mut ws, json!({"type": "say", "text": format!("A{i}")}));
                if i % 10 == 9 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Some(ws)
        }));
        let (go, api) = (start.clone(), nodes[2].addr);
        threads.push(std::thread::spawn(move || {
            go.wait();
            for i in 0..EACH {
                let (s, body) = say(api, &room, &format!("C{i}"));
                assert_eq!(s, 200, "{body}");
            }
            None
        }));
    }
    let mut publishers: Vec<Ws> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    for (&k, publisher) in picks.iter().zip(&mut publishers) {
        let mut seen: Vec<Vec<String>> = Vec::new();
        for ws in members[k].iter_mut().chain([publisher]) {
            let got: Vec<String> = (0..2 * EACH)
                .map(|_| recv_said(ws)["text"].as_str().unwrap().to_owned())
                .collect();
            for p in ["A", "C"] {
                let mine: Vec<usize> = got
                    .iter()
                    .filter_map(|t| t.strip_prefix(p)?.parse().ok())
                    .collect();
                assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "{p}'s in order");
            }
            seen.push(got);
        }
        for s in &seen[1..] {
            assert_eq!(s, &seen[0], "room {}: one order on every node", rooms[k]);
        }
    }
}

/// History over several standalone Redis servers: each room's history keys live on its
/// room's instance only, and a client resumes on another node with exactly what it missed.
#[test]
fn several_redis_instances_keep_history() {
    let Some(r0) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let r1 = Broker::start(Kind::Redis, free_port()).unwrap();
    let cfg = standalone(&[r0.url(), r1.url()]);
    let proto = root().join("tests/fixtures/history.toml");
    let (a, b) = (
        cluster_node(&proto, &cfg, "h1"),
        cluster_node(&proto, &cfg, "h2"),
    );
    let rooms: Vec<String> = (0..8).map(|k| format!("h{k}")).collect();
    let mut left = Vec::new();
    for room in &rooms {
        let mut c = open_room(a.addr, room, 1, None);
        assert_eq!(recv(&mut c)["offset"], 0);
        assert_eq!(say(b.addr, room, "one").0, 200);
        left.push(pos(&recv(&mut c)));
    }
    for room in &rooms {
        assert_eq!(say(a.addr, room, "two").0, 200);
        assert_eq!(say(b.addr, room, "three").0, 200);
    }
    let mut holders = HashSet::new();
    for (room, last) in rooms.iter().zip(&left) {
        let mut back = open_room(b.addr, room, 1, Some(last));
        let (missed, answer) = catch_up(&mut back);
        let texts: Vec<&str> = missed.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(texts, ["two", "three"], "{room}");
        assert_eq!(
            pos(&answer),
            Pos {
                offset: 3,
                epoch: last.epoch.clone()
            },
            "{room}: {answer}"
        );
        let pattern = format!("*room:{room}");
        let at: Vec<usize> = [&r0, &r1]
            .iter()
            .enumerate()
            .filter(|(_, r)| !names(&r.redis_cli(&["KEYS", &pattern])).is_empty())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(at.len(), 1, "{room}'s keys on one instance: {at:?}");
        holders.insert(at[0]);
    }
    assert_eq!(holders.len(), 2, "history on both instances");
}

/// `serve` refuses to start while an instance of the list does not answer, naming it, in one
/// line; a Redis Cluster node starts when any seed answers.
#[test]
fn startup_needs_every_instance_but_any_seed() {
    let Some(live) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let config = format!("[cluster]\n{}", standalone(&[live.url(), dead.clone()]));
    let line = serve_refused(&protocol(), &config);
    assert!(line.contains(&format!("{dead} unreachable")), "{line}");
    drop(live);

    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let seeds = [dead, cluster.url(2)];
    let n1 = cluster_node(&protocol(), &redis_cluster(&seeds, Some(16)), "z1");
    let n2 = cluster_node(&protocol(), &redis_cluster(&seeds[1..], Some(16)), "z2");
    let mut m = join(n2.addr, "z", 1);
    let (status, body) = say(n1.addr, "z", "through a live seed");
    assert_eq!((status, &body["nodes"]), (200, &json!(1)), "{body}");
    assert_eq!(recv_said(&mut m)["text"], "through a live seed");
}

/// What became of each message published during a fault test.
#[derive(Default)]
struct Ledger {
    /// Per room: confirmed with both nodes' subscriptions counted.
    acked: Vec<BTreeSet<usize>>,
    /// Per room: confirmed, but the API said fewer nodes had members (mid-resubscription).
    short: Vec<BTreeSet<usize>>,
    refused: usize,
    sent: usize,
}

/// Rooms with a member on each of two nodes; the Redis (or master) holding the rooms marked
/// `down` is killed and restarted by the callers' closures. While it is gone its rooms answer
/// 503 naming the instance (`names`) and the others 200 and deliver; once it is back
/// every room delivers again within a generous bound, on the same sockets. Every message sent
/// (one by one, and one batch) is delivered to both members, refused, or reported short:
/// nothing is lost silently, nothing refused is delivered.
fn outage_and_back(
    addrs: [SocketAddr; 2],
    rooms: &[String],
    down: &[bool],
    names: &str,
    kill: impl FnOnce(),
    restart: impl FnOnce(),
) {
    assert!(down.contains(&true) && down.contains(&false), "{down:?}");
    let mut members: Vec<[Ws; 2]> = (0..rooms.len() as u64)
        .map(|k| {
            let room = &rooms[k as usize];
            [join(addrs[0], room, 100 + k), join(addrs[1], room, 200 + k)]
        })
        .collect();
    let mut got: Vec<[Vec<usize>; 2]> = rooms.iter().map(|_| Default::default()).collect();
    let mut ledger = Ledger {
        acked: vec![BTreeSet::new(); rooms.len()],
        short: vec![BTreeSet::new(); rooms.len()],
        ..Ledger::default()
    };
    // A 503 names the instance: its URL, on Redis Cluster followed by ` (slot n)`.
    let assert_names = |body: &Value| {
        let named = body["broker"].as_str().unwrap_or_default();
        assert!(
            named == names || named.starts_with(&format!("{names} (slot ")),
            "should name {names}: {body}"
        );
    };
    // One publish of message `n` into room `k`; its status.
    let publish_one = |k: usize, ledger: &mut Ledger| -> u16 {
        let n = ledger.sent;
        ledger.sent += 1;
        let (status, body) = say(addrs[0], &rooms[k], &n.to_string());
        match status {
            200 if body["nodes"] == 2 => {
                ledger.acked[k].insert(n);
            }
            200 => {
                ledger.short[k].insert(n);
            }
            503 => {
                assert!(down[k], "{} is on a live Redis: {body}", rooms[k]);
                assert_eq!(body["error"], "broker unavailable", "{body}");
                assert_names(&body);
                ledger.refused += 1;
            }
            s => panic!("{}: status {s}: {body}", rooms[k]),
        }
        status
    };
    // Reads room `k`'s members up to its last confirmed message.
    let catch_up = |k: usize, members: &mut [[Ws; 2]], got: &mut [[Vec<usize>; 2]], l: &Ledger| {
        let Some(&last) = l.acked[k].last() else {
            return;
        };
        for (ws, got) in members[k].iter_mut().zip(got[k].iter_mut()) {
            while got.last().is_none_or(|&g| g < last) {
                got.push(recv_said(ws)["text"].as_str().unwrap().parse().unwrap());
            }
        }
    };

    for k in 0..rooms.len() {
        assert_eq!(publish_one(k, &mut ledger), 200);
        catch_up(k, &mut members, &mut got, &ledger);
    }
    assert_eq!(
        ledger.acked.iter().map(BTreeSet::len).sum::<usize>(),
        rooms.len()
    );
    kill();
    // Gone: a batch with one of its rooms is refused whole, before anything of it is published
    // (the final check finds none of it delivered in the live room).
    let live = down.iter().position(|d| !d).unwrap();
    let gone = down.iter().position(|d| *d).unwrap();
    let batch: Vec<Value> = [live, gone]
        .iter()
        .map(|&k| {
            ledger.sent += 1;
            let text = (ledger.sent - 1).to_string();
            json!({"room": format!("room:{}", rooms[k]), "message": {"type": "said", "text": text}})
        })
        .collect();
    let (status, body) = publish(addrs[0], Value::Array(batch));
    assert_eq!(status, 503, "{body}");
    assert_names(&body);
    ledger.refused += 2;
    // Its rooms are refused, the others deliver on both nodes.
    for _ in 0..3 {
        for k in 0..rooms.len() {
            let status = publish_one(k, &mut ledger);
            assert_eq!(status, if down[k] { 503 } else { 200 }, "{}", rooms[k]);
            if !down[k] {
                catch_up(k, &mut members, &mut got, &ledger);
                assert_eq!(got[k][0].last(), ledger.acked[k].last(), "delivered");
            }
        }
    }
    let restarting = Instant::now();
    restart();
    let back = Instant::now();
    // Back: every room delivers again; rounds until each has a confirmed message since.
    let mark = ledger.sent;
    while !(0..rooms.len()).all(|k| ledger.acked[k].last() >= Some(&mark)) {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "rooms still refused 30 s after the restart: {:?}",
            (0..rooms.len())
                .filter(|&k| ledger.acked[k].last() < Some(&mark))
                .map(|k| &rooms[k])
                .collect::<Vec<_>>()
        );
        let mut refused = false;
        for k in 0..rooms.len() {
            refused |= publish_one(k, &mut ledger) != 200;
        }
        if refused {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "outage: {} sent, {} delivered everywhere, {} reported short, {} refused; every room delivering {:?} after the restart began ({:?} after it returned)",
        ledger.sent,
        ledger.acked.iter().map(BTreeSet::len).sum::<usize>(),
        ledger.short.iter().map(BTreeSet::len).sum::<usize>(),
        ledger.refused,
        restarting.elapsed(),
        back.elapsed()
    );
    assert_eq!(
        ledger.acked.iter().map(BTreeSet::len).sum::<usize>()
            + ledger.short.iter().map(BTreeSet::len).sum::<usize>()
            + ledger.refused,
        ledger.sent
    );
    // The same sockets got every confirmed message of their room, in order, and nothing that
    // was refused.
    for k in 0..rooms.len() {
        catch_up(k, &mut members, &mut got, &ledger);
        for got in &got[k] {
            let mut sorted = got.clone();
            sorted.sort_unstable();
            assert_eq!(got, &sorted, "{}: in order", rooms[k]);
            let got: BTreeSet<usize> = got.iter().copied().collect();
            assert!(
                ledger.acked[k].is_subset(&got),
                "{}: all confirmed arrived",
                rooms[k]
            );
            assert!(
                got.iter()
                    .all(|n| ledger.acked[k].contains(n) || ledger.short[k].contains(n)),
                "{}: nothing refused arrived",
                rooms[k]
            );
        }
    }
}

/// Waits until `/readyz` says the node is degraded with `url` down: still `200`, since every
/// node shares the same brokers and taking them all out of rotation would widen the outage
/// (README, "More than one Redis").
fn degraded(addr: SocketAddr, url: &str) {
    eventually(30, "readyz degraded while one Redis is gone", || {
        let (status, body) = http(addr, "GET", "/readyz", &[], b"");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status == 200 && v["status"] == "degraded" && body.contains(url)).then_some(())
    });
}

/// One of two standalone Redis servers SIGKILLed and restarted on its port: its rooms get 503
/// naming it, the other's rooms deliver across nodes, `/readyz` says degraded naming it,
/// sockets stay open; once it is back its rooms deliver again.
#[test]
fn one_redis_instance_down_then_back() {
    let Some(r0) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let r1 = Broker::start(Kind::Redis, free_port()).unwrap();
    let cfg = standalone(&[r0.url(), r1.url()]);
    let (n1, n2) = (
        cluster_node(&protocol(), &cfg, "d1"),
        cluster_node(&protocol(), &cfg, "d2"),
    );
    let rooms: Vec<String> = (0..16).map(|k| format!("d{k}")).collect();
    // Where each room lives, from a member per room (those leave again).
    let probes: Vec<Ws> = rooms.iter().map(|r| join(n2.addr, r, 9)).collect();
    let placed = instance_of_rooms(&[&r0, &r1], &rooms);
    drop(probes);
    let down: Vec<bool> = placed.iter().map(|&i| i == 1).collect();
    let (url, port) = (r1.url(), r1.port);
    let mut victim = Some(r1);
    let mut revived = None;
    outage_and_back(
        [n1.addr, n2.addr],
        &rooms,
        &down,
        &url,
        || {
            victim.take().unwrap().kill();
            for addr in [n1.addr, n2.addr] {
                degraded(addr, &url);
            }
        },
        || revived = Some(Broker::start(Kind::Redis, port).expect("Redis restarts")),
    );
    wait_ready(n1.addr);
    wait_ready(n2.addr);
    drop(revived);
}

/// A Redis Cluster carries rooms with sharded PUB/SUB: each room's channel carries its
/// partition's hash tag and is SSUBSCRIBEd on the master owning the tag's slot (several
/// masters hold some, no classic channel is used), delivery crosses nodes, history resumes on
/// another node, and `max_connections_per_user` holds across nodes.
#[test]
fn redis_cluster_sharded_pubsub() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let src = std::fs::read_to_string(root().join("tests/fixtures/history.toml")).unwrap();
    let src = src.replacen(
        "[close_on]\n",
        "[close_on]\ntoo_many_connections = \"away\"\n",
        1,
    ) + "\n[limits]\nmax_connections_per_user = 2\n";
    let dir = TempDir::new("cluster-sharded");
    let proto = dir.path().join("history-caps.toml");
    std::fs::write(&proto, src).unwrap();
    let all: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let cfg = redis_cluster(&all, Some(16));
    let nodes = [
        cluster_node(&proto, &cfg, "c1"),
        cluster_node(&proto, &cfg, "c2"),
        // Seeds are any subset of the masters.
        cluster_node(&proto, &redis_cluster(&all[1..2], Some(16)), "c3"),
    ];

    let rooms: Vec<String> = (0..20).map(|k| format!("c{k}")).collect();
    let mut members: Vec<[Ws; 2]> = (0..rooms.len() as u64)
        .map(|k| {
            let room = &rooms[k as usize];
            [
                join(nodes[1].addr, room, 100 + k),
                join(nodes[2].addr, room, 200 + k),
            ]
        })
        .collect();
    for (k, room) in rooms.iter().enumerate() {
        let (status, body) = say(nodes[0].addr, room, &format!("api{k}"));
        assert_eq!(status, 200, "{room}: {body}");
        assert_eq!(body["nodes"], 2, "{room}: {body}");
        send(
            &mut members[k][0],
            json!({"type": "say", "text": format!("ws{k}")}),
        );
    }
    for (k, m) in members.iter_mut().enumerate() {
        for ws in m {
            assert_eq!(recv_said(ws)["text"], format!("api{k}"));
            assert_eq!(recv_said(ws)["text"], format!("ws{k}"));
        }
    }

    // Sharded channels on the masters owning their partitions' slots; no classic ones.
    let shard: Vec<BTreeSet<String>> = (0..3)
        .map(|i| names(&cluster.cli(i, &["PUBSUB", "SHARDCHANNELS"])))
        .collect();
    let mut holders = HashSet::new();
    for room in &rooms {
        let ch = shard_channel(room, 16);
        let at: Vec<usize> = (0..3).filter(|&i| shard[i].contains(&ch)).collect();
        assert_eq!(
            at,
            [cluster.owner_of_key(&ch)],
            "{ch} on its slot's master: {shard:?}"
        );
        holders.insert(at[0]);
    }
    assert!(
        holders.len() > 1,
        "room channels on one master only: {shard:?}"
    );
    for i in 0..3 {
        let classic = names(&cluster.cli(i, &["PUBSUB", "CHANNELS", "*.room.*"]));
        assert!(
            classic.is_empty(),
            "classic room channels on {i}: {classic:?}"
        );
    }
    drop(members);

    // History in the cluster: a client resumes on another node with exactly what it missed.
    let mut c = open_room(nodes[0].addr, "h1", 1, None);
    let start = recv(&mut c);
    assert_eq!(
        (start["type"].as_str(), start["offset"].as_u64()),
        (Some("resumed"), Some(0)),
        "{start}"
    );
    assert_eq!(say(nodes[1].addr, "h1", "one").0, 200);
    let one = recv(&mut c);
    assert_eq!(
        (one["text"].as_str(), one["offset"].as_u64()),
        (Some("one"), Some(1))
    );
    let last = pos(&one);
    drop(c);
    assert_eq!(say(nodes[2].addr, "h1", "two").0, 200);
    assert_eq!(say(nodes[0].addr, "h1", "three").0, 200);
    let mut back = open_room(nodes[1].addr, "h1", 1, Some(&last));
    let (missed, answer) = catch_up(&mut back);
    let texts: Vec<&str> = missed.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, ["two", "three"]);
    assert!(missed.iter().all(|(_, p)| p.epoch == last.epoch));
    assert_eq!(answer["type"], "resumed", "{answer}");
    assert_eq!(
        pos(&answer),
        Pos {
            offset: 3,
            epoch: last.epoch.clone()
        }
    );
    assert_eq!(say(nodes[2].addr, "h1", "four").0, 200);
    assert_eq!(recv(&mut back)["offset"], 4, "live again");
    // The room's history keys carry its partition's tag.
    let tag = format!("{{{}}}", partition("room:h1", 16));
    let keys: Vec<String> = (0..3)
        .flat_map(|i| names(&cluster.cli(i, &["KEYS", "*room:h1*"])))
        .collect();
    assert!(!keys.is_empty(), "no keys for room:h1");
    assert!(keys.iter().all(|k| k.contains(&tag)), "{tag}: {keys:?}");
    drop(back);

    // max_connections_per_user = 2 across nodes.
    let admitted = |addr: SocketAddr| {
        let tok = token(json!(7), json!({}));
        let mut ws = connect(&format!("ws://{addr}/ws/rooms/caps/?token={tok}"));
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) if t.contains("welcome") => Some(ws),
            _ => None,
        }
    };
    let mut first = admitted(nodes[0].addr).expect("first socket");
    let _second = admitted(nodes[1].addr).expect("second socket");
    assert!(
        admitted(nodes[2].addr).is_none(),
        "a third socket on a third node"
    );
    first.close(None).unwrap();
    while first.read().is_ok() {}
    let _third = eventually(20, "the closed socket's place freed", || {
        admitted(nodes[2].addr)
    });
    assert!(admitted(nodes[0].addr).is_none());
    // The count lives under the user's partition tag.
    let counted = format!("beacon.{{{}}}.conns.7", partition("7", 16));
    let at = cluster.owner_of_key(&counted);
    let keys = names(&cluster.cli(at, &["KEYS", "*conns*"]));
    assert!(
        keys.contains(&counted),
        "{counted} on master {at}: {keys:?}"
    );
}

/// A Redis Cluster master SIGKILLed and restarted on its port: rooms whose partitions it owns
/// get 503 naming it, rooms on the other masters deliver across nodes, `/readyz` says degraded;
/// once it is back all deliver again.
#[test]
fn redis_cluster_master_down_then_back() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let all: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    // The default number of partitions (16).
    let cfg = redis_cluster(&all, None);
    let (n1, n2) = (
        cluster_node(&protocol(), &cfg, "m1"),
        cluster_node(&protocol(), &cfg, "m2"),
    );
    // Presence crosses nodes too, its hash under the room's partition tag.
    let mut here = join(n1.addr, "pm", 50);
    let _there = join(n2.addr, "pm", 51);
    let v = recv(&mut here);
    assert_eq!(
        (v["type"].as_str(), v["status"].as_str()),
        (Some("presence"), Some("online"))
    );
    let presence = format!("beacon.{{{}}}.presence.room:pm", partition("room:pm", 16));
    let at = cluster.owner_of_key(&presence);
    let keys = names(&cluster.cli(at, &["KEYS", "*presence*"]));
    assert!(
        keys.contains(&presence),
        "{presence} on master {at}: {keys:?}"
    );

    let rooms: Vec<String> = (0..16).map(|k| format!("m{k}")).collect();
    let owner: Vec<usize> = rooms
        .iter()
        .map(|r| cluster.owner_of_key(&shard_channel(r, 16)))
        .collect();
    let victim = owner[0];
    let victim_url = cluster.url(victim);
    let down: Vec<bool> = owner.iter().map(|&o| o == victim).collect();
    let cluster = std::cell::RefCell::new(&mut cluster);
    outage_and_back(
        [n1.addr, n2.addr],
        &rooms,
        &down,
        &victim_url,
        || {
            cluster.borrow_mut().kill(victim);
            for addr in [n1.addr, n2.addr] {
                degraded(addr, &victim_url);
            }
        },
        || cluster.borrow_mut().restart(victim),
    );
    let (n1a, n2a) = (n1.addr, n2.addr);
    wait_ready(n1a);
    wait_ready(n2a);
}

/// A partition's slot migrated to another master (as `redis-cli --cluster reshard` moves it):
/// Redis drops the old master's shard subscriptions, and the nodes find the new owner and
/// deliver the room again on the same sockets, its channel now on the new master.
#[test]
fn redis_cluster_slot_migration() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let all: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let cfg = redis_cluster(&all, Some(16));
    let (n1, n2) = (
        cluster_node(&protocol(), &cfg, "v1"),
        cluster_node(&protocol(), &cfg, "v2"),
    );
    let mut members = [join(n1.addr, "mv", 1), join(n2.addr, "mv", 2)];
    let ch = shard_channel("mv", 16);
    let slot = cluster.keyslot(&ch);
    let from = cluster.owner_of_slot(slot);
    let to = (from + 1) % 3;
    let (status, body) = say(n1.addr, "mv", "0");
    assert_eq!((status, &body["nodes"]), (200, &json!(2)), "{body}");
    for ws in &mut members {
        assert_eq!(recv_said(ws)["text"], "0");
    }
    assert!(names(&cluster.cli(from, &["PUBSUB", "SHARDCHANNELS"])).contains(&ch));

    cluster.migrate_slot(slot, to);
    let moved = Instant::now();
    // Publishes until one is confirmed for both nodes; each is confirmed or refused.
    let mut confirmed = BTreeSet::new();
    let mut n = 1;
    let last = loop {
        assert!(
            moved.elapsed() < Duration::from_secs(30),
            "not delivering 30 s after the migration"
        );
        let (status, body) = say(n1.addr, "mv", &n.to_string());
        match status {
            200 => {
                confirmed.insert(n);
                if body["nodes"] == 2 {
                    break n;
                }
            }
            503 => std::thread::sleep(Duration::from_millis(50)),
            s => panic!("status {s}: {body}"),
        }
        n += 1;
    };
    eprintln!(
        "slot migration: delivering after {:?}, {n} publishes",
        moved.elapsed()
    );
    for ws in &mut members {
        let mut got = Vec::new();
        while got.last() != Some(&last) {
            got.push(
                recv_said(ws)["text"]
                    .as_str()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap(),
            );
        }
        assert!(
            got.iter().all(|g| confirmed.contains(g)),
            "{got:?} of {confirmed:?}"
        );
    }
    assert!(names(&cluster.cli(to, &["PUBSUB", "SHARDCHANNELS"])).contains(&ch));
    assert!(!names(&cluster.cli(from, &["PUBSUB", "SHARDCHANNELS"])).contains(&ch));
}

/// Geo across nodes on a Redis Cluster (the VISIBLE app, config/protocols/visible.toml): the
/// geo home's lease and channel live in partition 0, a standing search on one node hears
/// providers going active on the two others, and a seeker on a third node finds them all,
/// nearest first.
#[test]
fn geo_works_across_nodes_on_redis_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let backend = apps_support::Backend::start(|_, _| (200, "{}".into()));
    let all: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let proto = root().join("config/protocols/visible.toml");
    let nodes: Vec<BeaconProcess> = (1..=3)
        .map(|i| {
            let n = BeaconProcess::start(
                &proto,
                &format!(
                    "backend_url = \"{}\"\n[cluster]\n{}node_id = \"g{i}\"\n",
                    backend.url(),
                    redis_cluster(&all, Some(16))
                ),
                &[],
            );
            wait_ready(n.addr);
            n
        })
        .collect();
    let open = |addr: SocketAddr, path: &str, user: u64| {
        let bearer = format!("Bearer {}", token(json!(user), json!({})));
        let mut ws = connect_with(&format!("ws://{addr}{path}"), &[("Authorization", &bearer)])
            .expect("upgrade accepted");
        // Answered by the socket's own shard: the socket has joined its home room.
        send(&mut ws, json!({"type": "no_such_message"}));
        assert_eq!(recv(&mut ws)["code"], "unknown_type");
        ws
    };
    let (lat, lng) = (11.2588, 75.8577);
    let search = |ws: &mut Ws, radius_km: f64| -> Vec<u64> {
        send(
            ws,
            json!({"type": "seeker_search_update", "searching": true, "latitude": lat,
                   "longitude": lng, "category_code": "MS0001", "distance_radius": radius_km}),
        );
        provider_ids(&expect(ws, "providers_nearby")["providers"])
    };
    // The geo home (as with one Redis, tests/cluster_geo.rs) holds its lease and listens on
    // the geo channel, both in partition 0.
    let home = cluster.owner_of_key("{0}");
    eventually(30, "a geo home", || {
        let h = cluster.cli(home, &["GET", "beacon.{0}.geo.home"]);
        let subs = cluster.cli(home, &["PUBSUB", "SHARDNUMSUB", "beacon.{0}.geo"]);
        (!h.trim().is_empty() && subs.split_whitespace().nth(1) == Some("1")).then_some(())
    });
    let mut watcher = open(nodes[1].addr, "/ws/location/seeker/", 900);
    assert_eq!(search(&mut watcher, 50.0), Vec::<u64>::new());
    let mut providers = Vec::new();
    for (user, km, at) in [(101u64, 2.0, 0), (102, 1.0, 2)] {
        let mut p = open(nodes[at].addr, "/ws/location/provider/", user);
        send(
            &mut p,
            json!({"type": "provider_status_update", "active": true, "category_code": "MS0001",
                   "subcategory_code": "SS0001", "latitude": lat + km / 111.2, "longitude": lng}),
        );
        let e = recv(&mut watcher);
        assert_eq!(
            (e["type"].as_str(), e["provider_id"].as_u64()),
            (Some("new_provider_available"), Some(user)),
            "{e}"
        );
        providers.push(p);
    }
    let mut seeker = open(nodes[2].addr, "/ws/location/seeker/", 901);
    assert_eq!(search(&mut seeker, 5.0), [102, 101]);
}

/// A master dies and its replica takes over its slots. Both nodes were given that master as
/// their only seed: they find the promoted replica through the masters the last `CLUSTER
/// SLOTS` named, and the same sockets receive again; a room on another master never stops.
#[test]
fn redis_cluster_replica_takes_over() {
    let Some(mut cluster) = RedisCluster::start_with_replicas(1) else {
        return;
    };
    // Rooms on master 0 (the seed, to be killed) and on another master.
    let rooms: Vec<String> = (0..64).map(|i| format!("fo{i}")).collect();
    let owner = |r: &String| cluster.owner_of_key(&shard_channel(r, 16));
    let doomed = rooms.iter().find(|r| owner(r) == 0).unwrap().clone();
    let steady = rooms.iter().find(|r| owner(r) == 1).unwrap().clone();
    let cfg = redis_cluster(&[cluster.url(0)], Some(16));
    let (n1, n2) = (
        cluster_node(&protocol(), &cfg, "f1"),
        cluster_node(&protocol(), &cfg, "f2"),
    );
    let mut on_doomed = [join(n1.addr, &doomed, 1), join(n2.addr, &doomed, 2)];
    let mut on_steady = [join(n1.addr, &steady, 3), join(n2.addr, &steady, 4)];
    for (room, members) in [(&doomed, &mut on_doomed), (&steady, &mut on_steady)] {
        assert_eq!(say(n1.addr, room, "before").0, 200);
        for ws in members.iter_mut() {
            assert_eq!(recv_said(ws)["text"], "before");
        }
    }

    let slot = cluster.keyslot(&shard_channel(&doomed, 16));
    cluster.kill(0);
    // The other master's rooms are served throughout.
    let (status, body) = say(n2.addr, &steady, "during");
    assert_eq!(status, 200, "{body}");
    for ws in &mut on_steady {
        assert_eq!(recv_said(ws)["text"], "during");
    }
    eventually(60, "a replica serving the dead master's slots", || {
        (cluster.owner_of_slot(slot) != 0).then_some(())
    });
    cluster.wait_ok();
    // Publishes until one reaches both nodes; each is confirmed or refused, never lost.
    let mut confirmed = BTreeSet::new();
    let mut n = 0;
    let last = eventually(60, "the doomed room delivering on both nodes again", || {
        n += 1;
        let (status, body) = say(n1.addr, &doomed, &n.to_string());
        match status {
            200 => {
                confirmed.insert(n);
                (body["nodes"] == 2).then_some(n)
            }
            503 => None,
            s => panic!("status {s}: {body}"),
        }
    });
    for ws in &mut on_doomed {
        let mut got: Vec<usize> = Vec::new();
        while got.last() != Some(&last) {
            got.push(recv_said(ws)["text"].as_str().unwrap().parse().unwrap());
        }
        assert!(
            got.iter().all(|g| confirmed.contains(g)),
            "{got:?} of {confirmed:?}"
        );
    }
    assert_eq!(readyz(n1.addr), 200);
}
