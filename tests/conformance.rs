//! RFC 6455 conformance: Autobahn cases 1-10 (run by kosoku) against the real binary's echo
//! endpoint, diffed with tests/autobahn/expected.json.

mod common;

#[test]
fn autobahn_sections_1_to_10_match_expected() {
    let venv = common::root().join(".venv");
    if !common::have_tool(venv.join("bin/kosoku").to_str().unwrap()) {
        return;
    }
    let server = common::BinServer::start(
        "tests/fixtures/autobahn.toml",
        "tests/fixtures/config_test.toml",
    );
    let out = common::root().join("target/autobahn-engine");
    let st = std::process::Command::new(common::root().join("tests/autobahn/run.sh"))
        .arg(server.url("/"))
        .arg(&out)
        .env("KOSOKU_VENV", &venv)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "Autobahn verdicts differ from tests/autobahn/expected.json (see {})",
        out.display()
    );
}
