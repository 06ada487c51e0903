//! Checks `[close]` entries (codes, reasons, reconnect classes), references to them by name,
//! and that `[close_on]` maps every rejection the engine makes.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::{Names, Validator};

impl Validator {
    /// Closes come first: everything else refers to them by name.
    pub(super) fn closes(
        &mut self,
        raw: &RawProtocol,
    ) -> (Vec<CloseSpec>, HashMap<String, CloseId>) {
        let mut closes = Vec::new();
        let mut close_names = HashMap::new();
        for (name, c) in &raw.close {
            self.ident("close", name);
            let spec = self.close(name, c);
            close_names.insert(name.get_ref().clone(), closes.len());
            closes.push(spec);
        }
        self.unique_close_codes(raw);
        (closes, close_names)
    }

    pub(super) fn close(&mut self, name: &S<String>, c: &RawClose) -> CloseSpec {
        let about = self.about(&format!("close `{}`", name.get_ref()), &c.about);
        let code = match c.code.get_ref() {
            toml::Value::Integer(n) if (4000..=4999).contains(n) => *n as u16,
            toml::Value::Integer(n) => {
                self.err(
                    Diagnostic::new(Code::BadCloseCode, format!("close code {n} is not an application code"))
                        .label(c.code.span(), "out of range")
                        .help("numeric codes must be 4000-4999; name RFC 6455 codes instead, e.g. \"going_away\" or \"policy_violation\""),
                );
                4000
            }
            toml::Value::String(s) => match rfc_code(s) {
                Some(n) => n,
                None => {
                    self.err(
                        Diagnostic::new(Code::BadCloseCode, format!("`{s}` is not an RFC 6455 close code name"))
                            .label(c.code.span(), "unknown name")
                            .help("use one of: normal, going_away, policy_violation, internal_error, try_again_later, message_too_big, unsupported_data"),
                    );
                    1000
                }
            },
            _ => {
                self.err(
                    Diagnostic::new(
                        Code::BadCloseCode,
                        "close code must be a number (4000-4999) or an RFC code name",
                    )
                    .label(c.code.span(), "wrong type")
                    .help("e.g. `code = 4001` or `code = \"going_away\"`"),
                );
                4000
            }
        };
        let reason = c.reason.get_ref().clone();
        if reason.len() > 123 {
            self.err(
                Diagnostic::new(
                    Code::ReasonTooLong,
                    format!("close reason is {} bytes", reason.len()),
                )
                .label(c.reason.span(), "longer than 123 bytes")
                .help("RFC 6455 limits a close frame's reason to 123 bytes of UTF-8"),
            );
        }
        let reconnect = match c.reconnect.get_ref().as_str() {
            "never" => Reconnect::Never,
            "backoff" => Reconnect::Backoff,
            "immediate" => Reconnect::Immediate,
            "after-reauth" => Reconnect::AfterReauth,
            other => {
                self.err(
                    Diagnostic::new(
                        Code::BadReconnect,
                        format!("unknown reconnect class `{other}`"),
                    )
                    .label(c.reconnect.span(), "unknown class")
                    .help("use one of: never, backoff, immediate, after-reauth"),
                );
                Reconnect::Backoff
            }
        };
        CloseSpec {
            name: name.get_ref().clone(),
            about,
            code,
            reason,
            reconnect,
        }
    }

    fn unique_close_codes(&mut self, raw: &RawProtocol) {
        // Several names may share an RFC code (going away for shutdown and idle), but an app
        // code means one thing: clients switch on it.
        let mut seen: HashMap<i64, Range<usize>> = HashMap::new();
        for c in raw.close.values() {
            if let toml::Value::Integer(n) = c.code.get_ref() {
                if let Some(prev) = seen.insert(*n, c.code.span()) {
                    let same_reason = raw
                        .close
                        .values()
                        .filter(|o| matches!(o.code.get_ref(), toml::Value::Integer(m) if m == n))
                        .map(|o| o.reconnect.get_ref())
                        .collect::<HashSet<_>>()
                        .len()
                        == 1;
                    if !same_reason {
                        self.err(
                            Diagnostic::new(Code::BadCloseCode, format!("close code {n} is declared twice with different reconnect classes"))
                                .label(c.code.span(), "second declaration")
                                .label(prev, "first declaration")
                                .help("a client decides whether to reconnect from the code alone; give them the same reconnect class or different codes"),
                        );
                    }
                }
            }
        }
    }

    pub(super) fn close_ref(&mut self, v: &S<String>, names: &Names) -> Option<CloseId> {
        match names.closes.get(v.get_ref()) {
            Some(&id) => Some(id),
            None => {
                let mut known: Vec<&String> = names.closes.keys().collect();
                known.sort();
                self.err(
                    Diagnostic::new(
                        Code::UnknownClose,
                        format!("no close entry named `{}`", v.get_ref()),
                    )
                    .label(v.span(), "unknown close name")
                    .help(format!(
                        "declare `[close.{}]` or use one of: {}",
                        v.get_ref(),
                        known
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
                None
            }
        }
    }

    pub(super) fn close_on(
        &mut self,
        raw: &RawProtocol,
        names: &Names,
        limits: &Limits,
    ) -> CloseOn {
        let mut map = [0usize; Rejection::ALL.len()];
        let keys: HashSet<&str> = Rejection::ALL.iter().map(|r| r.key()).collect();
        for k in raw.close_on.keys() {
            if !keys.contains(k.get_ref().as_str()) {
                self.err(
                    Diagnostic::new(
                        Code::BadCloseOn,
                        format!("`{}` is not a rejection the engine makes", k.get_ref()),
                    )
                    .label(k.span(), "unknown key")
                    .help(format!(
                        "known keys: {}",
                        Rejection::ALL
                            .iter()
                            .map(|r| r.key())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
            }
        }
        for r in Rejection::ALL {
            let entry = raw.close_on.iter().find(|(k, _)| k.get_ref() == r.key());
            match entry {
                // Only needed when the per-user cap it reports is on; until then it is never
                // used and points at the rate-limit close.
                None if r == Rejection::TooManyConnections
                    && limits.max_connections_per_user == 0 =>
                {
                    map[r as usize] = map[Rejection::RateLimited as usize];
                }
                None => self.err(
                    Diagnostic::new(
                        Code::BadCloseOn,
                        format!("`[close_on]` has no entry for `{}`", r.key()),
                    )
                    .label(raw.name.span(), "in this protocol")
                    .help(format!(
                        "every rejection must name a close entry, e.g. `{} = \"<close name>\"`",
                        r.key()
                    )),
                ),
                Some((_, v)) => {
                    if let Some(id) = self.close_ref(v, names) {
                        map[r as usize] = id;
                    }
                }
            }
        }
        CloseOn { map }
    }
}

fn rfc_code(name: &str) -> Option<u16> {
    Some(match name {
        "normal" => 1000,
        "going_away" => 1001,
        "protocol_error" => 1002,
        "unsupported_data" => 1003,
        "invalid_payload" => 1007,
        "policy_violation" => 1008,
        "message_too_big" => 1009,
        "internal_error" => 1011,
        "service_restart" => 1012,
        "try_again_later" => 1013,
        _ => return None,
    })
}
