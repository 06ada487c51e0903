//! Debian's nginx in front of the real `beacon` binary, running deploy/nginx/beacon.conf
//! (only its listen, upstream and log addresses changed): upgrades, traffic both ways, close
//! codes in both directions, the client's real address reaching Beacon's per-IP cap and logs,
//! a query-free access log, and `nginx -s reload` with sockets open.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::json;

struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Nginx {
    fn start(bin: PathBuf, upstream: SocketAddr) -> Nginx {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.path().display().to_string();
        let nginx_conf = nginx_config(
            &dir,
            "deploy/nginx/beacon.conf",
            &[
                ("server 127.0.0.1:8080", format!("server {upstream}")),
                ("listen 80;", format!("listen 127.0.0.1:{port};")),
            ],
        );
        let test = Command::new(&bin)
            .args(["-t", "-q", "-p", &d, "-e", &format!("{d}/error.log"), "-c"])
            .arg(&nginx_conf)
            .output()
            .unwrap();
        assert!(
            test.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let child = Command::new(&bin)
            .args(["-p", &d, "-e", &format!("{d}/error.log"), "-c"])
            .arg(&nginx_conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        eventually(20, "nginx listening", || {
            std::net::TcpStream::connect(addr).ok()
        });
        Nginx { child, addr, dir }
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master then stops its workers, which would otherwise outlive
    /// it (a worker still holding a proxied socket after a reload keeps running).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ping_pong(ws: &mut Ws) {
    send(ws, json!({"type": "ping"}));
    assert_eq!(recv(ws)["type"], "pong");
}

const CONFIG: &str = r#"
drain_ms = 500
max_connections_per_ip = 2
trusted_proxies = ["127.0.0.1/32"]
[keys.jwt]
secret_env = "BEACON_JWT_SECRET"
"#;

#[test]
fn nginx_proxies_websockets_end_to_end() {
    let Some(bin) = require_program("nginx", &["/usr/sbin/nginx", "/usr/bin/nginx"]) else {
        return;
    };
    let beacon = BeaconProcess::start(
        &root().join("protocol.toml"),
        CONFIG,
        &["--log-json", "--log-level", "debug"],
    );
    let nginx = Nginx::start(bin, beacon.addr);
    // Staff by claim: the default protocol admits them without its backend.
    let tok = token(json!(7), json!({"is_staff": true}));

    // Upgrade and traffic both ways, from 127.0.0.2 with a forged X-Forwarded-For.
    let client = ip("127.0.0.2");
    let mut a = ws_from(
        client,
        nginx.addr,
        &format!("/ws/bookings/bk-1/?token={tok}"),
        &[("X-Forwarded-For", "203.0.113.9")],
    )
    .expect("upgrade through nginx");
    assert_eq!(recv(&mut a)["type"], "connection_established");
    ping_pong(&mut a);
    let (status, body) = publish(
        nginx.addr,
        json!({"room": "booking:bk-1", "message": {"type": "booking_status", "booking_id": "bk-1", "status": "arrived"}}),
    );
    assert_eq!((status, body["delivered"].clone()), (200, json!(1)));
    assert_eq!(recv(&mut a)["status"], "arrived");

    // Beacon saw the client's own address, not nginx's and not the forged one.
    let logs = beacon.wait_log("\"admitted\"");
    assert!(logs.contains("\"client\":\"127.0.0.2\""), "{logs}");
    assert!(
        !logs.contains("203.0.113.9"),
        "forged address believed:\n{logs}"
    );

    // The subprotocol token source survives the proxy; the marker alone is echoed.
    let proto = format!("jwt, {tok}");
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws/bookings/bk-2/",
        nginx.addr
    ))
    .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", proto.parse().unwrap());
    let (mut sub, resp) = tungstenite::client(req, tcp_from(ip("127.0.0.6"), nginx.addr)).unwrap();
    assert_eq!(resp.headers()["Sec-WebSocket-Protocol"], "jwt");
    assert_eq!(recv(&mut sub)["type"], "connection_established");

    // Declared close codes pass through nginx, server to client...
    let mut bad = ws_from(
        ip("127.0.0.7"),
        nginx.addr,
        "/ws/bookings/bk-1/?token=not-a-token",
        &[],
    )
    .unwrap();
    assert_eq!(expect_close(&mut bad), (4001, "Unauthenticated".to_owned()));
    // ...and client to server.
    sub.close(Some(tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))
    .unwrap();
    eventually(10, "Beacon counts the client's 1000", || {
        let m = http(beacon.addr, "GET", "/metrics", &[], b"").1;
        (metric_sum(&m, "beacon_connections_closed_total", &["code=\"1000\""]) >= 1.0).then_some(())
    });

    // The per-IP cap applies to the real client behind nginx: 127.0.0.2 holds one socket.
    let path = format!("/ws/notifications/?token={tok}");
    let _a2 = ws_from(client, nginx.addr, &path, &[]).expect("second socket under the cap");
    assert_eq!(ws_from(client, nginx.addr, &path, &[]).err(), Some(429));
    let _other = ws_from(ip("127.0.0.3"), nginx.addr, &path, &[]).expect("another client");

    // Reload with sockets open: the old worker keeps proxying them, new ones go to the new.
    signal(nginx.child.id(), "HUP");
    eventually(20, "nginx reloaded", || {
        nginx
            .file("error.log")
            .contains("reconfiguring")
            .then_some(())
    });
    ping_pong(&mut a);
    let mut b = eventually(20, "upgrade after reload", || {
        ws_from(
            ip("127.0.0.4"),
            nginx.addr,
            &format!("/ws/bookings/bk-1/?token={tok}"),
            &[],
        )
        .ok()
    });
    assert_eq!(recv(&mut b)["type"], "connection_established");
    let (status, body) = publish(
        beacon.addr,
        json!({"room": "booking:bk-1", "message": {"type": "booking_status", "booking_id": "bk-1", "status": "completed"}}),
    );
    assert_eq!((status, body["delivered"].clone()), (200, json!(2)));
    assert_eq!(recv(&mut a)["status"], "completed");
    assert_eq!(recv(&mut b)["status"], "completed");

    // Beacon's drain reaches clients through nginx (old and new workers) as 1001.
    let st = {
        signal(beacon.child.id(), "TERM");
        let c1 = expect_close(&mut a).0;
        let c2 = expect_close(&mut b).0;
        (c1, c2)
    };
    assert_eq!(st, (1001, 1001));
    // The access log has the requests but never the query string (tokens). nginx logs an
    // upgraded request when its socket ends, so the drained sockets are there by now.
    let access = eventually(20, "upgrades in the access log", || {
        let a = nginx.file("access.log");
        a.contains("GET /ws/bookings/bk-1/ HTTP/1.1\" 101")
            .then_some(a)
    });
    assert!(access.contains("\" 429 "), "{access}");
    assert!(
        !access.contains("token") && !access.contains(&tok),
        "{access}"
    );
    let logs = beacon.logs();
    assert!(!logs.contains(&tok), "token in Beacon's logs");
}
