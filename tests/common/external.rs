//! Real programs for the production tests: the `beacon` binary as a child process, and the
//! third-party programs (nginx, prometheus, chromium, node) Beacon is deployed with.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of an external program a test needs. When it is missing the test is skipped with
/// a printed reason, unless `CI` is set: there scripts/test.sh installs it, so missing is a
/// failure.
pub fn require_program(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    let found = candidates.iter().map(PathBuf::from).find(|p| p.is_file());
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(
            !ci,
            "{name} is required under CI (scripts/test.sh installs it); looked in {candidates:?}"
        );
        eprintln!(
            "SKIPPED: {name} is not installed (looked in {candidates:?}); run scripts/test.sh"
        );
    }
    found
}

/// tests/browser/node_modules, installed by scripts/test.sh; `None` (skip) as for programs.
pub fn require_node_modules() -> Option<PathBuf> {
    let node = require_program("node", &["/usr/bin/node", "/usr/local/bin/node"])?;
    let dir = super::root().join("tests/browser/node_modules");
    if !dir.join("playwright-core").is_dir() || !dir.join("@asyncapi/specs").is_dir() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(
            !ci,
            "tests/browser/node_modules missing under CI: scripts/test.sh runs npm ci"
        );
        eprintln!("SKIPPED: tests/browser/node_modules missing; run scripts/test.sh");
        return None;
    }
    Some(node)
}

/// A free TCP port on 127.0.0.1 for a program that cannot be told to use port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "beacon-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends a signal by name (`TERM`, `HUP`) to a process.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// The real `beacon serve` as a child process on 127.0.0.1:0, with its stderr (the logs) in a
/// file. Dropping it kills the process.
pub struct BeaconProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: TempDir,
}

impl BeaconProcess {
    /// `config` is the text of a config file; `args` are extra `serve` arguments.
    pub fn start(protocol: &Path, config: &str, args: &[&str]) -> BeaconProcess {
        BeaconProcess::start_with_env(protocol, config, args, &[])
    }

