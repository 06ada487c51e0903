//! Checks `[tokens]`: algorithms (one key family per kind, never `none`), leeway and exact claims.

use std::collections::BTreeMap;

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::{toml_to_json, Names, Validator};

impl Validator {
    pub(super) fn tokens(
        &mut self,
        raw: &BTreeMap<S<String>, RawToken>,
        names: &mut Names,
    ) -> Vec<TokenSpec> {
        let mut tokens = Vec::new();
        for (name, t) in raw {
            self.ident("token", name);
            names.tokens.insert(name.get_ref().clone(), tokens.len());
            tokens.push(self.token(name, t));
        }
        tokens
    }

    fn token(&mut self, name: &S<String>, t: &RawToken) -> TokenSpec {
        let about = self.about(&format!("token `{}`", name.get_ref()), &t.about);
        let mut algorithms = Vec::new();
        for a in t.algorithms.get_ref() {
            let alg = match a.get_ref().as_str() {
                "HS256" => Some(jsonwebtoken::Algorithm::HS256),
                "HS384" => Some(jsonwebtoken::Algorithm::HS384),
                "HS512" => Some(jsonwebtoken::Algorithm::HS512),
                "RS256" => Some(jsonwebtoken::Algorithm::RS256),
                "ES256" => Some(jsonwebtoken::Algorithm::ES256),
                _ => None,
            };
            match alg {
                Some(alg) => algorithms.push(alg),
                None => self.err(
                    Diagnostic::new(
                        Code::BadAlgorithm,
                        format!("algorithm `{}` is not allowed", a.get_ref()),
                    )
                    .label(a.span(), "not allowed")
                    .help("use HS256, HS384, HS512, RS256 or ES256; `none` is never accepted"),
                ),
            }
        }
        if t.algorithms.get_ref().is_empty() {
            self.err(
                Diagnostic::new(Code::BadAlgorithm, "no algorithms listed")
                    .label(t.algorithms.span(), "empty list")
                    .help("list the algorithms tokens are signed with, e.g. [\"HS256\"]"),
            );
        }
        let hmac = algorithms.iter().any(|a| {
            matches!(
                a,
                jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512
            )
        });
        let public = algorithms.iter().any(|a| {
            matches!(
                a,
                jsonwebtoken::Algorithm::RS256 | jsonwebtoken::Algorithm::ES256
            )
        });
        let rsa = algorithms.contains(&jsonwebtoken::Algorithm::RS256);
        let ec = algorithms.contains(&jsonwebtoken::Algorithm::ES256);
        if (hmac && public) || (rsa && ec) {
            self.err(
                Diagnostic::new(Code::BadAlgorithm, "algorithms from different key families share one token kind")
                    .label(t.algorithms.span(), "mixed key families")
                    .help("one key verifies one family (HMAC, RSA or EC); mixing them invites key-confusion attacks. Declare separate token kinds"),
            );
        }
        let leeway = match &t.leeway_s {
            Some(l) if !(0..=300).contains(l.get_ref()) => {
                self.err(
                    Diagnostic::new(Code::LimitOutOfRange, "leeway_s must be between 0 and 300")
                        .label(l.span(), "out of range")
                        .help("leeway tolerates clock skew; more than a few seconds lets expired tokens in"),
                );
                0
            }
            Some(l) => *l.get_ref() as u64,
            None => 0,
        };
        let mut exact_claims = Vec::new();
        for (k, v) in &t.claims {
            match toml_to_json(v.get_ref()) {
                Some(j) => exact_claims.push((k.get_ref().clone(), j)),
                None => self.err(
                    Diagnostic::new(
                        Code::Syntax,
                        "claim values must be strings, numbers or booleans",
                    )
                    .label(v.span(), "unsupported value")
                    .help("e.g. `claims = { token_type = \"access\" }`"),
                ),
            }
        }
        TokenSpec {
            name: name.get_ref().clone(),
            about,
            key: t.key.get_ref().clone(),
            key_span: t.key.span(),
            algorithms,
            user_id_claim: t
                .user_id_claim
                .as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_else(|| "sub".into()),
            required_claims: t
                .required_claims
                .iter()
                .map(|c| c.get_ref().clone())
                .collect(),
            exact_claims,
            issuer: t.issuer.as_ref().map(|s| s.get_ref().clone()),
            audience: t.audience.as_ref().map(|s| s.get_ref().clone()),
            leeway_s: leeway,
        }
    }

    /// Token kinds an endpoint or HTTP endpoint accepts, by name.
    pub(super) fn token_refs(&mut self, refs: &[S<String>], names: &Names) -> Vec<TokenId> {
        let mut tokens = Vec::new();
        for t in refs {
            match names.tokens.get(t.get_ref()) {
                Some(&id) => tokens.push(id),
                None => self.err(
                    Diagnostic::new(
                        Code::UnknownTokenKind,
                        format!("no token kind named `{}`", t.get_ref()),
                    )
                    .label(t.span(), "unknown token kind")
                    .help(format!("declare it under `[tokens.{}]`", t.get_ref())),
                ),
            }
        }
        tokens
    }
}
