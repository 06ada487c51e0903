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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// 0 means one per core.
    pub shards: usize,
    pub drain_ms: u64,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shards: 0,
            drain_ms: 3000,
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
    if diags.is_empty() {
        Ok(c)
    } else {
        Err(diags)
    }
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
}
