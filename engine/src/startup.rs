//! Startup: read and validate the protocol and config files, resolve key material, build the
//! shared state. `beacon check` and `beacon serve` run the same path, so the engine never serves
//! from a file that did not validate. Plain code apart from reading files and the environment.

use std::path::Path;
use std::sync::Arc;

use crate::auth::{KeyMaterial, TokenRule, Verifier};
use crate::config::{load_config, Config, KeySource};
use crate::protocol::{legend, load_protocol, render, render_problems, Code, Diagnostic, Protocol};
use crate::runtime::Shared;

/// Everything `check` validates, with rendered diagnostics on failure.
pub struct Checked {
    pub protocol: Protocol,
    pub config: Config,
    pub protocol_src: String,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Validates both files. A missing config file means defaults (it is optional); a missing
/// protocol file is an error.
pub fn check(protocol_path: &Path, config_path: &Path) -> Result<Checked, String> {
    let psrc = read(protocol_path)?;
    let pname = protocol_path.display().to_string();
    let (csrc, cname) = match std::fs::read_to_string(config_path) {
        Ok(s) => (Some(s), config_path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, String::new()),
        Err(e) => return Err(format!("{}: cannot read: {e}", config_path.display())),
    };
    let proto = load_protocol(&psrc);
    let config = match &csrc {
        Some(s) => load_config(s),
        None => Ok(Config::default()),
    };
    let mut report = String::new();
    if let Err(d) = &proto {
        report.push_str(&render_problems(&pname, &psrc, d));
    }
    if let (Err(d), Some(s)) = (&config, &csrc) {
        report.push_str(&render_problems(&cname, s, d));
    }
    // One legend for both files: a code found in each is still explained once.
    let found = [proto.as_ref().err(), config.as_ref().err()];
    report.push_str(&legend(found.into_iter().flatten().flatten()));
    let (Ok(protocol), Ok(config)) = (proto, config) else {
        return Err(report);
    };
    // Cross-file: every key a token kind names must exist in the config.
    let missing: Vec<Diagnostic> = protocol
        .tokens
        .iter()
        .filter(|t| !config.keys.contains_key(&t.key))
        .map(|t| {
            Diagnostic::new(
                Code::KeyNotInConfig,
                format!(
                    "token `{}` uses key `{}`, which the config does not define",
                    t.name, t.key
                ),
            )
            .label(t.key_span.clone(), "undefined key")
            .help(format!(
                "add `[keys.{}]` with `secret_env` or `public_key_file` to {}",
                t.key,
                if cname.is_empty() {
                    "config/beacon.toml"
                } else {
                    &cname
                }
            ))
        })
        .collect();
    if !missing.is_empty() {
        return Err(render(&pname, &psrc, &missing));
    }
    Ok(Checked {
        protocol,
        config,
        protocol_src: psrc,
    })
}

/// Loads key material and builds one verifier per token kind. Errors are rendered against the
/// protocol file at the token's `key`.
pub fn verifiers(
    c: &Checked,
    protocol_path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Verifier>, String> {
    let mut diags = Vec::new();
    let mut out = Vec::new();
    // One secret per generated key, shared by every token kind that names it.
    let mut generated: std::collections::HashMap<&str, Vec<u8>> = Default::default();
    for t in &c.protocol.tokens {
        let Some((src, _)) = c.config.keys.get(&t.key) else {
            continue;
        };
        let material = match src {
            KeySource::SecretEnv(var) => match env(var) {
                Some(s) if !s.is_empty() => Ok(KeyMaterial::Hmac(s.into_bytes())),
                _ => Err(Diagnostic::new(
                    Code::MissingSecret,
                    format!("key `{}` needs the environment variable {var}", t.key),
                )
                .label(t.key_span.clone(), "secret not set")
                .help(format!("export {var}=<secret of at least 32 bytes>"))),
            },
            KeySource::Generated => Ok(KeyMaterial::Hmac(
                generated
                    .entry(t.key.as_str())
                    .or_insert_with(|| {
                        (0..4)
                            .map(|_| format!("{:016x}", rand::random::<u64>()))
                            .collect::<String>()
                            .into_bytes()
                    })
                    .clone(),
            )),
            KeySource::PublicKeyFile(path) => match std::fs::read(path) {
                Ok(pem) => {
                    if t.algorithms.contains(&jsonwebtoken::Algorithm::ES256) {
                        Ok(KeyMaterial::EcPublicPem(pem))
                    } else {
                        Ok(KeyMaterial::RsaPublicPem(pem))
                    }
                }
                Err(e) => Err(Diagnostic::new(
                    Code::MissingSecret,
                    format!("cannot read public key {path}: {e}"),
                )
                .label(t.key_span.clone(), "key file unreadable")
                .help("check the path in config (relative paths start at the working directory)")),
            },
        };
        let material = match material {
            Ok(m) => m,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        let rule = TokenRule {
            name: t.name.clone(),
            algorithms: t.algorithms.clone(),
            key: material,
            user_id_claim: t.user_id_claim.clone(),
            required_claims: t.required_claims.clone(),
            exact_claims: t.exact_claims.clone(),
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            leeway_s: t.leeway_s,
        };
        match Verifier::new(rule) {
            Ok(v) => out.push(v),
            Err(e) => diags.push(
                Diagnostic::new(Code::UnusableKey, format!("token `{}`: {e}", t.name))
                    .label(t.key_span.clone(), "unusable key")
                    .help("HMAC secrets need at least 32 bytes; RSA/EC keys must match the declared algorithms"),
            ),
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(render(
            &protocol_path.display().to_string(),
            &c.protocol_src,
            &diags,
        ))
    }
}

/// Builds the shared state a server runs from.
pub fn shared(
    c: Checked,
    verifiers: Vec<Verifier>,
    api_key: Option<String>,
    nr_shards: usize,
) -> Arc<Shared> {
    Arc::new(Shared::new(
        Arc::new(c.protocol),
        c.config,
        verifiers,
        api_key,
        nr_shards,
    ))
}
