//! `beacon asyncapi` prints a document that the official AsyncAPI 3.0 JSON Schema (from the
//! `@asyncapi/specs` npm package) accepts, for every protocol in the repository; a broken
//! document is refused, so the validator can fail.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn asyncapi(protocol: &Path) -> serde_json::Value {
    let out = Command::new(beacon_bin())
        .arg("asyncapi")
        .arg("--protocol")
        .arg(protocol)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn validate(node: &Path, doc: &serde_json::Value) -> (bool, String) {
    let mut child = Command::new(node)
        .arg(root().join("tests/browser/validate-asyncapi.mjs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn asyncapi_output_validates_against_the_official_schema() {
    let Some(node) = require_node_modules() else {
        return;
    };
    let mut protocols = vec![
        root().join("protocol.toml"),
        root().join("tests/fixtures/core.toml"),
    ];
    if let Ok(dir) = std::fs::read_dir(root().join("config/protocols")) {
        protocols.extend(dir.flatten().map(|e| e.path()));
    }
    for p in &protocols {
        let doc = asyncapi(p);
        let (ok, msg) = validate(&node, &doc);
        assert!(ok, "{}: {msg}", p.display());
    }
    // The validator really checks: a wrong operation action is refused.
    let mut doc = asyncapi(&protocols[0]);
    let ops = doc["operations"].as_object_mut().unwrap();
    let first = ops.values_mut().next().unwrap();
    first["action"] = "publish".into();
    let (ok, msg) = validate(&node, &doc);
    assert!(!ok, "a 2.x action was accepted: {msg}");
}

#[test]
fn asyncapi_reports_an_invalid_protocol_like_check() {
    let dir = TempDir::new("asyncapi");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = 1\nname = 3\n").unwrap();
    let out = Command::new(beacon_bin())
        .arg("asyncapi")
        .arg("--protocol")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
}