    /// As [`BeaconProcess::start`], with more environment variables for the process.
    pub fn start_with_env(
        protocol: &Path,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> BeaconProcess {
        let dir = TempDir::new("proc");
        let cfg = dir.path().join("beacon.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("stderr.log");
        let mut child = Command::new(super::beacon_bin())
            .arg("serve")
            .arg("--protocol")
            .arg(protocol)
            .arg("--config")
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0", "--shards", "2"])
            .args(args)
            .env("BEACON_JWT_SECRET", super::SECRET)
            .env("BEACON_API_KEY", super::API_KEY)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("beacon starts");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("beacon listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "unexpected first line {line:?}; stderr: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .parse()
            .unwrap();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        BeaconProcess {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the logs contain `needle`; returns the logs.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let l = self.logs();
            if l.contains(needle) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "log never showed {needle:?}:\n{l}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "beacon did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BeaconProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds (a bound, not a measurement).
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP connection from a chosen loopback source address (127.0.0.2, ...): Linux routes all
/// of 127.0.0.0/8 to the loopback device, so tests can be several "clients".
pub fn tcp_from(src: std::net::IpAddr, to: SocketAddr) -> std::net::TcpStream {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A WebSocket handshake from `src`; the refused upgrade's HTTP status on failure.
pub fn ws_from(
    src: std::net::IpAddr,
    to: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<super::Ws, u16> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{to}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tungstenite::client(req, tcp_from(src, to)) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Redis,
    Nats,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Nats => "nats",
        }
    }
}

/// A `redis-server` or `nats-server` on a chosen port, no persistence; killed on drop.
pub struct Broker {
    child: Child,
    pub kind: Kind,
    pub port: u16,
}

impl Broker {
    pub fn start(kind: Kind, port: u16) -> Option<Broker> {
        Self::start_with(kind, port, &[])
    }

    /// [`Broker::start`] with more server arguments (e.g. NATS `--user`/`--pass`).
    pub fn start_with(kind: Kind, port: u16, extra: &[&str]) -> Option<Broker> {
        let child = match kind {
            Kind::Redis => {
                let bin = require_program("redis-server", &["/usr/bin/redis-server"])?;
                Command::new(bin)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                    .args(extra)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server starts")
            }
            Kind::Nats => {
                let bin = require_program(
                    "nats-server",
                    &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
                )?;
                Command::new(bin)
                    .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                    .args(extra)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("nats-server starts")
            }
        };
        let r = Broker { child, kind, port };
        eventually(20, "the broker to answer", || r.answers().then_some(()));
        Some(r)
    }

    pub fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 4096];
        match self.kind {
            Kind::Redis => {
                s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
            }
            Kind::Nats => s
                .read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"INFO ")),
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.kind.name(), self.port)
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// `redis-cli` against this Redis; its standard output.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// An nginx prefix in `dir` serving `deploy` (a file under deploy/nginx/) with `replace`d
/// lines (each must still be in the file, so the test follows the shipped config) and the
/// access log moved into `dir`. Returns the main config to start nginx with (`-p dir -c`).
pub fn nginx_config(dir: &TempDir, deploy: &str, replace: &[(&str, String)]) -> PathBuf {
    let d = dir.path().display().to_string();
    let mut conf = std::fs::read_to_string(super::root().join(deploy)).unwrap();
    let log = (
        "/var/log/nginx/beacon.access.log",
        format!("{d}/access.log"),
    );
    for (from, to) in replace.iter().chain(std::iter::once(&log)) {
        assert!(conf.contains(from), "{deploy} no longer has `{from}`");
        conf = conf.replace(from, to);
    }
    std::fs::write(dir.path().join("beacon.conf"), conf).unwrap();
    let main = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\nevents {{ worker_connections 512; }}\n\
         http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         include {d}/beacon.conf;\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    path
}

/// A port `p` that is free along with a second free port for its cluster bus; Redis's default
/// bus port (`p + 10000`) may be taken or out of range, so the bus port is set explicitly.
fn free_port_pair() -> (u16, u16) {
    loop {
        let (a, b) = (free_port(), free_port());
        if a != b {
            return (a, b);
        }
    }
}

/// One master of a [`RedisCluster`]: its port, its cluster-bus port and its directory (which
/// holds `nodes.conf`, so a restarted master rejoins as itself with its slots).
struct ClusterMaster {
    child: Option<Child>,
    port: u16,
    bus: u16,
    dir: TempDir,
}

impl ClusterMaster {
    fn spawn(&mut self, bin: &Path) {
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &self.bus.to_string(),
            ])
            .args(["--cluster-config-file", "nodes.conf"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
    }
}

/// A real Redis Cluster: three masters (and, from [`RedisCluster::start_with_replicas`], their
/// replicas), each `redis-server` on free ports with its own directory,
/// `cluster-require-full-coverage no` (so the others serve their slots while one master is
/// down) and a 1 s node timeout; created with `redis-cli --cluster create`. Nodes are numbered
/// in the order given to it (masters first); every one is killed on drop.
pub struct RedisCluster {
    masters: Vec<ClusterMaster>,
    bin: PathBuf,
}

impl RedisCluster {
    /// Starts three masters, assigns the slots and waits until every node says
    /// `cluster_state:ok` and sees the same slot map. `None` (skip) when Redis is not installed.
    pub fn start() -> Option<RedisCluster> {
        Self::start_with_replicas(0)
    }

    /// [`RedisCluster::start`] with `replicas` replicas per master: nodes 0..3 are the masters
    /// `redis-cli --cluster create` makes of the first three, the rest their replicas.
    pub fn start_with_replicas(replicas: usize) -> Option<RedisCluster> {
        let bin = require_program("redis-server", &["/usr/bin/redis-server"])?;
        require_program("redis-cli", &["/usr/bin/redis-cli"])?;
        // Every port distinct within the cluster; a node whose port was taken meanwhile (by
        // another test) exits at once and is started again on other ports.
        let mut taken = std::collections::HashSet::new();
        let mut pick = move || loop {
            let (port, bus) = free_port_pair();
            if taken.insert(port) && taken.insert(bus) {
                return (port, bus);
            }
        };
        let mut masters: Vec<ClusterMaster> = (0..3 * (1 + replicas))
            .map(|_| {
                let (port, bus) = pick();
                ClusterMaster {
                    child: None,
                    port,
                    bus,
                    dir: TempDir::new("redis-cluster"),
                }
            })
            .collect();
        for m in &mut masters {
            m.spawn(&bin);
        }
        let mut c = RedisCluster { masters, bin };
        for i in 0..c.masters.len() {
            eventually(20, "a cluster master to answer", || {
                let exited = c.masters[i]
                    .child
                    .as_mut()
                    .is_some_and(|ch| ch.try_wait().ok().flatten().is_some());
                if exited {
                    (c.masters[i].port, c.masters[i].bus) = pick();
                    let bin = c.bin.clone();
                    c.masters[i].spawn(&bin);
                    return None;
                }
                (c.cli(i, &["PING"]).trim() == "PONG").then_some(())
            });
        }
        let nodes: Vec<String> = c
            .masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c.wait_ok();
        // A replica that never synced is too stale to be elected: wait for every link.
        for i in 3..c.masters.len() {
            eventually(60, "a replica in sync with its master", || {
                c.cli(i, &["INFO", "replication"])
                    .lines()
                    .any(|l| l.trim() == "master_link_status:up")
                    .then_some(())
            });
        }
        Some(c)
    }

    /// Waits (bounded, generously) until every running node says `cluster_state:ok` and sees
    /// every running node connected and not failed (`CLUSTER NODES`), so a restarted master is
    /// serving its slots again (or a replica took them over) as far as the others know.
    pub fn wait_ok(&self) {
        let running: Vec<usize> = (0..self.masters.len())
            .filter(|&i| self.masters[i].child.is_some())
            .collect();
        eventually(60, "cluster_state:ok on every running master", || {
            running
                .iter()
                .all(|&i| {
                    let nodes = self.cli(i, &["CLUSTER", "NODES"]);
                    self.cli(i, &["CLUSTER", "INFO"])
                        .lines()
                        .any(|l| l.trim() == "cluster_state:ok")
                        && running.iter().all(|&j| {
                            let at = format!("127.0.0.1:{}@", self.masters[j].port);
                            nodes.lines().any(|l| {
                                let f: Vec<&str> = l.split(' ').collect();
                                f.len() >= 8
                                    && f[1].starts_with(&at)
                                    && (f[2].contains("master") || f[2].contains("slave"))
                                    && !f[2].contains("fail")
                                    && f[7] == "connected"
                            })
                        })
                })
                .then_some(())
        });
    }

    pub fn port(&self, i: usize) -> u16 {
        self.masters[i].port
    }

    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.masters[i].port)
    }

    /// `redis-cli` against master `i` (not following redirects); its standard output.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.masters[i].port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The slot of a key or channel (its hash tag's, if it has one), by `CLUSTER KEYSLOT`.
    pub fn keyslot(&self, key: &str) -> u16 {
        let i = self.any_running();
        let out = self.cli(i, &["CLUSTER", "KEYSLOT", key]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {out:?}"))
    }

    /// The master owning `slot`, as a running master sees the slot map (`CLUSTER SLOTS`).
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        self.slots_seen_by(self.any_running())
            .into_iter()
            .find(|&(lo, hi, _)| (lo..=hi).contains(&slot))
            .map(|(_, _, owner)| owner)
            .unwrap_or_else(|| panic!("no master owns slot {slot}"))
    }

    /// The master owning `key`'s slot.
    pub fn owner_of_key(&self, key: &str) -> usize {
        self.owner_of_slot(self.keyslot(key))
    }

    /// Slot ranges (first, last, master) as master `i` reports them; masters it does not know
    /// (or the output's other lines) are left out. `redis-cli` prints a `CLUSTER SLOTS` reply
    /// flat: per range its first slot, last slot, then per node ip, port, id (and, since 7.0,
    /// an empty metadata map that prints nothing).
    fn slots_seen_by(&self, i: usize) -> Vec<(u16, u16, usize)> {
        let out = self.cli(i, &["CLUSTER", "SLOTS"]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let mut ranges = Vec::new();
        let mut k = 0;
        while k + 4 < lines.len() {
            let (lo, hi, ip, port) = (lines[k], lines[k + 1], lines[k + 2], lines[k + 3]);
            match (lo.parse(), hi.parse(), port.parse::<u16>()) {
                (Ok(lo), Ok(hi), Ok(port)) if ip == "127.0.0.1" => {
                    if let Some(owner) = self.masters.iter().position(|m| m.port == port) {
                        ranges.push((lo, hi, owner));
                    }
                    k += 5;
                }
                _ => k += 1,
            }
        }
        ranges
    }

    fn any_running(&self) -> usize {
        (0..self.masters.len())
            .find(|&i| self.masters[i].child.is_some())
            .expect("a running master")
    }

    /// Moves `slot` (and its keys) to master `to` the way `redis-cli --cluster reshard` does:
    /// IMPORTING/MIGRATING, MIGRATE of every key, then SETSLOT NODE on every master.
    pub fn migrate_slot(&self, slot: u16, to: usize) {
        let from = self.owner_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is already on master {to}");
        let id = |i: usize| self.cli(i, &["CLUSTER", "MYID"]).trim().to_owned();
        let (from_id, to_id, s) = (id(from), id(to), slot.to_string());
        let ok = |out: String| assert_eq!(out.trim(), "OK", "{out}");
        ok(self.cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]));
        ok(self.cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]));
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
            let keys: Vec<&str> = keys
                .lines()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() {
                break;
            }
            let port = self.masters[to].port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(self.cli(from, &args));
        }
        for i in [to, from] {
            ok(self.cli(i, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]));
        }
        eventually(30, "every master seeing the slot's new owner", || {
            (0..self.masters.len())
                .filter(|&i| self.masters[i].child.is_some())
                .all(|i| {
                    self.slots_seen_by(i)
                        .iter()
                        .any(|&(lo, hi, owner)| (lo..=hi).contains(&slot) && owner == to)
                })
                .then_some(())
        });
    }

    /// SIGKILLs master `i` (its `nodes.conf` stays for [`RedisCluster::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.masters[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts master `i` again on its ports with its directory, so it rejoins with its slots;
    /// waits until the whole cluster is `ok` with it serving them.
    pub fn restart(&mut self, i: usize) {
        assert!(self.masters[i].child.is_none(), "master {i} is running");
        let bin = self.bin.clone();
        self.masters[i].spawn(&bin);
        self.wait_ok();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.masters.len() {
            self.kill(i);
        }
    }
}
