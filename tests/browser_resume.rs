//! Headless Chromium (tests/browser/resume.test.mjs) follows rooms with history through the JS
//! client while a proxy between the page and the real `beacon` binary drops every connection:
//! each message published meanwhile is shown exactly once, in order, and a client too far
//! behind is told to reload.

mod common;

use std::process::Command;

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
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
}
