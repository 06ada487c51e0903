//! Headless Chromium (Debian's `chromium` package) driven over the DevTools protocol with the
//! same WebSocket client the other tests use. Killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

pub const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    child: Child,
    profile: std::path::PathBuf,
    pub devtools: SocketAddr,
}

impl Browser {
    /// Starts Chromium headless on `url`.
    pub fn open(url: &str) -> Browser {
        let profile = std::env::temp_dir().join(format!("beacon-chromium-{}", std::process::id()));
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts (apt-get install chromium; scripts/test.sh does)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap_or("").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium announces its DevTools endpoint");
        Browser {
            child,
            profile,
            devtools: addr.parse().unwrap(),
        }
    }

    /// A DevTools session on the first page.
    pub fn page(&self) -> Page {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = super::common::http(self.devtools, "GET", "/json/list", &[], b"");
            let list: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let ws_url = list.as_array().and_then(|a| {
                a.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            if let Some(u) = ws_url {
                let host = u
                    .trim_start_matches("ws://")
                    .split('/')
                    .next()
                    .unwrap()
                    .to_owned();
                let stream = TcpStream::connect(host).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let (ws, _) = tungstenite::client(u.as_str(), stream).expect("DevTools session");
                return Page { ws, next_id: 1 };
            }
            assert!(Instant::now() < deadline, "no page target in {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

pub struct Page {
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Page {
    /// Evaluates a JavaScript expression in the page; returns its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"id": id, "method": "Runtime.evaluate",
                         "params": {"expression": expr, "returnByValue": true}});
        self.ws.send(Message::text(req.to_string())).unwrap();
        loop {
            let Message::Text(t) = self.ws.read().expect("DevTools answer") else {
                continue;
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                return v["result"]["result"]["value"].clone();
            }
        }
    }

    /// Polls `expr` until it is truthy (a bound on waiting, not a measured speed).
    pub fn wait_for(&mut self, expr: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.eval(expr);
            if !v.is_null() && v != json!(false) && v != json!("") {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for `{expr}`");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
