//! Debian's prometheus scraping the real `beacon` binary with deploy/prometheus/ (only the
//! target and intervals changed): the series arrive, the rules load and evaluate, and an
//! alert expression evaluates over Beacon's series through the HTTP API; the broker alerts follow a
//! clustered node's real Redis going away.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::{json, Value};

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET over HTTP/1.0, so Go's server answers without chunked encoding.
fn get10(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

fn api(p: &Prometheus, path: &str) -> Value {
    let (status, body) = get10(p.addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{body}");
    v["data"].clone()
}

fn query(p: &Prometheus, q: &str) -> Vec<Value> {
    api(p, &format!("/api/v1/query?query={}", url_encode(q)))["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Debian's prometheus with deploy/prometheus/ (the target and intervals changed), scraping
/// `target` every second and evaluating the rules every second; ready when this returns.
fn start_prometheus(bin: &std::path::Path, target: SocketAddr) -> Prometheus {
    let rules = root().join("deploy/prometheus/beacon.rules.yml");
    let beacon_addr = target;
    let dir = TempDir::new("prometheus");
    let cfg = std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).unwrap();
    let mut cfg2 = cfg.clone();
    for (from, to) in [
        ("\"127.0.0.1:8080\"", format!("\"{}\"", beacon_addr)),
        ("scrape_interval: 15s", "scrape_interval: 1s".to_owned()),
        (
            "evaluation_interval: 15s",
            "evaluation_interval: 1s".to_owned(),
        ),
        ("- beacon.rules.yml", format!("- {}", rules.display())),
    ] {
        assert!(cfg2.contains(from), "prometheus.yml no longer has `{from}`");
        cfg2 = cfg2.replace(from, &to);
    }
    std::fs::write(dir.path().join("prometheus.yml"), cfg2).unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let p = Prometheus {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        _dir: dir,
    };
    eventually(60, "prometheus ready", || {
        std::net::TcpStream::connect(p.addr)
            .ok()
            .and_then(|_| (get10(p.addr, "/-/ready").0 == 200).then_some(()))
    });

    p
}

const CONFIG: &str = r#"
[keys.jwt]
secret_env = "BEACON_JWT_SECRET"
"#;

#[test]
fn prometheus_scrapes_beacon_and_evaluates_the_rules() {
    let Some(bin) = require_program("prometheus", &["/usr/bin/prometheus"]) else {
        return;
    };
    let promtool = require_program("promtool", &["/usr/bin/promtool"]).unwrap();
    let rules = root().join("deploy/prometheus/beacon.rules.yml");
    let check = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let beacon = BeaconProcess::start(&root().join("protocol.toml"), CONFIG, &[]);
    // Give the series something to count: one socket, one publish, one refused handshake.
    let mut ws = connect(&format!(
        "ws://{}/ws/notifications/?token={}",
        beacon.addr,
        token(json!(5), json!({}))
    ));
    let (status, _) = publish(
        beacon.addr,
        json!({"room": "user:5", "message": {"type": "notification", "title": "t", "message": "m"}}),
    );
    assert_eq!(status, 200);
    assert_eq!(recv(&mut ws)["type"], "notification");
    let mut bad = connect(&format!("ws://{}/ws/notifications/?token=x", beacon.addr));
    assert_eq!(expect_close(&mut bad).0, 4001);

    let p = start_prometheus(&bin, beacon.addr);

    // The target is up and Beacon's series are stored, with the shard label.
    let up = eventually(60, "beacon target scraped", || {
        let r = query(&p, "up{job=\"beacon\"}");
        (r.first()?["value"][1] == "1").then_some(r)
    });
    assert_eq!(up[0]["metric"]["instance"], beacon.addr.to_string());
    for series in [
        "beacon_connections",
        "beacon_connections_opened_total",
        "beacon_handshakes_rejected_total",
        "beacon_slow_consumer_disconnects_total",
        "beacon_publish_latency_seconds_bucket",
        "beacon_ready",
    ] {
        assert!(!query(&p, series).is_empty(), "{series} not scraped");
    }
    let open = query(&p, "sum(beacon_connections)");
    assert_eq!(open[0]["value"][1], "1");
    let refused = query(
        &p,
        "sum(beacon_handshakes_rejected_total{reason=\"token_invalid\"})",
    );
    assert_eq!(refused[0]["value"][1], "1");

    // Every rule loaded, was evaluated without error, and the recording rule produced data.
    let groups = eventually(60, "rules evaluated", || {
        let d = api(&p, "/api/v1/rules");
        let groups = d["groups"].as_array()?.clone();
        let rules: Vec<&Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .collect();
        let evaluated = rules.iter().all(|r| {
            r["lastEvaluation"]
                .as_str()
                .is_some_and(|t| !t.starts_with("0001"))
        });
        evaluated.then_some(groups)
    });
    for r in groups[0]["rules"].as_array().unwrap() {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed: {}",
            r["name"], r["lastError"]
        );
    }
    let recorded = eventually(60, "recording rule output", || {
        let r = query(&p, "instance:beacon_connections:sum");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(recorded[0]["value"][1], "1");
    // The latency alert's quantile over real series (all publishes so far, not a rate, so it
    // is defined with a single publish): a number of seconds, at most the top bucket.
    let p99 = query(
        &p,
        "histogram_quantile(0.99, sum by (instance, le) (beacon_publish_latency_seconds_bucket))",
    );
    assert_eq!(p99.len(), 1, "{p99:?}");
    let v: f64 = p99[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(v.is_finite() && v <= 1.0, "{v}");
    // BeaconNotReady's expression is false while serving.
    assert!(query(&p, "beacon_ready == 0").is_empty());
    drop(ws);
}

/// The broker alerts over a clustered node's real series: healthy, none is pending; with its
/// Redis killed, `BeaconBrokerDown` goes pending (its `for` keeps it from firing in a test)
/// and the partial-outage alert does not.
#[test]
fn broker_alerts_follow_the_broker() {
    let Some(bin) = require_program("prometheus", &["/usr/bin/prometheus"]) else {
        return;
    };
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let cfg = format!(
        "[cluster]\nbroker = \"redis\"\nurl = \"{}\"\nnode_id = \"prom\"\n",
        redis.url()
    );
    let beacon = BeaconProcess::start(&root().join("tests/fixtures/cluster.toml"), &cfg, &[]);
    eventually(20, "node ready", || {
        (http(beacon.addr, "GET", "/readyz", &[], b"").0 == 200).then_some(())
    });
    let p = start_prometheus(&bin, beacon.addr);
    eventually(60, "partitions up scraped", || {
        let r = query(&p, "min(beacon_broker_partitions_up)");
        (r.first()?["value"][1] == "1").then_some(())
    });
    let alerts = |name: &str| query(&p, &format!("ALERTS{{alertname=\"{name}\"}}"));
    assert!(alerts("BeaconBrokerDown").is_empty());

    redis.kill();
    eventually(60, "BeaconBrokerDown pending", || {
        let a = alerts("BeaconBrokerDown");
        (a.first()?["metric"]["alertstate"] == "pending").then_some(())
    });
    assert!(alerts("BeaconBrokerPartitionDown").is_empty());
    assert_eq!(http(beacon.addr, "GET", "/readyz", &[], b"").0, 503);
}
