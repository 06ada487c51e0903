//! Deployment settings (`config/beacon.toml`): where to listen, how many shards, key material,
//! the API key, limits that belong to the deployment rather than the protocol. Plain values,
//! parsed once at startup; secrets may come from the environment.
//!
//! Its diagnostics use the config codes of [`Code`]: `C001` syntax or shape, `C002` a bad value;
//! `C003` (a secret or key file) comes later, from [`crate::startup`], when keys are loaded.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::protocol::{Code, Diagnostic};
use crate::runtime::client_ip::Cidr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    shards: Option<Spanned<i64>>,
    drain_ms: Option<Spanned<i64>>,
    spread_rooms_at: Option<Spanned<i64>>,
    write_delay_ms: Option<Spanned<i64>>,
    io_memory_kib: Option<Spanned<i64>>,
    max_connections_per_ip: Option<Spanned<i64>>,
    backend_url: Option<Spanned<String>>,
    backend_max_in_flight: Option<Spanned<i64>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    api: Option<RawApi>,
    #[serde(default)]
    keys: BTreeMap<Spanned<String>, RawKey>,
    #[serde(default)]
    log: Option<RawLog>,
    #[serde(default)]
    cluster: Option<RawCluster>,
    #[serde(default)]
    channel_layer: Option<RawChannelLayer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannelLayer {
    url: Option<Spanned<String>>,
    layer: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    group_expiry_s: Option<Spanned<i64>>,
    client: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    broker: Option<Spanned<String>>,
    url: Option<Spanned<RawUrls>>,
    node_id: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    start_without_broker: Option<Spanned<bool>>,
    redis_cluster: Option<Spanned<bool>>,
    partitions: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawUrls {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    key_env: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    secret_env: Option<Spanned<String>>,
    public_key_file: Option<Spanned<String>>,
    generate: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    /// An HMAC secret read from this environment variable.
    SecretEnv(String),
    /// A PEM public key (RSA or EC) read from this file.
    PublicKeyFile(String),
    /// A random HMAC secret made at startup, for tokens Beacon itself mints (per process:
    /// several nodes minting for each other share a `secret_env` instead).
    Generated,
}

/// Which broker carries deliveries between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Redis,
    Nats,
}

impl BrokerKind {
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Redis => "redis",
            BrokerKind::Nats => "nats",
        }
    }
}

/// One broker server: `redis://[[user]:password@]host[:port][/db]` or
/// `nats://[token@|user:password@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// Redis ACL user, or NATS user (with `password`); none: Redis's `default` user, or a
    /// NATS token.
    pub username: Option<String>,
    pub password: Option<String>,
    /// As written, without the password: what logs and errors show.
    pub shown: String,
}

impl BrokerUrl {
    /// The Redis `AUTH` command this URL asks for, if any: `AUTH user password` for an ACL
    /// user, `AUTH password` for the default user.
    pub fn redis_auth(&self) -> Option<Vec<&[u8]>> {
        let pw = self.password.as_deref()?.as_bytes();
        Some(match &self.username {
            Some(u) => vec![b"AUTH", u.as_bytes(), pw],
            None => vec![b"AUTH", pw],
        })
    }

    /// Parses a broker URL for `kind`; the error says what is wrong with it.
    pub fn parse(kind: BrokerKind, url: &str) -> Result<BrokerUrl, String> {
        let scheme = format!("{}://", kind.name());
        let Some(rest) = url.strip_prefix(&scheme) else {
            return Err(format!("`{url}` does not start with {scheme}"));
        };
        let rest = rest.split('/').next().unwrap_or("");
        let (username, password, hostport) = match rest.rsplit_once('@') {
            Some((auth, hp)) => {
                let (user, pw) = auth.split_once(':').unwrap_or(("", auth));
                let some = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
                (some(user), some(pw), hp)
            }
            None => (None, None, rest),
        };
        let default_port = match kind {
            BrokerKind::Redis => 6379,
            BrokerKind::Nats => 4222,
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("`{p}` in `{url}` is not a port"))?;
                (h, port)
            }
            _ => (hostport, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            username,
            password,
            shown: format!("{scheme}{host}:{port}"),
        })
    }
}

