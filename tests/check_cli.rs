//! `beacon check`: exit codes and the rendered diagnostics for one-defect fixtures
//! (snapshots under tests/snapshots/), and a fixture for every diagnostic code.

mod common;

use std::path::Path;
use std::process::Command;

use beacon::protocol::Code;
use beacon::startup;

/// The good halves fixtures are checked with.
const GOOD_PROTOCOL: &str = "tests/fixtures/valid_min.toml";
const GOOD_CONFIG: &str = "tests/fixtures/config_test.toml";

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

/// The default protocol.toml is HunarMitra's strict protocol with its own header: the owner and
/// worker check cannot drift away from the default that `cargo run` serves.
#[test]
fn the_default_protocol_is_the_strict_hunarmitra_one() {
    let body = |p: &str| {
        let s = std::fs::read_to_string(common::root().join(p)).unwrap();
        let at = s
            .find("# Long-lived sockets")
            .expect("the shared part's first line");
        s[at..].to_owned()
    };
    assert_eq!(
        body("protocol.toml"),
        body("config/protocols/hunarmitra.toml")
    );
    let open =
        std::fs::read_to_string(common::root().join("config/protocols/hunarmitra-open.toml"))
            .unwrap();
    assert!(open.contains("{ authenticated = true }") && !open.contains("[hooks."));
}

