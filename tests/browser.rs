//! Headless Chromium (Debian's package, driven by playwright-core) against the real `beacon`
//! binary: tests/browser/client.test.mjs loads a local page, connects with the token in the
//! query and in the subprotocol, sees declared close codes in `onclose`, and exercises the JS
//! client (clients/js/beacon.js): reconnect with a fresh token after expiry, in-band refresh
//! before expiry (and the close without it), never after 4003, backoff with re-sent queued
//! messages.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

const CONFIG: &str = r#"
[keys.jwt]
secret_env = "BEACON_JWT_SECRET"
"#;

#[test]
fn chromium_runs_the_js_client_against_beacon() {
    let Some(node) = require_node_modules() else {
        return;
    };
    let Some(chromium) = require_program("chromium", &["/usr/bin/chromium"]) else {
        return;
    };
    let beacon = BeaconProcess::start(&root().join("tests/fixtures/core.toml"), CONFIG, &[]);
    let expired = token_with(
        SECRET,
        jsonwebtoken::Algorithm::HS256,
        json!(3),
        json!({"role": "member"}),
        now() - 120,
    );
    let out = Command::new(node)
        .arg(root().join("tests/browser/client.test.mjs"))
        .env("BEACON_ADDR", beacon.addr.to_string())
        .env("TOKEN_MEMBER", token(json!(1), json!({"role": "member"})))
        .env("TOKEN_GUEST", token(json!(2), json!({})))
        .env("TOKEN_EXPIRED", expired)
        .env("JWT_SECRET", SECRET)
        .env("CHROMIUM", chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser test failed");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