/// `[cluster]`: several Beacon nodes sharing rooms through a broker.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub broker: BrokerKind,
    /// Where `broker` is written in the config file (for `check`'s warnings).
    pub broker_span: std::ops::Range<usize>,
    pub urls: Vec<BrokerUrl>,
    /// This node's name on the broker (the envelope's sender); generated when not set.
    pub node_id: String,
    /// First part of every channel name, so several deployments can share a broker.
    pub prefix: String,
    /// Start (not ready) when the broker cannot be reached, instead of refusing to start.
    pub start_without_broker: bool,
    /// `urls` are seed nodes of one Redis Cluster (sharded PUB/SUB), not separate instances.
    pub redis_cluster: bool,
    /// How many partitions a Redis Cluster's rooms are folded into (`crate::broker::partition`).
    pub cluster_partitions: usize,
}

/// Partitions of a Redis Cluster when `partitions` is not set: enough to spread over a
/// cluster of several masters, few enough that each shard's connections stay a handful.
pub const DEFAULT_PARTITIONS: usize = 16;
/// At most this many partitions (each is two connections per shard per node).
pub const MAX_PARTITIONS: usize = 256;

impl Cluster {
    /// How many partitions rooms and users are spread over (`crate::broker::partition`):
    /// one per Redis instance, `cluster_partitions` on Redis Cluster, one on NATS (a list of
    /// NATS URLs names servers of one NATS cluster).
    pub fn partitions(&self) -> usize {
        match (self.broker, self.redis_cluster) {
            (BrokerKind::Nats, _) => 1,
            (BrokerKind::Redis, true) => self.cluster_partitions,
            (BrokerKind::Redis, false) => self.urls.len().max(1),
        }
    }

    /// The first part of partition `p`'s key and channel names: the prefix, and on Redis
    /// Cluster the partition's hash tag, so all of them share a slot.
    pub fn keyspace(&self, p: usize) -> String {
        if self.redis_cluster {
            format!("{}.{}", self.prefix, crate::broker::partition::tag(p))
        } else {
            self.prefix.clone()
        }
    }

    /// The partition a room or user lives on.
    pub fn partition_of(&self, name: &str) -> usize {
        crate::broker::partition::index(name, self.partitions())
    }
}

/// `[channel_layer]`: the Redis a Django backend's channels_redis layer writes to, which
/// Beacon reads as one more channels process per shard (see `runtime/channel_layer.rs`).
#[derive(Debug, Clone)]
pub struct ChannelLayerConfig {
    pub url: BrokerUrl,
    /// The database index in the URL's path (`redis://host:6379/2`), as channels_redis' hosts.
    pub db: u32,
    pub flavor: crate::channel_layer::Flavor,
    /// channels_redis' `prefix` (default `asgi`).
    pub prefix: String,
    /// channels_redis' `group_expiry` (default 86400 s): memberships are renewed well inside it.
    pub group_expiry_s: u64,
    /// This node's name in channel names; two nodes must not share one.
    pub client: String,
}