#[test]
fn each_defect_is_reported_with_location_code_and_hint() {
    let names = toml_files(Fixture::Protocol.dir());
    assert!(names.len() >= 20);
    for name in names {
        let path = format!("{}/{name}", Fixture::Protocol.dir());
        let (code, out, err) = check(&path, GOOD_CONFIG);
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
    let (code, _, err) = check("tests/fixtures/does_not_exist.toml", "config/beacon.toml");
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn history_with_a_nats_cluster_is_valid_but_said_to_be_per_node() {
    let (code, out, err) = check(
        "tests/fixtures/history.toml",
        "tests/fixtures/config_cluster_nats.toml",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("OK: "), "{out}");
    assert!(
        err.contains("warning[C004]")
            && err.contains("history is kept per node")
            && err.contains("epoch_changed"),
        "{err}"
    );
    // Without history, or with Redis, nothing to say.
    let (code, _, err) = check(
        "tests/fixtures/core.toml",
        "tests/fixtures/config_cluster_nats.toml",
    );
    assert_eq!((code, err.as_str()), (0, ""));
    let dir = common::TempDir::new("check-redis");
    let redis = dir.path().join("beacon.toml");
    let src =
        std::fs::read_to_string(common::root().join("tests/fixtures/config_cluster_nats.toml"))
            .unwrap()
            .replace("broker = \"nats\"", "broker = \"redis\"")
            .replace("nats://", "redis://");
    std::fs::write(&redis, src).unwrap();
    let (code, _, err) = check("tests/fixtures/history.toml", redis.to_str().unwrap());
    assert_eq!(
        (code, err.as_str()),
        (0, ""),
        "history lives in Redis: nothing to say"
    );
}

/// How the files of one fixture folder are checked.
#[derive(Clone, Copy, Debug)]
enum Fixture {
    /// A protocol file with one defect, checked with a good config.
    Protocol,
    /// A config file with one defect, checked with a good protocol.
    Config,
    /// A config whose key material cannot be used. `check` never reads secrets, so these pass
    /// it and are refused by the key step `serve` runs next (here with an empty environment).
    Keys,
    /// A config that passes with a warning, checked with a protocol that uses presence.
    Warning,
}

impl Fixture {
    const ALL: [Fixture; 4] = [
        Fixture::Protocol,
        Fixture::Config,
        Fixture::Keys,
        Fixture::Warning,
    ];

    fn dir(self) -> &'static str {
        match self {
            Fixture::Protocol => "tests/fixtures/invalid",
            Fixture::Config => "tests/fixtures/invalid_config",
            Fixture::Keys => "tests/fixtures/invalid_keys",
            Fixture::Warning => "tests/fixtures/warn_config",
        }
    }

    /// What the user sees for this fixture (stderr of `beacon check`, or the key step's report).
    fn report(self, path: &str) -> String {
        match self {
            Fixture::Protocol => failed_check(path, GOOD_CONFIG),
            Fixture::Config => failed_check(GOOD_PROTOCOL, path),
            Fixture::Warning => {
                let (code, out, err) = check("tests/fixtures/cluster.toml", path);
                assert_eq!(code, 0, "{path} must pass with a warning: {err}");
                assert!(out.starts_with("OK: "), "{path}: {out}");
                err
            }
            Fixture::Keys => {
                let checked = startup::check(Path::new(GOOD_PROTOCOL), Path::new(path))
                    .unwrap_or_else(|e| panic!("{path} must pass check:\n{e}"));
                match startup::verifiers(&checked, Path::new(GOOD_PROTOCOL), &|_| None) {
                    Ok(_) => panic!("{path}: its keys were accepted"),
                    Err(report) => report,
                }
            }
        }
    }
}

/// The stderr of a `beacon check` that must fail.
fn failed_check(protocol: &str, config: &str) -> String {
    let (code, out, err) = check(protocol, config);
    assert_eq!(code, 1, "{protocol} with {config} must fail: {out}");
    err
}

fn toml_files(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(common::root().join(dir))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    names
}

/// The code a fixture's name promises, e.g. `B010` for `b010_unknown_message.toml`.
fn promised_code(name: &str) -> Option<String> {
    let prefix = name.split('_').next()?;
    let is_code = prefix.len() == 4
        && (prefix.starts_with('b') || prefix.starts_with('c'))
        && prefix[1..].bytes().all(|b| b.is_ascii_digit());
    is_code.then(|| prefix.to_uppercase())
}

#[test]
fn every_code_has_a_fixture_that_produces_it() {
    let fixtures: Vec<(Fixture, String)> = Fixture::ALL
        .into_iter()
        .flat_map(|f| toml_files(f.dir()).into_iter().map(move |n| (f, n)))
        .collect();
    for (_, name) in &fixtures {
        if let Some(promised) = promised_code(name) {
            assert!(
                Code::ALL.iter().any(|c| c.as_str() == promised),
                "{name} is named for {promised}, which is no code"
            );
        }
    }
    // Code::ALL is generated with the enum, so a new code is walked here without a list to
    // update: it fails until a fixture produces it.
    for &code in Code::ALL {
        let mine: Vec<&(Fixture, String)> = fixtures
            .iter()
            .filter(|(_, n)| promised_code(n).as_deref() == Some(code.as_str()))
            .collect();
        assert!(
            !mine.is_empty(),
            "no fixture produces {code} ({}): add one named {}_<what>.toml under {}",
            code.title(),
            code.as_str().to_lowercase(),
            Fixture::ALL.map(|f| f.dir()).join(", "),
        );
        for (fixture, name) in mine {
            let path = format!("{}/{name}", fixture.dir());
            let report = fixture.report(&path);
            let kind = if code.is_warning() {
                "warning"
            } else {
                "error"
            };
            assert!(
                report.contains(&format!("{kind}[{code}]")),
                "{path} does not produce {code}:\n{report}"
            );
            assert!(
                report.contains(code.title()),
                "{path}: no legend:\n{report}"
            );
        }
    }
}

#[test]
fn config_and_key_defects_are_reported_with_location_and_hint() {
    for fixture in [Fixture::Config, Fixture::Keys] {
        for name in toml_files(fixture.dir()) {
            let path = format!("{}/{name}", fixture.dir());
            let report = fixture.report(&path);
            assert!(report.contains("help:"), "{path} has no hint:\n{report}");
            insta::assert_snapshot!(name.trim_end_matches(".toml").to_owned(), report);
        }
    }
}
