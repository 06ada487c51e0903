//! Beacon nodes sharing rooms over a real broker (`[cluster] broker = "redis"` and `"nats"`,
//! every case run with each): real `beacon serve` processes on loopback, a real
//! `redis-server` or `nats-server` each test starts on a free port, real WebSocket clients.
//! Fault tests kill (SIGKILL), restart and pause (SIGSTOP) the broker, and kill a node.
//! Conditions are waited for with generous bounds, never timed tightly.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn protocol() -> PathBuf {
    root().join("tests/fixtures/cluster.toml")
}

fn cluster_config(kind: Kind, url: &str, node: &str, extra: &str) -> String {
    format!(
        "[cluster]\nbroker = \"{}\"\nurl = \"{url}\"\nnode_id = \"{node}\"\n{extra}",
        kind.name()
    )
}

fn node(broker: &Broker, name: &str) -> BeaconProcess {
    let n = BeaconProcess::start(
        &protocol(),
        &cluster_config(broker.kind, &broker.url(), name, ""),
        &[],
    );
    wait_ready(n.addr);
    n
}

/// Reads a member's numbered messages into `got` until `last` arrives.
fn read_until(ws: &mut Ws, got: &mut Vec<usize>, last: usize) {
    while got.last() != Some(&last) {
        got.push(recv_said(ws)["text"].as_str().unwrap().parse().unwrap());
    }
}

/// A user id as text, however the message renders it.
fn id(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

both!(
    every_delivery_reaches_members_on_every_node,
    every_delivery_crosses_nodes_redis,
    every_delivery_crosses_nodes_nats
);
/// Every kind of delivery crosses nodes: the publish API, a socket's broadcast (and one that
/// excludes its sender), presence join and leave.
fn every_delivery_reaches_members_on_every_node(kind: Kind) {
    let Some(redis) = Broker::start(kind, free_port()) else {
        return;
    };
    let nodes: Vec<BeaconProcess> = (1..=3).map(|i| node(&redis, &format!("n{i}"))).collect();
    let mut a = join(nodes[0].addr, "x", 1);
    let mut b = join(nodes[1].addr, "x", 2);
    let mut c = join(nodes[2].addr, "x", 3);

    // Publish API on node 1 reaches members on nodes 1, 2 and 3.
    let (status, body) = say(nodes[0].addr, "x", "api");
    assert_eq!(status, 200, "{body}");
    if kind == Kind::Redis {
        assert_eq!(
            body["nodes"], 3,
            "one subscription per node with members: {body}"
        );
    } else {
        assert_eq!(
            body["nodes"],
            Value::Null,
            "NATS does not count receivers: {body}"
        );
    }
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(recv_said(ws)["text"], "api");
    }
    // A socket's broadcast on node 2 reaches everyone, itself included.
    send(&mut b, json!({"type": "say", "text": "from b"}));
    for ws in [&mut a, &mut b, &mut c] {
        let v = recv_said(ws);
        assert_eq!(
            (v["text"].as_str(), id(&v["sender"])),
            (Some("from b"), "2".into())
        );
    }
    // One that excludes its sender still does after its round trip through the broker.
    send(&mut c, json!({"type": "shout", "text": "not me"}));
    assert_eq!(recv_said(&mut a)["text"], "not me");
    assert_eq!(recv_said(&mut b)["text"], "not me");
    assert_eq!(say(nodes[0].addr, "x", "after").0, 200);
    for ws in [&mut a, &mut b] {
        assert_eq!(recv_said(ws)["text"], "after");
    }
    assert_eq!(
        recv_said(&mut c)["text"],
        "after",
        "the shout was not echoed"
    );

    // A broadcast into another room (the router's cross-room path, as `[[http]]` broadcasts
    // take): from node 1 into user 5's inbox, open on node 2.
    let mut inbox = connect(&format!(
        "ws://{}/ws/inbox/5/?token={}",
        nodes[1].addr,
        member(5)
    ));
    send(&mut a, json!({"type": "tell", "to": 5, "text": "psst"}));
    let v = recv(&mut inbox);
    assert_eq!(
        (v["text"].as_str(), id(&v["sender"])),
        (Some("psst"), "1".into())
    );

    // Presence: a member arriving on node 3 is announced on nodes 1 and 2, and its leaving.
    let mut d = join(nodes[2].addr, "x", 4);
    for ws in [&mut a, &mut b] {
        let v = recv(ws);
        assert_eq!(
            (v["type"].as_str(), id(&v["user"]), v["status"].as_str()),
            (Some("presence"), "4".into(), Some("online"))
        );
    }
    d.close(None).unwrap();
    while d.read().is_ok() {}
    for ws in [&mut a, &mut b] {
        let v = recv(ws);
        assert_eq!(
            (id(&v["user"]), v["status"].as_str()),
            ("4".into(), Some("offline"))
        );
    }
    // A room with members on one node only: the others do not subscribe to it.
    let mut solo = join(nodes[1].addr, "solo", 9);
    let (status, body) = say(nodes[0].addr, "solo", "just b");
    assert_eq!(status, 200, "{body}");
    if kind == Kind::Redis {
        assert_eq!(body["nodes"], 1, "{body}");
    }
    assert_eq!(recv_said(&mut solo)["text"], "just b");

    let m = http(nodes[0].addr, "GET", "/metrics", &[], b"").1;
    assert_eq!(
        metric_sum(&m, "beacon_broker_up", &[]),
        2.0,
        "both shards up:\n{m}"
    );
    assert!(metric_sum(&m, "beacon_broker_published_total", &[]) >= 1.0);
    drop(nodes);
}