/// A node id for a node that was not given one: random, so two nodes never share one.
pub fn generated_node_id() -> String {
    format!("n{:016x}", rand::random::<u64>())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Members from which a room spreads over the shards by default. See BENCHMARKS.md ("A hot
/// room on every core") for the measurements behind it.
pub const SPREAD_ROOMS_AT: usize = 512;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// 0 means one per core.
    pub shards: usize,
    pub drain_ms: u64,
    /// A room with this many members spreads over every shard: new sockets stay on the shard
    /// that accepted them and the room's owner hands them its messages (`runtime/spread.rs`).
    /// 0: never; 1: from the first member.
    pub spread_rooms_at: usize,
    /// End-of-turn fan-out writes at most once per this long per shard: fewer, fuller writes
    /// under a stream of messages, for up to this much added latency. 0: every turn.
    pub write_delay_ms: u64,
    pub io_memory: usize,
    /// Open WebSockets allowed per client address (IPv6: per /64); 0 = no cap.
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` is believed (the reverse proxies in front of Beacon).
    pub trusted_proxies: Vec<Cidr>,
    pub api_key_env: String,
    pub api_max_body_bytes: usize,
    pub keys: BTreeMap<String, (KeySource, std::ops::Range<usize>)>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// The app backend that authorization hooks ask (`BEACON_BACKEND_URL` overrides).
    pub backend_url: String,
    /// `backend_url`'s host resolved at startup.
    pub backend_addr: Option<SocketAddr>,
    /// Requests to the backend (hooks and forwards) one shard has out at once; past it a
    /// request is refused at once (a hook fails closed, a forward answers unavailable).
    pub backend_max_in_flight: usize,
    /// `[cluster]`; `None`: this node serves alone and needs no broker.
    pub cluster: Option<Cluster>,
    /// `[channel_layer]`; `None`: Django's group_send is not read.
    pub channel_layer: Option<ChannelLayerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shards: 0,
            drain_ms: 3000,
            spread_rooms_at: SPREAD_ROOMS_AT,
            write_delay_ms: 0,
            io_memory: 512 * 1024,
            max_connections_per_ip: 0,
            trusted_proxies: Vec::new(),
            api_key_env: "BEACON_API_KEY".into(),
            api_max_body_bytes: 1 << 20,
            keys: BTreeMap::from([
                (
                    "jwt".to_owned(),
                    (KeySource::SecretEnv("BEACON_JWT_SECRET".into()), 0..0),
                ),
                ("issued".to_owned(), (KeySource::Generated, 0..0)),
            ]),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            backend_url: "http://127.0.0.1:8000".into(),
            backend_addr: None,
            backend_max_in_flight: 64,
            cluster: None,
            channel_layer: None,
        }
    }
}

fn range(
    v: &Option<Spanned<i64>>,
    name: &str,
    lo: i64,
    hi: i64,
    diags: &mut Vec<Diagnostic>,
) -> Option<i64> {
    let s = v.as_ref()?;
    let x = *s.get_ref();
    if x < lo || x > hi {
        diags.push(
            Diagnostic::new(Code::ConfigValue, format!("`{name}` = {x} is out of range"))
                .label(s.span(), format!("must be between {lo} and {hi}"))
                .help("fix the value or remove the key to use the default"),
        );
        None
    } else {
        Some(x)
    }
}

/// Parses and validates config text, reporting every problem.
pub fn load_config(src: &str) -> Result<Config, Vec<Diagnostic>> {
    let raw: RawConfig = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            return Err(vec![crate::protocol::validate::toml_error(
                Code::ConfigSyntax,
                &e,
            )])
        }
    };
    let mut diags = Vec::new();
    let mut c = Config::default();
    if let Some(l) = &raw.listen {
        match l.get_ref().parse() {
            Ok(a) => c.listen = a,
            Err(_) => diags.push(
                Diagnostic::new(
                    Code::ConfigValue,
                    format!("`{}` is not a socket address", l.get_ref()),
                )
                .label(l.span(), "expected host:port")
                .help("e.g. \"127.0.0.1:8080\" or \"[::]:8080\""),
            ),
        }
    }
    if let Some(n) = range(&raw.shards, "shards", 0, 256, &mut diags) {
        c.shards = n as usize;
    }
    if let Some(n) = range(&raw.drain_ms, "drain_ms", 0, 600_000, &mut diags) {
        c.drain_ms = n as u64;
    }
    if let Some(n) = range(
        &raw.spread_rooms_at,
        "spread_rooms_at",
        0,
        1_000_000,
        &mut diags,
    ) {
        c.spread_rooms_at = n as usize;
    }
    if let Some(n) = range(&raw.write_delay_ms, "write_delay_ms", 0, 1000, &mut diags) {
        c.write_delay_ms = n as u64;
    }
    if let Some(n) = range(&raw.io_memory_kib, "io_memory_kib", 64, 65_536, &mut diags) {
        c.io_memory = n as usize * 1024;
    }
    if let Some(n) = range(
        &raw.max_connections_per_ip,
        "max_connections_per_ip",
        0,
        1_000_000,
        &mut diags,
    ) {
        c.max_connections_per_ip = n as usize;
    }
    if let Some(n) = range(
        &raw.backend_max_in_flight,
        "backend_max_in_flight",
        1,
        10_000,
        &mut diags,
    ) {
        c.backend_max_in_flight = n as usize;
    }
    if let Some(u) = &raw.backend_url {
        match crate::runtime::backend::Backend::parse(u.get_ref()) {
            Ok(_) => c.backend_url = u.get_ref().clone(),
            Err(e) => diags.push(
                Diagnostic::new(Code::ConfigValue, e)
                    .label(u.span(), "not an http:// URL")
                    .help("e.g. \"http://127.0.0.1:8000\" (hooks append their paths)"),
            ),
        }
    }
    for p in &raw.trusted_proxies {
        match Cidr::parse(p.get_ref()) {
            Some(cidr) => c.trusted_proxies.push(cidr),
            None => diags.push(
                Diagnostic::new(Code::ConfigValue, format!("`{}` is not an address range", p.get_ref()))
                    .label(p.span(), "expected CIDR notation")
                    .help("e.g. \"127.0.0.1/32\", \"10.0.0.0/8\" or \"fd00::/8\"; list only your own proxies"),
            ),
        }
    }
    if let Some(api) = &raw.api {
        if let Some(k) = &api.key_env {
            c.api_key_env = k.get_ref().clone();
        }
        if let Some(n) = range(
            &api.max_body_bytes,
            "api.max_body_bytes",
            256,
            64 << 20,
            &mut diags,
        ) {
            c.api_max_body_bytes = n as usize;
        }
    }
    if !raw.keys.is_empty() {
        c.keys.clear();
    }
    for (name, k) in &raw.keys {
        let generate = k.generate.as_ref().is_some_and(|g| *g.get_ref());
        let src = match (&k.secret_env, &k.public_key_file) {
            (None, None) if generate => KeySource::Generated,
            (Some(e), None) if !generate => KeySource::SecretEnv(e.get_ref().clone()),
            (None, Some(f)) if !generate => KeySource::PublicKeyFile(f.get_ref().clone()),
            _ => {
                diags.push(
                    Diagnostic::new(Code::ConfigValue, format!("key `{}` needs exactly one source", name.get_ref()))
                        .label(name.span(), "ambiguous or empty key")
                        .help("set `secret_env = \"ENV_VAR\"` (HMAC), `public_key_file = \"key.pem\"` (RSA/EC) or `generate = true` (tokens Beacon mints)"),
                );
                continue;
            }
        };
        c.keys.insert(name.get_ref().clone(), (src, name.span()));
    }
    if let Some(log) = &raw.log {
        if let Some(l) = &log.level {
            if ["error", "warn", "info", "debug", "trace"].contains(&l.get_ref().as_str()) {
                c.log_level = l.get_ref().clone();
            } else {
                diags.push(
                    Diagnostic::new(
                        Code::ConfigValue,
                        format!("unknown log level `{}`", l.get_ref()),
                    )
                    .label(l.span(), "unknown level")
                    .help("use error, warn, info, debug or trace"),
                );
            }
        }
        if let Some(f) = &log.format {
            match f.get_ref().as_str() {
                "text" => c.log_format = LogFormat::Text,
                "json" => c.log_format = LogFormat::Json,
                other => diags.push(
                    Diagnostic::new(Code::ConfigValue, format!("unknown log format `{other}`"))
                        .label(f.span(), "unknown format")
                        .help("use \"text\" (human-readable) or \"json\" (one object per line)"),
                ),
            }
        }
    }
    if let Some(cl) = &raw.cluster {
        c.cluster = cluster(cl, &mut diags);
    }
    if let Some(l) = &raw.channel_layer {
        let node = c.cluster.as_ref().map(|cl| cl.node_id.clone());
        c.channel_layer = channel_layer(l, node, &mut diags);
    }
    if diags.is_empty() {
        Ok(c)
    } else {
        Err(diags)
    }
}

