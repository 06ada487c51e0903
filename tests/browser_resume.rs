//! Headless Chromium (tests/browser/resume.test.mjs) follows rooms with history through the JS
//! client while a proxy between the page and the real `beacon` binary drops every connection:
//! each message published meanwhile is shown exactly once, in order, and a client too far
//! behind is told to reload. tests/browser/resume_restart.test.mjs does the same through real
//! nginx in front of a Beacon node that is killed and started again, with history in Redis
//! (`[cluster] broker = "redis"`), and nginx stopped and started: one epoch throughout.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

const CONFIG: &str = r#"
[keys.jwt]
secret_env = "BEACON_JWT_SECRET"
"#;

#[test]
fn chromium_follows_a_room_through_dropped_connections() {
    let Some(node) = require_node_modules() else {
        return;
    };
    let Some(chromium) = require_program("chromium", &["/usr/bin/chromium"]) else {
        return;
    };
    let beacon = BeaconProcess::start(&root().join("tests/fixtures/history.toml"), CONFIG, &[]);
    let out = Command::new(node)
        .arg(root().join("tests/browser/resume.test.mjs"))
        .env("BEACON_ADDR", beacon.addr.to_string())
        .env("TOKEN", token(json!(1), json!({})))
        .env("API_KEY", API_KEY)
        .env("CHROMIUM", chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser test failed");
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
}

/// A cluster node on a fixed port (nginx's upstream), so it can be killed and started again
/// where nginx expects it. Killed on drop.
struct FixedNode {
    child: std::process::Child,
    _dir: TempDir,
}

impl FixedNode {
    fn start(redis: &Broker, port: u16) -> FixedNode {
        use std::io::BufRead;
        let dir = TempDir::new("fixed-node");
        let cfg = dir.path().join("beacon.toml");
        std::fs::write(&cfg, cluster_config(redis, "fixed")).unwrap();
        let mut child = Command::new(beacon_bin())
            .arg("serve")
            .arg("--protocol")
            .arg(root().join("tests/fixtures/history.toml"))
            .arg("--config")
            .arg(&cfg)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--shards", "2"])
            .env("BEACON_JWT_SECRET", SECRET)
            .env("BEACON_API_KEY", API_KEY)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("beacon listening on"), "{line:?}");
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        eventually(20, "the node ready", || {
            (http(addr, "GET", "/readyz", &[], b"").0 == 200).then_some(())
        });
        FixedNode { child, _dir: dir }
    }
}

impl Drop for FixedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster_config(redis: &Broker, node: &str) -> String {
    format!(
        "[keys.jwt]\nsecret_env = \"BEACON_JWT_SECRET\"\n\n[cluster]\nbroker = \"redis\"\nurl = \"{}\"\nnode_id = \"{node}\"\n",
        redis.url()
    )
}

/// nginx in front of the fixed node (deploy/nginx/beacon.conf, addresses changed); stopped
/// with SIGTERM, which drops every connection through it.
struct Nginx(std::process::Child);

impl Nginx {
    fn start(bin: &std::path::Path, dir: &TempDir, conf: &std::path::Path, front: u16) -> Nginx {
        let d = dir.path().display().to_string();
        let child = Command::new(bin)
            .args(["-p", &d, "-e", &format!("{d}/error.log"), "-c"])
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        eventually(20, "nginx listening", || {
            std::net::TcpStream::connect(("127.0.0.1", front)).ok()
        });
        Nginx(child)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        signal(self.0.id(), "TERM");
        let _ = self.0.wait();
    }
}

/// The issue's case: a page follows a booking through nginx while the Beacon node behind it is
/// killed and started again (history in Redis, so the epoch survives) and while nginx is
/// stopped and started; statuses are published through a second node meanwhile.
#[test]
fn chromium_follows_a_booking_through_a_beacon_restart_and_nginx_drops() {
    use std::io::{BufRead, Write};
    let Some(node) = require_node_modules() else {
        return;
    };
    let Some(chromium) = require_program("chromium", &["/usr/bin/chromium"]) else {
        return;
    };
    let Some(nginx) = require_program("nginx", &["/usr/sbin/nginx", "/usr/bin/nginx"]) else {
        return;
    };
    let Some(redis) = Broker::start(Kind::Redis, free_port()) else {
        return;
    };
    let port = free_port();
    let mut fixed = Some(FixedNode::start(&redis, port));
    let publisher = BeaconProcess::start(
        &root().join("tests/fixtures/history.toml"),
        &cluster_config(&redis, "publisher"),
        &[],
    );
    let dir = TempDir::new("nginx-restart");
    let front = free_port();
    let conf = nginx_config(
        &dir,
        "deploy/nginx/beacon.conf",
        &[
            ("server 127.0.0.1:8080", format!("server 127.0.0.1:{port}")),
            ("listen 80;", format!("listen 127.0.0.1:{front};")),
        ],
    );
    let mut proxy = Some(Nginx::start(&nginx, &dir, &conf, front));
    let mut js = Command::new(node)
        .arg(root().join("tests/browser/resume_restart.test.mjs"))
        .env("FRONT", format!("127.0.0.1:{front}"))
        .env("PUBLISH_ADDR", publisher.addr.to_string())
        .env("TOKEN", token(json!(1), json!({})))
        .env("API_KEY", API_KEY)
        .env("CHROMIUM", chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = js.stdin.take().unwrap();
    let mut stdout = String::new();
    for line in std::io::BufReader::new(js.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        println!("{line}");
        stdout.push_str(&line);
        stdout.push('\n');
        let Some(action) = line.strip_prefix("ACTION ") else {
            continue;
        };
        match action {
            "stop-beacon" => drop(fixed.take()),
            "start-beacon" => fixed = Some(FixedNode::start(&redis, port)),
            "stop-nginx" => drop(proxy.take()),
            "start-nginx" => proxy = Some(Nginx::start(&nginx, &dir, &conf, front)),
            other => panic!("unknown action {other}"),
        }
        writeln!(stdin, "done").unwrap();
    }
    let status = js.wait().unwrap();
    assert!(status.success(), "browser test failed:\n{stdout}");
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
}