both!(
    one_order_per_room_on_every_node,
    one_order_per_room_redis,
    one_order_per_room_nats
);
/// Publishers on different nodes burst into one room at once (sockets on nodes 1 and 2, the
/// publish API on node 3): each publisher's messages keep their order everywhere, and on Redis
/// every member on every node sees one order. Core NATS has no order across publishers (the
/// server routes each publisher's messages concurrently), so there members on one node share
/// an order (one subscription per node) but nodes may interleave publishers differently.
fn one_order_per_room_on_every_node(kind: Kind) {
    let Some(redis) = Broker::start(kind, free_port()) else {
        return;
    };
    let nodes: Vec<BeaconProcess> = (1..=3).map(|i| node(&redis, &format!("o{i}"))).collect();
    let mut members: Vec<Ws> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| join(n.addr, "order", 10 + i as u64))
        .collect();
    const EACH: usize = 150;
    let start = std::sync::Arc::new(std::sync::Barrier::new(3));
    let socket_publisher = |addr: SocketAddr, uid: u64, tag: &'static str| {
        let mut ws = join(addr, "order", uid);
        let start = start.clone();
        std::thread::spawn(move || {
            start.wait();
            for i in 0..EACH {
                send(&mut ws, json!({"type": "say", "text": format!("{tag}{i}")}));
                // Small pauses spread the bursts over each other (shaping, not timing).
                if i % 10 == 9 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            ws
        })
    };
    let a = socket_publisher(nodes[0].addr, 20, "A");
    let b = socket_publisher(nodes[1].addr, 21, "B");
    let c_addr = nodes[2].addr;
    let c = {
        let start = start.clone();
        std::thread::spawn(move || {
            start.wait();
            for i in 0..EACH {
                let (s, body) = say(c_addr, "order", &format!("C{i}"));
                assert_eq!(s, 200, "{body}");
            }
        })
    };
    members.push(a.join().unwrap());
    members.push(b.join().unwrap());
    c.join().unwrap();
    let mut seen: Vec<Vec<String>> = Vec::new();
    for ws in members.iter_mut() {
        let got: Vec<String> = (0..3 * EACH)
            .map(|_| recv_said(ws)["text"].as_str().unwrap().to_owned())
            .collect();
        for p in ["A", "B", "C"] {
            let mine: Vec<usize> = got
                .iter()
                .filter_map(|t| t.strip_prefix(p)?.parse().ok())
                .collect();
            assert_eq!(
                mine,
                (0..EACH).collect::<Vec<_>>(),
                "{p}'s messages in order"
            );
        }
        seen.push(got);
    }
    // seen: members on nodes 1, 2, 3, then publisher A (node 1) and B (node 2).
    if kind == Kind::Redis {
        for s in &seen[1..] {
            assert_eq!(s, &seen[0], "every member sees one order");
        }
    } else {
        assert_eq!(seen[3], seen[0], "members on one node see one order");
        assert_eq!(seen[4], seen[1], "members on one node see one order");
    }
    // How much the publishers interleaved (the more, the more this proves).
    let switches = seen[0]
        .windows(2)
        .filter(|w| w[0][..1] != w[1][..1])
        .count();
    eprintln!(
        "order: {switches} switches between publishers in {} messages",
        3 * EACH
    );
}

