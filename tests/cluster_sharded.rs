//! Rooms spread over several Redis servers (`[cluster] url = [..]`) and over a Redis Cluster
//! with sharded PUB/SUB (`redis_cluster = true`): real `beacon serve` processes on loopback,
//! real `redis-server`s (standalone, or three cluster masters created with
//! `redis-cli --cluster create`) that each test starts on free ports, real WebSocket clients.
//! Fault tests SIGKILL one Redis (or one master) and restart it on its port. Conditions are
//! waited for with generous bounds, never timed tightly.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

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

/// The Redis Cluster partition of a room (`room:<name>`), as the spec places it.
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
