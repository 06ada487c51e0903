//! `beacon check`: exit codes and the rendered diagnostics for one-defect fixtures
//! (snapshots under tests/snapshots/).

mod common;

use std::process::Command;

fn check(protocol: &str, config: &str) -> (i32, String, String) {
    let out = Command::new(common::beacon_bin())
        .current_dir(common::root())
        .args(["check", "--protocol", protocol, "--config", config])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn valid_protocols_pass() {
    let mut files = vec![
        "protocol.toml".to_owned(),
        "tests/fixtures/valid_min.toml".to_owned(),
        "tests/fixtures/core.toml".to_owned(),
    ];
    if let Ok(dir) = std::fs::read_dir(common::root().join("config/protocols")) {
        for e in dir.flatten() {
            files.push(format!(
                "config/protocols/{}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    for f in files {
        let (code, out, err) = check(&f, "config/beacon.toml");
        assert_eq!(code, 0, "{f}: {err}");
        assert!(out.starts_with("OK: "), "{f}: {out}");
    }
}

#[test]
fn each_defect_is_reported_with_location_code_and_hint() {
    let dir = common::root().join("tests/fixtures/invalid");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 20);
    for name in names {
        let path = format!("tests/fixtures/invalid/{name}");
        let (code, out, err) = check(&path, "tests/fixtures/config_test.toml");
        assert_eq!(code, 1, "{name} must fail: {out}");
        let stem = name.trim_end_matches(".toml");
        // Every problem names the file, a line:column, and a stable code.
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with(&format!("{path}:")), "{name}: {first}");
        if let Some(code) = stem.split('_').next().filter(|c| c.starts_with('b')) {
            assert!(
                first.contains(&format!("error[{}]", code.to_uppercase())),
                "{name}: {first}"
            );
        }
        assert!(err.contains("help:"), "{name} has no hint:\n{err}");
        insta::assert_snapshot!(stem.to_owned(), err);
    }
}

#[test]
fn cross_file_and_config_problems() {
    let (code, _, err) = check(
        "tests/fixtures/valid_min.toml",
        "tests/fixtures/config_bad.toml",
    );
    assert_eq!(code, 1);
    insta::assert_snapshot!("config_bad", err);
    let missing_key = common::root().join("target/config_nokey.toml");
    std::fs::write(&missing_key, "[keys.other]\nsecret_env = \"X\"\n").unwrap();
    let (code, _, err) = check(
        "tests/fixtures/valid_min.toml",
        missing_key.to_str().unwrap(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("error[B015]"), "{err}");
    let (code, _, err) = check("tests/fixtures/does_not_exist.toml", "config/beacon.toml");
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}