both!(
    broker_killed_and_restarted_mid_stream,
    broker_killed_and_restarted_redis,
    broker_killed_and_restarted_nats
);
/// The broker SIGKILLed mid-stream and restarted on its port: publishes answer 503 naming the
/// broker while it is gone, `/readyz` says not ready, sockets stay open, and within 5 s of
/// it answering again the nodes deliver without a restart. Every message sent is either
/// delivered to both nodes, refused with an error, or reported by the API as reaching fewer
/// nodes: nothing is lost silently.
fn broker_killed_and_restarted_mid_stream(kind: Kind) {
    let port = free_port();
    let Some(redis) = Broker::start(kind, port) else {
        return;
    };
    let n1 = node(&redis, "k1");
    let n2 = node(&redis, "k2");
    let mut members = [join(n1.addr, "k", 1), join(n2.addr, "k", 2)];
    let mut got: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    const SENT: usize = 300;
    let mut redis = Some(redis);
    let mut acked_all = HashSet::new(); // confirmed with both nodes subscribed
    let mut acked_short = 0; // confirmed, but the API said fewer nodes had members
    let mut refused = 0;
    let mut saw_unready = false;
    let mut restarted_at = None;
    let mut recovered_after = None;
    for i in 0..SENT {
        if i == 100 {
            // Between publishes, and once the members have what was confirmed so far, so
            // nothing is in flight when it dies: a broker confirms a publish when it has
            // routed it, not when the subscribers' connections have carried it.
            for (ws, got) in members.iter_mut().zip(&mut got) {
                read_until(ws, got, 99);
            }
            redis.take().unwrap().kill();
        }
        if i > 100 && restarted_at.is_none() && refused >= 20 {
            assert_eq!(readyz(n1.addr), 503, "not ready while the broker is gone");
            saw_unready = true;
            redis = Some(Broker::start(kind, port).expect("the broker restarts"));
            restarted_at = Some(Instant::now());
            if kind == Kind::Nats {
                // NATS does not say how many nodes a publish reached, so the stream resumes
                // once both nodes report ready (every room resubscribed): from then on every
                // confirmed message must reach both.
                wait_ready(n1.addr);
                wait_ready(n2.addr);
            }
        }
        let (status, body) = say(n1.addr, "k", &i.to_string());
        let reached_all = kind == Kind::Nats || body["nodes"] == 2;
        match status {
            200 if reached_all => {
                acked_all.insert(i);
                if let (Some(t), None) = (restarted_at, recovered_after) {
                    recovered_after = Some(t.elapsed());
                }
            }
            200 => acked_short += 1,
            503 => {
                assert_eq!(
                    body["broker"],
                    format!("{}://127.0.0.1:{port}", kind.name()),
                    "{body}"
                );
                assert_eq!(body["error"], "broker unavailable");
                refused += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            s => panic!("status {s}: {body}"),
        }
    }
    assert!(saw_unready);
    let recovered = recovered_after.expect("delivering again after the restart");
    eprintln!(
        "kill/restart: {} delivered everywhere, {acked_short} reported short, {refused} refused; recovered {recovered:?} after the broker answered",
        acked_all.len()
    );
    assert!(
        recovered < Duration::from_secs(5),
        "recovered in {recovered:?}"
    );
    assert_eq!(acked_all.len() + acked_short + refused, SENT);
    // Both sockets survived and got every message confirmed for both nodes, in order.
    let last = *acked_all.iter().max().unwrap();
    for (ws, got) in members.iter_mut().zip(got) {
        let mut got = got;
        read_until(ws, &mut got, last);
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(got, sorted, "in order");
        let got: HashSet<usize> = got.into_iter().collect();
        assert!(acked_all.is_subset(&got), "every confirmed message arrived");
        assert!(
            got.len() <= acked_all.len() + acked_short,
            "nothing unconfirmed arrived"
        );
    }
    let fails = metric(n1.addr, "beacon_broker_publish_failures_total", &[]);
    assert!(
        fails >= refused as f64,
        "{fails} failures counted for {refused} refusals"
    );
    assert!(metric(n1.addr, "beacon_broker_reconnects_total", &[]) >= 1.0);
    wait_ready(n2.addr);
}

both!(
    broker_paused_then_resumed,
    broker_paused_redis,
    broker_paused_nats
);
/// The broker paused (SIGSTOP) for 10 s: publishes time out into 503s, the liveness checks rebuild
/// the link (not ready meanwhile), and after SIGCONT both nodes deliver again.
fn broker_paused_then_resumed(kind: Kind) {
    let Some(redis) = Broker::start(kind, free_port()) else {
        return;
    };
    let n1 = node(&redis, "p1");
    let n2 = node(&redis, "p2");
    let mut m2 = join(n2.addr, "p", 2);
    assert_eq!(say(n1.addr, "p", "before").0, 200);
    assert_eq!(recv_said(&mut m2)["text"], "before");
    redis.signal("STOP");
    let paused = Instant::now();
    let (status, body) = say(n1.addr, "p", "during");
    assert_eq!(status, 503, "{body}");
    eventually(15, "node 1 not ready", || {
        (readyz(n1.addr) == 503).then_some(())
    });
    eventually(15, "node 2 not ready", || {
        (readyz(n2.addr) == 503).then_some(())
    });
    // The socket stays open through the pause.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(paused.elapsed()));
    redis.signal("CONT");
    wait_ready(n1.addr);
    wait_ready(n2.addr);
    let (status, body) = say(n1.addr, "p", "after");
    assert_eq!(status, 200, "{body}");
    // "during" may have reached Redis before it stopped answering (its 503 says "maybe"),
    // so skip it if it shows up.
    let mut v = recv_said(&mut m2);
    if v["text"] == "during" {
        v = recv_said(&mut m2);
    }
    assert_eq!(v["text"], "after");
}

both!(
    a_killed_node_does_not_affect_the_others,
    a_killed_node_redis,
    a_killed_node_nats
);
/// A node killed with SIGKILL: the others and their sockets carry on.
fn a_killed_node_does_not_affect_the_others(kind: Kind) {
    let Some(redis) = Broker::start(kind, free_port()) else {
        return;
    };
    let n1 = node(&redis, "d1");
    let n2 = node(&redis, "d2");
    let mut n3 = node(&redis, "d3");
    let mut m1 = join(n1.addr, "d", 1);
    let mut m2 = join(n2.addr, "d", 2);
    let _m3 = join(n3.addr, "d", 3);
    let _ = n3.child.kill();
    let _ = n3.child.wait();
    for i in 0..20 {
        let (status, body) = say(n1.addr, "d", &format!("{i}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(recv_said(&mut m1)["text"], i.to_string());
        assert_eq!(recv_said(&mut m2)["text"], i.to_string());
    }
    assert_eq!(readyz(n2.addr), 200);
}

both!(
    startup_without_the_broker,
    startup_without_the_broker_redis,
    startup_without_the_broker_nats
);
/// `serve` refuses to start when the broker does not answer, in one line; with
/// `start_without_broker` it starts not ready and becomes ready once the broker is there.
fn startup_without_the_broker(kind: Kind) {
    // Started (and stopped) once to learn it is installed.
    let Some(probe) = Broker::start(kind, free_port()) else {
        return;
    };
    probe.kill();
    let port = free_port();
    let url = format!("{}://127.0.0.1:{port}", kind.name());
    let line = serve_refused(&protocol(), &cluster_config(kind, &url, "s1", ""));
    assert!(
        line.contains(&format!("broker {url} unreachable")),
        "{line}"
    );
    assert!(line.contains("start_without_broker"), "{line}");

    let n = BeaconProcess::start(
        &protocol(),
        &cluster_config(kind, &url, "s1", "start_without_broker = true\n"),
        &[],
    );
    assert_eq!(readyz(n.addr), 503);
    let (status, body) = say(n.addr, "s", "no broker");
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("down")),
        "{body}"
    );
    // Local-only delivery is still there for those who ask for it.
    let mut m = join(n.addr, "s", 1);
    if kind == Kind::Redis {
        // Its presence was decided by this node alone, and counted so.
        let fell_back = metric(
            n.addr,
            "beacon_broker_fallbacks_total",
            &["what=\"presence\""],
        );
        assert!(fell_back >= 1.0, "{fell_back}");
    }
    let body = json!({"room": "room:s", "message": {"type": "said", "text": "local"}});
    let (status, answer) = post_api(n.addr, "/api/publish?local=1", body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(recv_said(&mut m)["text"], "local");
    // A socket's broadcast while the broker is down reaches this node's members, counted.
    send(&mut m, json!({"type": "say", "text": "still here"}));
    assert_eq!(recv_said(&mut m)["text"], "still here");
    assert!(
        metric(
            n.addr,
            "beacon_broker_dropped_total",
            &["reason=\"local_only\""]
        ) >= 1.0
    );

    let _broker = Broker::start(kind, port).unwrap();
    wait_ready(n.addr);
    assert_eq!(say(n.addr, "s", "now").0, 200);
    assert_eq!(recv_said(&mut m)["text"], "now");
}

/// A ws-token minted by one node (`[[http]]` with `mint`, smartparking's exchange) opens a
/// socket on another when the nodes share the key, and `check` refuses a cluster whose minting
/// key is generated per node.
#[test]
fn minted_ws_tokens_open_sockets_on_any_node() {
    let Some(broker) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let proto = root().join("config/protocols/smartparking.toml");
    let keys = |issued: &str| {
        format!("[keys.jwt]\nsecret_env = \"BEACON_JWT_SECRET\"\n\n[keys.issued]\n{issued}\n\n")
    };
    let dir = TempDir::new("cluster-mint");
    let cfg = dir.path().join("beacon.toml");
    let generated = keys("generate = true") + &cluster_config(Kind::Redis, &broker.url(), "m0", "");
    std::fs::write(&cfg, generated).unwrap();
    let out = Command::new(beacon_bin())
        .arg("check")
        .arg("--protocol")
        .arg(&proto)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("key `issued` is generated by each node") && err.contains("secret_env"),
        "{err}"
    );

    let env = [(
        "BEACON_ISSUED_SECRET",
        "a-secret-every-node-shares-0123456789",
    )];
    let start = |name: &str| {
        let config = keys("secret_env = \"BEACON_ISSUED_SECRET\"")
            + &cluster_config(Kind::Redis, &broker.url(), name, "");
        let n = BeaconProcess::start_with_env(&proto, &config, &[], &env);
        wait_ready(n.addr);
        n
    };
    let (a, b) = (start("m1"), start("m2"));
    let bearer = format!("Bearer {}", token(json!(7), json!({})));
    let (status, body) = http(
        a.addr,
        "GET",
        "/api/user/ws-token/",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let minted: Value = serde_json::from_str(&body).unwrap();
    let minted = minted["ws_token"].as_str().unwrap();
    let mut ws = connect(&format!("ws://{}/ws/notifications/?token={minted}", b.addr));
    let note =
        json!({"room": "user:7", "message": {"type": "notification", "message": "spot free"}});
    let (status, body) = publish(a.addr, note);
    assert_eq!(status, 200, "{body}");
    assert_eq!(recv(&mut ws)["message"], "spot free");
}

/// Two nodes behind deploy/nginx/beacon-cluster.conf (only its addresses changed): a client
/// whose node is killed reconnects to the same URL, lands on the other node and gets its room
/// again; publishes on that node reach it.
#[test]
fn a_client_that_loses_its_node_reconnects_through_nginx() {
    let Some(nginx) = require_program("nginx", &["/usr/sbin/nginx", "/usr/bin/nginx"]) else {
        return;
    };
    let Some(broker) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let nodes = [node(&broker, "g1"), node(&broker, "g2")];
    let dir = TempDir::new("nginx-cluster");
    let d = dir.path().display().to_string();
    let port = free_port();
    let nginx_conf = nginx_config(
        &dir,
        "deploy/nginx/beacon-cluster.conf",
        &[
            ("server 127.0.0.1:8081", format!("server {}", nodes[0].addr)),
            ("server 127.0.0.1:8082", format!("server {}", nodes[1].addr)),
            ("listen 80;", format!("listen 127.0.0.1:{port};")),
        ],
    );
    let child = Command::new(&nginx)
        .args(["-p", &d, "-e", &format!("{d}/error.log"), "-c"])
        .arg(&nginx_conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _nginx = Terminated(child);
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(20, "nginx listening", || {
        std::net::TcpStream::connect(front).ok()
    });

    let connections = |n: &BeaconProcess| metric(n.addr, "beacon_connections", &[]);
    let mut ws = join(front, "ng", 1);
    let first = eventually(10, "the socket counted on a node", || {
        (0..2).find(|&i| connections(&nodes[i]) == 1.0)
    });
    let mut nodes = Vec::from(nodes);
    assert_eq!(say(nodes[1 - first].addr, "ng", "hello").0, 200);
    assert_eq!(
        recv_said(&mut ws)["text"],
        "hello",
        "cross-node, through nginx"
    );

    // The client's node dies; the client reconnects to the same URL.
    let mut lost = nodes.remove(first);
    let _ = lost.child.kill();
    let _ = lost.child.wait();
    let kept = &nodes[0];
    while ws.read().is_ok() {}
    let mut ws = join(front, "ng", 1);
    assert_eq!(
        connections(kept),
        1.0,
        "the new socket is on the surviving node"
    );
    assert_eq!(say(kept.addr, "ng", "again").0, 200);
    assert_eq!(recv_said(&mut ws)["text"], "again", "its room again");
}

/// nginx's master, stopped with SIGTERM (so it stops its workers) when the test ends.
struct Terminated(Child);

impl Drop for Terminated {
    fn drop(&mut self) {
        signal(self.0.id(), "TERM");
        let _ = self.0.wait();
    }
}

/// `max_connections_per_user` holds across nodes (Redis): a user at the cap on two nodes is
/// refused on a third; a closed socket frees its place; a killed node's sockets stop counting
/// once its alive key expires.
#[test]
fn per_user_connection_caps_hold_across_nodes() {
    let Some(broker) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let src = std::fs::read_to_string(protocol()).unwrap();
    let src = src
        .replacen("[limits]\n", "[limits]\nmax_connections_per_user = 2\n", 1)
        .replacen(
            "[close_on]\n",
            "[close_on]\ntoo_many_connections = \"rate\"\n",
            1,
        );
    let dir = TempDir::new("cluster-caps");
    let proto = dir.path().join("caps.toml");
    std::fs::write(&proto, src).unwrap();
    let start = |name: &str| {
        let config = cluster_config(Kind::Redis, &broker.url(), name, "");
        let n = BeaconProcess::start(&proto, &config, &[]);
        wait_ready(n.addr);
        n
    };
    let (n1, mut n2, n3) = (start("c1"), start("c2"), start("c3"));
    let mut first = join(n1.addr, "caps", 7);
    let _second = join(n2.addr, "caps", 7);
    let refused = |addr: SocketAddr| {
        let url = format!("ws://{addr}/ws/rooms/caps/?token={}", member(7));
        let mut ws = connect(&url);
        expect_close(&mut ws).0
    };
    assert_eq!(
        refused(n3.addr),
        4029,
        "a third socket on a third node is over the cap"
    );
    // Another user is not affected.
    let _other = join(n3.addr, "caps", 8);

    first.close(None).unwrap();
    while first.read().is_ok() {}
    let _third = eventually(10, "the closed socket's place freed", || {
        let mut ws = connect(&format!(
            "ws://{}/ws/rooms/caps/?token={}",
            n3.addr,
            member(7)
        ));
        (recv(&mut ws)["type"] == "welcome").then_some(ws)
    });
    assert_eq!(refused(n1.addr), 4029);

    // Node 2 dies with user 7's socket: it stops counting when its alive key expires (15 s).
    let _ = n2.child.kill();
    let _ = n2.child.wait();
    let _back = eventually(30, "the killed node's sockets no longer counted", || {
        admitted(n1.addr, 7)
    });
}

/// A socket for `uid` in room `caps`, or `None` when the server closes it instead of welcoming.
fn admitted(addr: SocketAddr, uid: u64) -> Option<Ws> {
    let mut ws = connect(&format!("ws://{addr}/ws/rooms/caps/?token={}", member(uid)));
    match ws.read() {
        Ok(tungstenite::Message::Text(t)) if t.contains("welcome") => Some(ws),
        _ => None,
    }
}

/// A TCP proxy in front of the broker that can stop carrying what the broker sends to
/// subscribe connections (those that sent `SUBSCRIBE`) while everything stays connected: a
/// wedged subscription, as a stuck Sentinel failover once produced.
struct WedgingProxy {
    port: u16,
    wedged: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WedgingProxy {
    fn start(upstream: u16) -> WedgingProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let wedged = Arc::new(AtomicBool::new(false));
        let w = wedged.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let is_sub = Arc::new(AtomicBool::new(false));
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let sub = is_sub.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if buf[..n].windows(9).any(|x| x == b"SUBSCRIBE") {
                            sub.store(true, Ordering::SeqCst);
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Both);
                });
                let (mut s_in, mut c_out) = (server, client);
                let w = w.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        // Wedged: hold whatever the broker sends a subscriber, connection open.
                        while w.load(Ordering::SeqCst) && is_sub.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        match s_in.read(&mut buf) {
                            Ok(n) if n > 0 => {
                                if w.load(Ordering::SeqCst) && is_sub.load(Ordering::SeqCst) {
                                    // Read while wedging began: dropped, as a wedge loses it.
                                    continue;
                                }
                                if c_out.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        WedgingProxy { port, wedged }
    }

    fn wedge(&self, on: bool) {
        self.wedged.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A subscription that silently stops delivering (its TCP connection healthy, the publish
/// connection too) is caught by the liveness probe on the node's service channel: the node
/// turns not ready, rebuilds its link, and delivers again once the broker's messages flow.
#[test]
fn a_wedged_subscription_is_detected_and_rebuilt() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let proxy = WedgingProxy::start(redis.port);
    let via_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    let n1 = BeaconProcess::start(
        &protocol(),
        &cluster_config(Kind::Redis, &via_proxy, "w1", ""),
        &[],
    );
    wait_ready(n1.addr);
    let n2 = node(&redis, "w2");
    let mut m = join(n1.addr, "w", 1);
    assert_eq!(say(n2.addr, "w", "before").0, 200);
    assert_eq!(recv_said(&mut m)["text"], "before");

    proxy.wedge(true);
    // Publishes still succeed (Redis is fine); only node 1's subscriptions went silent.
    assert_eq!(say(n2.addr, "w", "lost").0, 200);
    eventually(20, "node 1 noticing the silent subscription", || {
        (readyz(n1.addr) == 503).then_some(())
    });
    assert!(metric(n1.addr, "beacon_broker_reconnects_total", &[]) >= 1.0);
    assert_eq!(readyz(n2.addr), 200, "the other node is not affected");

    proxy.wedge(false);
    wait_ready(n1.addr);
    assert_eq!(say(n2.addr, "w", "after").0, 200);
    let mut v = recv_said(&mut m);
    if v["text"] == "lost" {
        v = recv_said(&mut m);
    }
    assert_eq!(v["text"], "after", "delivering again, same socket");
}

/// Several NATS URLs are servers of one NATS cluster: a node starts when any answers, and its
/// links move on from one that does not.
#[test]
fn a_nats_url_list_is_tried_in_turn() {
    let Some(nats) = Broker::start(Kind::Nats, free_port()) else {
        return;
    };
    let nobody = format!("nats://127.0.0.1:{}", free_port());
    let nodes: Vec<BeaconProcess> = ["n1", "n2"]
        .iter()
        .map(|name| {
            let cfg = format!(
                "[cluster]\nbroker = \"nats\"\nurl = [\"{nobody}\", \"{}\"]\nnode_id = \"{name}\"\n",
                nats.url()
            );
            let n = BeaconProcess::start(&protocol(), &cfg, &[]);
            wait_ready(n.addr);
            n
        })
        .collect();
    let mut a = join(nodes[0].addr, "x", 1);
    let mut b = join(nodes[1].addr, "x", 2);
    assert_eq!(say(nodes[0].addr, "x", "across").0, 200);
    assert_eq!(recv_said(&mut a)["text"], "across");
    assert_eq!(recv_said(&mut b)["text"], "across");
}

/// A Redis ACL user in the URL (`redis://user:password@host`): nodes authenticate as that
/// user (the default user is switched off, so nothing else gets in) and share rooms; a wrong
/// password is refused at startup in one line naming the broker, without the password.
#[test]
fn a_redis_acl_user_authenticates_the_nodes() {
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let set = |args: &[&str]| assert_eq!(redis.redis_cli(args).trim(), "OK");
    set(&[
        "ACL", "SETUSER", "app", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    set(&["ACL", "SETUSER", "default", "off"]);
    let url = |pw: &str| {
        redis
            .url()
            .replace("redis://", &format!("redis://app:{pw}@"))
    };

    let nodes: Vec<BeaconProcess> = ["n1", "n2"]
        .iter()
        .map(|name| {
            cluster_node(
                &protocol(),
                &format!("broker = \"redis\"\nurl = \"{}\"\n", url("s3cret")),
                name,
            )
        })
        .collect();
    let mut a = join(nodes[0].addr, "acl", 1);
    let mut b = join(nodes[1].addr, "acl", 2);
    assert_eq!(say(nodes[1].addr, "acl", "in").0, 200);
    assert_eq!(recv_said(&mut a)["text"], "in");
    assert_eq!(recv_said(&mut b)["text"], "in");

    let wrong = cluster_config(Kind::Redis, &url("wrong"), "n3", "");
    let line = serve_refused(&protocol(), &wrong);
    assert!(
        line.contains(&format!("broker {} unreachable", redis.url())) && line.contains("WRONGPASS"),
        "{line}"
    );
    assert!(
        !line.contains("wrong"),
        "the password stays out of the log: {line}"
    );
}

/// A NATS server that wants a user and password (`nats://user:password@host`): the nodes log
/// in with them and share rooms.
#[test]
fn a_nats_user_and_password_log_the_nodes_in() {
    let Some(nats) = Broker::start_with(
        Kind::Nats,
        free_port(),
        &["--user", "app", "--pass", "s3cret"],
    ) else {
        return;
    };
    let url = nats.url().replace("nats://", "nats://app:s3cret@");
    let nodes: Vec<BeaconProcess> = ["n1", "n2"]
        .iter()
        .map(|name| {
            cluster_node(
                &protocol(),
                &format!("broker = \"nats\"\nurl = \"{url}\"\n"),
                name,
            )
        })
        .collect();
    let mut a = join(nodes[0].addr, "auth", 1);
    let mut b = join(nodes[1].addr, "auth", 2);
    assert_eq!(say(nodes[0].addr, "auth", "in").0, 200);
    assert_eq!(recv_said(&mut a)["text"], "in");
    assert_eq!(recv_said(&mut b)["text"], "in");
}
