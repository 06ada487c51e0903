//! The example Django backend (examples/django) as a real server: migrated SQLite database in
//! a scratch directory, demo users, uvicorn on a free port. scripts/test.sh installs its venv.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, http, TempDir, API_KEY, SECRET};

/// examples/django/.venv's Python, or `None` (skip) when it is not installed outside CI.
pub fn require_django() -> Option<PathBuf> {
    let dir = super::root().join("examples/django");
    let python = dir.join(".venv/bin/python");
    super::require_program(
        "examples/django/.venv (Django, uvicorn)",
        &[python.to_str()?],
    )
}

/// A running example backend. Killed on drop, with its database.
pub struct Django {
    pub addr: SocketAddr,
    /// What `manage.py beacon_demo` printed: users by name, the booking, the conversation.
    pub demo: Value,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Django {
    /// Starts the backend publishing to the Beacon that will listen on `beacon_port`.
    pub fn start(python: &PathBuf, beacon_port: u16) -> Django {
        Django::start_with_env(python, beacon_port, &[])
    }

    /// As [`Django::start`], with more settings from the environment (e.g.
    /// `BEACON_PUBLISH=channel_layer` and its `CHANNEL_LAYER_URL`).
    pub fn start_with_env(python: &PathBuf, beacon_port: u16, more: &[(&str, String)]) -> Django {
        let dir = TempDir::new("django");
        let project = super::root().join("examples/django");
        let mut envs = vec![
            (
                "DATABASE_URL",
                format!("sqlite:///{}", dir.path().join("db.sqlite3").display()),
            ),
            ("BEACON_JWT_SECRET", SECRET.to_owned()),
            ("BEACON_API_KEY", API_KEY.to_owned()),
            ("BEACON_URL", format!("http://127.0.0.1:{beacon_port}")),
            ("BEACON_EXAMPLE_FAST_HASHES", "1".to_owned()),
            ("DJANGO_DEBUG", "0".to_owned()),
            ("PYTHONDONTWRITEBYTECODE", "1".to_owned()),
        ];
        envs.extend(more.iter().cloned());
        let manage = |args: &[&str]| {
            let out = Command::new(python)
                .current_dir(&project)
                .arg("manage.py")
                .args(args)
                .envs(envs.iter().map(|(k, v)| (k, v)))
                .output()
                .expect("python runs");
            assert!(
                out.status.success(),
                "manage.py {args:?} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        manage(&["migrate", "--noinput", "-v", "0"]);
        let demo: Value = serde_json::from_str(manage(&["beacon_demo"]).trim()).unwrap();
        let log = dir.path().join("uvicorn.log");
        for _ in 0..5 {
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut child = Command::new(python)
                .current_dir(&project)
                .args(["-m", "uvicorn", "beacon_example.asgi:application"])
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--log-level", "warning", "--no-access-log"])
                .envs(envs.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("uvicorn starts");
            // Generous: Python imports Django on a busy 2-core box.
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                if std::net::TcpStream::connect(addr).is_ok()
                    && http(addr, "GET", "/", &[], b"").0 == 200
                {
                    return Django {
                        addr,
                        demo,
                        child,
                        log,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "the Django backend did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The demo user's id.
    pub fn user(&self, name: &str) -> u64 {
        self.demo["users"][name].as_u64().unwrap()
    }

    /// A stock simplejwt access token from the backend's own token endpoint.
    pub fn token(&self, username: &str) -> String {
        let (status, body) = self.post(
            "/api/token/",
            None,
            json!({"username": username, "password": self.demo["password"]}),
        );
        assert_eq!(status, 200, "token for {username}: {body}");
        body["access"].as_str().unwrap().to_owned()
    }

    pub fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let (status, text) = http(self.addr, "GET", path, &[("Authorization", &auth)], b"");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let (status, text) = http(
            self.addr,
            "POST",
            path,
            &headers,
            body.to_string().as_bytes(),
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// What the server logged (warnings and errors), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Django {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