/// Channel names and node ids go into broker channel names (and NATS subjects), so they keep
/// to characters every broker accepts as-is.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= crate::broker::envelope::MAX_NODE_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn cluster(cl: &RawCluster, diags: &mut Vec<Diagnostic>) -> Option<Cluster> {
    let before = diags.len();
    let broker = match &cl.broker {
        None => {
            diags.push(
                Diagnostic::new(Code::ConfigValue, "`[cluster]` needs `broker`")
                    .label(0..0, "no broker named")
                    .help("add `broker = \"redis\"` (or \"nats\") and `url` to `[cluster]`, or remove `[cluster]` to run one node alone"),
            );
            None
        }
        Some(b) => match b.get_ref().as_str() {
            "redis" => Some(BrokerKind::Redis),
            "nats" => Some(BrokerKind::Nats),
            other => {
                diags.push(
                    Diagnostic::new(Code::ConfigValue, format!("unknown broker `{other}`"))
                        .label(b.span(), "unknown broker")
                        .help("use \"redis\" (Redis PUB/SUB) or \"nats\" (core NATS)"),
                );
                None
            }
        },
    };
    let mut urls = Vec::new();
    match (&cl.url, broker) {
        (None, _) => diags.push(
            Diagnostic::new(Code::ConfigValue, "`[cluster]` needs `url`")
                .label(
                    cl.broker.as_ref().map_or(0..0, |b| b.span()),
                    "no broker address",
                )
                .help("e.g. `url = \"redis://127.0.0.1:6379\"`"),
        ),
        (Some(u), Some(kind)) => {
            let list = match u.get_ref() {
                RawUrls::One(s) => vec![s.clone()],
                RawUrls::Many(v) => v.clone(),
            };
            if list.is_empty() {
                diags.push(
                    Diagnostic::new(Code::ConfigValue, "`url` lists no broker")
                        .label(u.span(), "at least one URL expected")
                        .help(format!("e.g. `url = \"{}://127.0.0.1\"`", kind.name())),
                );
            }
            let mut seen = std::collections::HashSet::new();
            for s in &list {
                if !seen.insert(s.as_str()) {
                    diags.push(
                        Diagnostic::new(Code::ConfigValue, format!("`url` lists `{s}` twice"))
                            .label(u.span(), "listed twice")
                            .help("each Redis instance holds its own share of the rooms: list each once"),
                    );
                }
            }
            for s in list {
                match BrokerUrl::parse(kind, &s) {
                    Ok(b) => urls.push(b),
                    Err(e) => diags.push(
                        Diagnostic::new(Code::ConfigValue, e)
                            .label(u.span(), "not a broker URL")
                            .help(format!(
                                "e.g. \"{}://127.0.0.1:{}\"",
                                kind.name(),
                                if kind == BrokerKind::Redis {
                                    6379
                                } else {
                                    4222
                                }
                            )),
                    ),
                }
            }
        }
        (Some(_), None) => {}
    }
    let mut token = |v: &Option<Spanned<String>>, key: &str| -> Option<String> {
        let s = v.as_ref()?;
        if is_token(s.get_ref()) {
            Some(s.get_ref().clone())
        } else {
            diags.push(
                Diagnostic::new(Code::ConfigValue, format!("`cluster.{key}` = `{}` is not a plain name", s.get_ref()))
                    .label(s.span(), "letters, digits, '-' and '_' only")
                    .help(format!("use 1 to {} ASCII letters, digits, '-' or '_' (it becomes part of broker channel names)", crate::broker::envelope::MAX_NODE_ID)),
            );
            None
        }
    };
    let node_id = token(&cl.node_id, "node_id");
    let prefix = token(&cl.prefix, "prefix");
    let redis_cluster = cl.redis_cluster.as_ref().is_some_and(|b| *b.get_ref());
    if let (Some(b), Some(BrokerKind::Nats)) = (&cl.redis_cluster, broker) {
        if *b.get_ref() {
            diags.push(
                Diagnostic::new(Code::ConfigValue, "`redis_cluster` with a NATS broker")
                    .label(b.span(), "Redis only")
                    .help(
                        "remove `redis_cluster`: several NATS URLs are servers of one NATS cluster",
                    ),
            );
        }
    }
    let mut cluster_partitions = DEFAULT_PARTITIONS;
    if let Some(p) = &cl.partitions {
        match usize::try_from(*p.get_ref()) {
            Ok(n) if (1..=MAX_PARTITIONS).contains(&n) && redis_cluster => cluster_partitions = n,
            Ok(n) if (1..=MAX_PARTITIONS).contains(&n) => diags.push(
                Diagnostic::new(Code::ConfigValue, "`partitions` without `redis_cluster = true`")
                    .label(p.span(), "Redis Cluster only")
                    .help("several standalone Redis instances are one partition each: list them in `url`"),
            ),
            _ => diags.push(
                Diagnostic::new(Code::ConfigValue, format!("`partitions` = {} out of range", p.get_ref()))
                    .label(p.span(), format!("1 to {MAX_PARTITIONS}"))
                    .help(format!("the default is {DEFAULT_PARTITIONS}; each partition is two connections per shard")),
            ),
        }
    }
    if diags.len() > before {
        return None;
    }
    Some(Cluster {
        broker: broker?,
        broker_span: cl.broker.as_ref().map_or(0..0, |b| b.span()),
        urls,
        node_id: node_id.unwrap_or_else(generated_node_id),
        prefix: prefix.unwrap_or_else(|| "beacon".to_owned()),
        start_without_broker: cl
            .start_without_broker
            .as_ref()
            .is_some_and(|b| *b.get_ref()),
        redis_cluster,
        cluster_partitions,
    })
}

