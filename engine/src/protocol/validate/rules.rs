//! Checks authorization: `[hooks]`, endpoint and HTTP `authorize` rules, and the conditions
//! inside them and in a message's `only_if`.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::{toml_to_json, Names, Validator};

impl Validator {
    pub(super) fn hooks(
        &mut self,
        raw: &BTreeMap<S<String>, RawHook>,
        closes: &HashMap<String, CloseId>,
    ) -> Vec<Hook> {
        let mut hooks = Vec::new();
        for (name, h) in raw {
            self.ident("hook", name);
            if let Some(hook) = self.hook(name, h, closes) {
                self.hook_names.insert(name.get_ref().clone(), hooks.len());
                hooks.push(hook);
            }
        }
        hooks
    }

    fn hook(
        &mut self,
        name: &S<String>,
        h: &RawHook,
        closes: &HashMap<String, CloseId>,
    ) -> Option<Hook> {
        let about = self.about(&format!("hook `{}`", name.get_ref()), &h.about);
        let path = h.path.get_ref();
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            self.err(
                Diagnostic::new(Code::BadHook, format!("hook path `{path}` is not an absolute path"))
                    .label(h.path.span(), "expected /path")
                    .help("the path is appended to the deployment's backend URL, e.g. \"/internal/beacon/authorize/\""),
            );
        }
        let timeout_ms = self.limit(&h.timeout_ms, "timeout_ms", 10, 30_000, 2000) as u64;
        let cache_ttl_ms = self.limit(&h.cache_ttl_ms, "cache_ttl_ms", 0, 3_600_000, 0) as u64;
        let unavailable = match closes.get(h.unavailable.get_ref()) {
            Some(&c) => Some(c),
            None => {
                self.err(
                    Diagnostic::new(
                        Code::UnknownClose,
                        format!("no close entry named `{}`", h.unavailable.get_ref()),
                    )
                    .label(h.unavailable.span(), "unknown close")
                    .help(
                        "the close used when the backend cannot answer; declare it under [close]",
                    ),
                );
                None
            }
        };
        Some(Hook {
            name: name.get_ref().clone(),
            about,
            path: path.clone(),
            timeout_ms,
            cache_ttl_ms,
            unavailable: unavailable?,
        })
    }

    /// An `authorize` list: the only place a hook may be asked, since it runs once per
    /// handshake or request rather than per message.
    pub(super) fn authorize(
        &mut self,
        rules: &[RawRule],
        params: &[String],
        names: &Names,
        authenticated: bool,
    ) -> Vec<Rule> {
        self.hooks_allowed = true;
        let rules = rules
            .iter()
            .filter_map(|r| self.rule(r, params, names, authenticated))
            .collect();
        self.hooks_allowed = false;
        rules
    }

    fn rule(
        &mut self,
        r: &RawRule,
        params: &[String],
        names: &Names,
        authenticated: bool,
    ) -> Option<Rule> {
        let deny = self.close_ref(&r.deny, names);
        let cond = match (r.any_of.is_empty(), r.all_of.is_empty()) {
            (false, true) => Cond::AnyOf(
                r.any_of
                    .iter()
                    .filter_map(|c| self.cond(c, params, authenticated))
                    .collect(),
            ),
            (true, false) => Cond::AllOf(
                r.all_of
                    .iter()
                    .filter_map(|c| self.cond(c, params, authenticated))
                    .collect(),
            ),
            _ => {
                self.err(
                    Diagnostic::new(
                        Code::BadRule,
                        "a rule needs exactly one of `any_of` or `all_of`, non-empty",
                    )
                    .label(r.deny.span(), "in this rule")
                    .help("e.g. any_of = [{ claim = \"role\", in = [\"admin\"] }]"),
                );
                return None;
            }
        };
        Some(Rule { cond, deny: deny? })
    }

    pub(super) fn cond(
        &mut self,
        c: &RawCond,
        params: &[String],
        authenticated: bool,
    ) -> Option<Cond> {
        let mut kinds = Vec::new();
        if c.authenticated.is_some() {
            kinds.push("authenticated");
        }
        if c.claim.is_some() {
            kinds.push("claim");
        }
        if c.all_of.is_some() {
            kinds.push("all_of");
        }
        if c.any_of.is_some() {
            kinds.push("any_of");
        }
        if c.hook.is_some() {
            kinds.push("hook");
        }
        let span = c
            .claim
            .as_ref()
            .map(|s| s.span())
            .or(c.hook.as_ref().map(|s| s.span()))
            .or(c.authenticated.as_ref().map(|s| s.span()))
            .or(c.all_of.as_ref().map(|s| s.span()))
            .or(c.any_of.as_ref().map(|s| s.span()))
            .unwrap_or(0..0);
        if kinds.len() != 1 {
            self.err(
                Diagnostic::new(
                    Code::BadRule,
                    "a condition needs exactly one of `claim`, `authenticated`, `hook`, `all_of`, `any_of`",
                )
                .label(span, "ambiguous or empty condition")
                .help("split it into separate conditions"),
            );
            return None;
        }
        if !authenticated && kinds[0] != "all_of" && kinds[0] != "any_of" {
            self.err(
                Diagnostic::new(Code::BadRule, "authorization rules on a public endpoint")
                    .label(span, "there is no caller identity here")
                    .help("declare `tokens` and `token_sources` on the endpoint"),
            );
            return None;
        }
        if let Some(a) = &c.authenticated {
            if !*a.get_ref() {
                self.err(
                    Diagnostic::new(Code::BadRule, "`authenticated = false` never admits anyone")
                        .label(a.span(), "always false")
                        .help("use `authenticated = true`, or remove the condition"),
                );
                return None;
            }
            return Some(Cond::Authenticated);
        }
        if let Some(h) = &c.hook {
            if !self.hooks_allowed {
                self.err(
                    Diagnostic::new(Code::BadHook, "a hook cannot be asked here")
                        .label(h.span(), "per-message condition")
                        .help("hooks run at the handshake (endpoint `authorize`) and on HTTP endpoints; use claim conditions here"),
                );
                return None;
            }
            return match self.hook_names.get(h.get_ref()) {
                Some(&id) => Some(Cond::Hook(id)),
                None => {
                    self.err(
                        Diagnostic::new(Code::BadHook, format!("no hook named `{}`", h.get_ref()))
                            .label(h.span(), "unknown hook")
                            .help(format!("declare it under `[hooks.{}]`", h.get_ref())),
                    );
                    None
                }
            };
        }
        if let Some(list) = &c.all_of {
            return Some(Cond::AllOf(
                list.get_ref()
                    .iter()
                    .filter_map(|c| self.cond(c, params, authenticated))
                    .collect(),
            ));
        }
        if let Some(list) = &c.any_of {
            return Some(Cond::AnyOf(
                list.get_ref()
                    .iter()
                    .filter_map(|c| self.cond(c, params, authenticated))
                    .collect(),
            ));
        }
        let claim = c.claim.as_ref()?.get_ref().clone();
        self.claims_read.insert(claim.clone());
        let tests = [
            c.equals.is_some(),
            c.in_.is_some(),
            c.equals_param.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if tests != 1 {
            self.err(
                Diagnostic::new(
                    Code::BadRule,
                    "a claim condition needs exactly one of `equals`, `in`, `equals_param`",
                )
                .label(span, "in this condition")
                .help("e.g. { claim = \"role\", in = [\"admin\", \"staff\"] }"),
            );
            return None;
        }
        if let Some(eq) = &c.equals {
            return match toml_to_json(eq.get_ref()) {
                Some(v) => Some(Cond::ClaimEquals(claim, v)),
                None => {
                    self.err(
                        Diagnostic::new(
                            Code::BadRule,
                            "claim values must be strings, numbers or booleans",
                        )
                        .label(eq.span(), "unsupported value")
                        .help("compare against a scalar"),
                    );
                    None
                }
            };
        }
        if let Some(list) = &c.in_ {
            let vals: Option<Vec<Value>> = list.get_ref().iter().map(toml_to_json).collect();
            return match vals {
                Some(v) if !v.is_empty() => Some(Cond::ClaimIn(claim, v)),
                _ => {
                    self.err(
                        Diagnostic::new(Code::BadRule, "`in` needs a non-empty list of scalars")
                            .label(list.span(), "bad list")
                            .help("e.g. in = [\"admin\", \"staff\"]"),
                    );
                    None
                }
            };
        }
        let p = c.equals_param.as_ref()?;
        match params.iter().position(|x| x == p.get_ref()) {
            Some(i) => Some(Cond::ClaimEqualsParam(claim, i)),
            None => {
                self.err(
                    Diagnostic::new(
                        Code::BadRule,
                        format!(
                            "`{}` is not a parameter of this endpoint's path",
                            p.get_ref()
                        ),
                    )
                    .label(p.span(), "unknown parameter")
                    .help(format!("parameters here: {}", params.join(", "))),
                );
                None
            }
        }
    }
}