fn channel_layer(
    l: &RawChannelLayer,
    node: Option<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<ChannelLayerConfig> {
    let before = diags.len();
    let url = match &l.url {
        None => {
            diags.push(
                Diagnostic::new(Code::ConfigValue, "`[channel_layer]` needs `url`")
                    .label(0..0, "no Redis address")
                    .help("the Redis of Django's CHANNEL_LAYERS, e.g. `url = \"redis://127.0.0.1:6379\"`"),
            );
            None
        }
        Some(u) => match BrokerUrl::parse(BrokerKind::Redis, u.get_ref()) {
            Ok(b) => Some((b, u)),
            Err(e) => {
                diags.push(
                    Diagnostic::new(Code::ConfigValue, e)
                        .label(u.span(), "not a Redis URL")
                        .help("`redis://[:password@]host[:port][/db]`"),
                );
                None
            }
        },
    };
    let db = url.as_ref().and_then(|(_, u)| {
        let path = u.get_ref().strip_prefix("redis://")?.split_once('/')?.1;
        if path.is_empty() {
            return Some(0);
        }
        let db = path.parse::<u32>().ok();
        if db.is_none() {
            diags.push(
                Diagnostic::new(
                    Code::ConfigValue,
                    format!("`/{path}` is not a database index"),
                )
                .label(u.span(), "database")
                .help("a number, as in `redis://127.0.0.1:6379/0`"),
            );
        }
        db
    });
    let flavor = match l.layer.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("core", _)) => crate::channel_layer::Flavor::Core,
        Some(("pubsub", _)) => crate::channel_layer::Flavor::PubSub,
        Some((other, span)) => {
            diags.push(
                Diagnostic::new(Code::ConfigValue, format!("unknown channel layer `{other}`"))
                    .label(span, "unknown layer")
                    .help("\"core\" for channels_redis.core.RedisChannelLayer, \"pubsub\" for channels_redis.pubsub.RedisPubSubChannelLayer"),
            );
            crate::channel_layer::Flavor::Core
        }
    };
    let group_expiry_s = match &l.group_expiry_s {
        None => 86_400,
        Some(e) if (60..=31_536_000).contains(e.get_ref()) => *e.get_ref() as u64,
        Some(e) => {
            diags.push(
                Diagnostic::new(Code::ConfigValue, "`group_expiry_s` out of range")
                    .label(e.span(), "60 to 31536000")
                    .help("the group_expiry of Django's CHANNEL_LAYERS config (86400 by default)"),
            );
            86_400
        }
    };
    let name = |v: &Option<Spanned<String>>, what: &str, diags: &mut Vec<Diagnostic>| {
        let v = v.as_ref()?;
        let ok = !v.get_ref().is_empty()
            && v.get_ref().len() <= 40
            && crate::channel_layer::valid_group_piece(v.get_ref());
        if !ok {
            diags.push(
                Diagnostic::new(
                    Code::ConfigValue,
                    format!(
                        "`channel_layer.{what}` = `{}` is not a plain name",
                        v.get_ref()
                    ),
                )
                .label(v.span(), "not a plain name")
                .help("1 to 40 ASCII letters, digits, `-`, `_` or `.`"),
            );
        }
        Some(v.get_ref().clone())
    };
    let prefix = name(&l.prefix, "prefix", diags).unwrap_or_else(|| "asgi".to_owned());
    let client = name(&l.client, "client", diags)
        .or(node)
        .unwrap_or_else(generated_node_id);
    if diags.len() > before {
        return None;
    }
    Some(ChannelLayerConfig {
        url: url?.0,
        db: db.unwrap_or(0),
        flavor,
        prefix,
        group_expiry_s,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_parse_and_bad_ranges_are_reported_with_spans() {
        let c = load_config("trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n").unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        let src = "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/40\", \"proxy\"]\n";
        let d = load_config(src).unwrap_err();
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|d| d.code == Code::ConfigValue));
        let r = crate::protocol::render("beacon.toml", src, &d);
        assert!(r.contains("10.0.0.0/40") && r.contains("proxy"), "{r}");
    }

    #[test]
    fn channel_layer_section_parses_and_says_what_is_wrong() {
        let c = load_config("[channel_layer]\nurl = \"redis://:pw@h:7000/2\"\nlayer = \"pubsub\"\nclient = \"node-a\"\n")
            .unwrap()
            .channel_layer
            .unwrap();
        assert_eq!((c.url.port, c.db, c.prefix.as_str()), (7000, 2, "asgi"));
        assert_eq!(c.flavor, crate::channel_layer::Flavor::PubSub);
        assert_eq!((c.client.as_str(), c.group_expiry_s), ("node-a", 86_400));
        // Without a name of its own, a clustered node uses its node id.
        let c = load_config("[cluster]\nbroker = \"redis\"\nurl = \"redis://h\"\nnode_id = \"n1\"\n[channel_layer]\nurl = \"redis://h\"\n")
            .unwrap();
        assert_eq!(c.channel_layer.unwrap().client, "n1");
        let src = "[channel_layer]\nurl = \"redis://h/x\"\nlayer = \"kafka\"\ngroup_expiry_s = 1\nclient = \"a b\"\n";
        let r = crate::protocol::render("beacon.toml", src, &load_config(src).unwrap_err());
        for want in [
            "`/x` is not a database index",
            "unknown channel layer `kafka`",
            "`group_expiry_s` out of range",
            "`channel_layer.client` = `a b`",
        ] {
            assert!(r.contains(want), "{want}: {r}");
        }
        assert!(load_config("[channel_layer]\n").is_err());
    }

    #[test]
    fn cluster_section_parses_with_defaults() {
        assert!(load_config("").unwrap().cluster.is_none());
        let c =
            load_config("[cluster]\nbroker = \"redis\"\nurl = \"redis://:pw@localhost:7000/0\"\n")
                .unwrap()
                .cluster
                .unwrap();
        assert_eq!(c.broker, BrokerKind::Redis);
        assert_eq!(c.prefix, "beacon");
        assert!(c.node_id.starts_with('n') && c.node_id.len() == 17);
        assert!(!c.start_without_broker);
        assert_eq!(
            c.urls,
            vec![BrokerUrl {
                host: "localhost".into(),
                port: 7000,
                username: None,
                password: Some("pw".into()),
                shown: "redis://localhost:7000".into(),
            }]
        );
        let c = load_config("[cluster]\nbroker = \"nats\"\nurl = [\"nats://h\"]\nnode_id = \"a-1\"\nprefix = \"app\"\nstart_without_broker = true\n")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(
            (c.node_id.as_str(), c.prefix.as_str(), c.urls[0].port),
            ("a-1", "app", 4222)
        );
        assert_eq!(c.broker, BrokerKind::Nats);
        assert!(c.start_without_broker);
    }

    #[test]
    fn cluster_problems_are_each_reported() {
        let src = "[cluster]\nbroker = \"kafka\"\nnode_id = \"a b\"\nprefix = \"\"\n";
        let d = load_config(src).unwrap_err();
        let r = crate::protocol::render("beacon.toml", src, &d);
        assert_eq!(d.len(), 4, "{r}");
        assert!(
            r.contains("unknown broker `kafka`") && r.contains("needs `url`"),
            "{r}"
        );
        assert!(
            r.contains("`cluster.node_id` = `a b`") && r.contains("`cluster.prefix`"),
            "{r}"
        );
        let src = "[cluster]\nbroker = \"redis\"\nurl = \"http://x\"\n";
        let r = crate::protocol::render("beacon.toml", src, &load_config(src).unwrap_err());
        assert!(r.contains("does not start with redis://"), "{r}");
        let src = "[cluster]\nbroker = \"redis\"\nurl = \"redis://h:99999\"\n";
        assert!(load_config(src).is_err());
        let src = "[cluster]\nbroker = \"redis\"\nurl = \"redis://h\"\nport = 1\n";
        assert!(load_config(src).is_err(), "unknown keys are refused");
    }

    #[test]
    fn broker_urls_carry_users_and_passwords() {
        let u = BrokerUrl::parse(BrokerKind::Redis, "redis://app:s3cret@h:7000/2").unwrap();
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("app"), Some("s3cret"))
        );
        assert_eq!(u.redis_auth().unwrap(), [&b"AUTH"[..], b"app", b"s3cret"]);
        assert_eq!(u.shown, "redis://h:7000", "no secret in what logs show");
        let u = BrokerUrl::parse(BrokerKind::Redis, "redis://:pw@h").unwrap();
        assert_eq!(u.redis_auth().unwrap(), [&b"AUTH"[..], b"pw"]);
        assert!(BrokerUrl::parse(BrokerKind::Redis, "redis://h")
            .unwrap()
            .redis_auth()
            .is_none());
        let u = BrokerUrl::parse(BrokerKind::Nats, "nats://tok@h").unwrap();
        assert_eq!((u.username, u.password.as_deref()), (None, Some("tok")));
    }

    #[test]
    fn several_redis_and_redis_cluster_parse() {
        let c = load_config(
            "[cluster]\nbroker = \"redis\"\nurl = [\"redis://a\", \"redis://b:7000\"]\n",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!((c.partitions(), c.keyspace(1).as_str()), (2, "beacon"));
        assert_eq!(c.urls[1].port, 7000);
        let c = load_config(
            "[cluster]\nbroker = \"redis\"\nurl = [\"redis://a\"]\nredis_cluster = true\n",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.partitions(), DEFAULT_PARTITIONS);
        assert_eq!(c.keyspace(3), "beacon.{3}");
        assert!(c.partition_of("lobby") < DEFAULT_PARTITIONS);
        let c = load_config("[cluster]\nbroker = \"redis\"\nurl = \"redis://a\"\nredis_cluster = true\npartitions = 4\nprefix = \"app\"\n")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!((c.partitions(), c.keyspace(0).as_str()), (4, "app.{0}"));
        // Several NATS URLs are one NATS cluster: one partition.
        let c = load_config("[cluster]\nbroker = \"nats\"\nurl = [\"nats://a\", \"nats://b\"]\n")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.partitions(), 1);
        for (src, want) in [
            ("url = []\n", "`url` lists no broker"),
            (
                "url = [\"redis://a\", \"redis://a\"]\n",
                "lists `redis://a` twice",
            ),
            (
                "url = \"redis://a\"\npartitions = 4\n",
                "`partitions` without `redis_cluster = true`",
            ),
            (
                "url = \"redis://a\"\nredis_cluster = true\npartitions = 0\n",
                "`partitions` = 0 out of range",
            ),
            (
                "url = \"redis://a\"\nredis_cluster = true\npartitions = 100000\n",
                "out of range",
            ),
        ] {
            let src = format!("[cluster]\nbroker = \"redis\"\n{src}");
            let r = crate::protocol::render("beacon.toml", &src, &load_config(&src).unwrap_err());
            assert!(r.contains(want), "{want}: {r}");
        }
        let src = "[cluster]\nbroker = \"nats\"\nurl = \"nats://a\"\nredis_cluster = true\n";
        let r = crate::protocol::render("beacon.toml", src, &load_config(src).unwrap_err());
        assert!(r.contains("`redis_cluster` with a NATS broker"), "{r}");
    }
}
