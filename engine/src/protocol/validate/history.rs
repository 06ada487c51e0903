//! Checks `[history."<room kind>"]` and `[resume]`: room kinds that cannot overlap, bounds,
//! messages that enter history and can carry a position, and the resume answers' fields.

use std::collections::BTreeMap;

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::{is_ident, Names, Validator};
use crate::history::Unrecoverable;

/// Most messages (or keys) one room's history keeps.
const MAX_SIZE: i64 = 10_000;
/// A week: history is for reconnects, not an archive.
const MAX_TTL_S: i64 = 7 * 24 * 3600;
/// Room in a socket's queue for what precedes and follows a catch-up: the `101`, on-connect
/// messages, the answer.
const QUEUE_HEADROOM: usize = 16;

impl Validator {
    pub(super) fn history(
        &mut self,
        raw: &RawProtocol,
        names: &Names,
        messages: &[MessageSpec],
        endpoints: &[Endpoint],
        limits: &Limits,
    ) -> (Vec<HistorySpec>, Option<ResumeSpec>) {
        let resume = raw
            .resume
            .as_ref()
            .and_then(|r| self.resume(r, &raw.history, names, messages, endpoints));
        let mut specs: Vec<(HistorySpec, std::ops::Range<usize>)> = Vec::new();
        for (pattern, h) in &raw.history {
            let Some(spec) = self.history_kind(pattern, h, names, messages, resume.as_ref()) else {
                continue;
            };
            // A catch-up is queued at once, behind the handshake and on-connect messages: a
            // larger one would close the socket as a slow consumer every time it resumes.
            let at_once = if spec.latest_by.is_some() {
                spec.size
            } else {
                spec.max_catch_up
            };
            if at_once + QUEUE_HEADROOM > limits.queue_max_messages {
                let (key, span) = match (&spec.latest_by, &h.max_catch_up) {
                    (None, Some(m)) => ("max_catch_up", m.span()),
                    _ => ("size", h.size.span()),
                };
                self.err(
                    Diagnostic::new(
                        Code::LimitOutOfRange,
                        format!("history `{}` may send {at_once} messages at once, more than a socket's queue holds", spec.pattern),
                    )
                    .label(span, format!("`{key}` = {at_once}"))
                    .help(format!(
                        "keep `{key}` at most `[limits] queue_max_messages` ({}) - {QUEUE_HEADROOM}, or raise `queue_max_messages`",
                        limits.queue_max_messages
                    )),
                );
            }
            for (other, span) in &specs {
                if overlap(&spec, other) {
                    self.err(
                        Diagnostic::new(
                            Code::BadHistory,
                            format!(
                                "room kinds `{}` and `{}` overlap",
                                spec.pattern, other.pattern
                            ),
                        )
                        .label(pattern.span(), "this kind")
                        .label(span.clone(), "overlaps this one")
                        .help("a room keeps one history: make the patterns disjoint"),
                    );
                }
            }
            specs.push((spec, pattern.span()));
        }
        if let (Some((first, _)), None) = (raw.history.iter().next(), &raw.resume) {
            self.err(
                Diagnostic::new(Code::BadResume, "history is declared without `[resume]`")
                    .label(first.span(), "room kind with history")
                    .help("add `[resume]` with `offset_field`, `epoch_field`, `recovered`, `not_recovered` and `reason_field`: clients need positions to resume from"),
            );
        }
        (specs.into_iter().map(|(s, _)| s).collect(), resume)
    }

    fn history_kind(
        &mut self,
        pattern: &S<String>,
        h: &RawHistory,
        names: &Names,
        messages: &[MessageSpec],
        resume: Option<&ResumeSpec>,
    ) -> Option<HistorySpec> {
        let what = format!("history `{}`", pattern.get_ref());
        let about = self.about(&what, &h.about);
        let p = pattern.get_ref();
        let star = p.find('*');
        let bad_pattern = p.is_empty()
            || star.is_some_and(|i| i + 1 != p.len())
            || p.chars().any(|c| c.is_whitespace() || c == '{' || c == '}');
        if bad_pattern {
            self.err(
                Diagnostic::new(Code::BadHistory, format!("`{p}` is not a room kind"))
                    .label(pattern.span(), "bad pattern")
                    .help("write a room name (`lobby`) or a prefix ending in one `*` (`booking:*`), without spaces or braces"),
            );
        }
        let size = self.limit(&Some(h.size.clone()), "size", 1, MAX_SIZE, 100);
        let ttl_s = self.limit(&Some(h.ttl_s.clone()), "ttl_s", 1, MAX_TTL_S, 3600);
        let max_catch_up = self.limit(&h.max_catch_up, "max_catch_up", 1, size, size);
        if h.messages.get_ref().is_empty() {
            self.err(
                Diagnostic::new(Code::BadHistory, format!("{what} keeps no message"))
                    .label(h.messages.span(), "empty list")
                    .help("list the server messages that enter this history, e.g. `messages = [\"booking_status\"]`"),
            );
        }
        let mut wire_types = Vec::new();
        for name in h.messages.get_ref() {
            let Some(id) = self.message_ref(name, names, Direction::Server) else {
                continue;
            };
            let m = &messages[id];
            if let Some(r) = resume {
                for f in [&r.offset_field, &r.epoch_field] {
                    if m.schema.fields.iter().any(|x| &x.name == f) {
                        self.err(
                            Diagnostic::new(Code::BadHistory, format!("`{}` declares the position field `{f}` itself", m.name))
                                .label(name.span(), "enters history")
                                .help(format!("Beacon writes `{f}` into every message that enters history: rename the message's field or `[resume]`'s")),
                        );
                    }
                }
            }
            if let Some(key) = &h.latest_by {
                let field = m.schema.fields.iter().find(|x| &x.name == key.get_ref());
                let keyable = field.is_some_and(|f| {
                    f.required && matches!(f.ty, FieldType::String | FieldType::Id | FieldType::Int)
                });
                if !keyable {
                    self.err(
                        Diagnostic::new(Code::BadHistory, format!("`{}` has no required string, id or int field `{}` to key latest values by", m.name, key.get_ref()))
                            .label(key.span(), "key field")
                            .label(name.span(), "this message")
                            .help("declare the field on every message of a latest-value room, required, of type \"string\", \"id\" or \"int\""),
                    );
                }
            }
            wire_types.push(m.wire_type.clone());
        }
        (!bad_pattern).then(|| HistorySpec {
            pattern: p.clone(),
            about,
            prefix: p.trim_end_matches('*').to_owned(),
            wildcard: star.is_some(),
            size: size as usize,
            ttl_ms: ttl_s as u64 * 1000,
            max_catch_up: max_catch_up as usize,
            wire_types,
            latest_by: h.latest_by.as_ref().map(|k| k.get_ref().clone()),
        })
    }

    fn resume(
        &mut self,
        raw: &S<RawResume>,
        history: &BTreeMap<S<String>, RawHistory>,
        names: &Names,
        messages: &[MessageSpec],
        endpoints: &[Endpoint],
    ) -> Option<ResumeSpec> {
        let r = raw.get_ref();
        let about = self.about("`[resume]`", &r.about);
        if history.is_empty() {
            self.err(
                Diagnostic::new(
                    Code::BadResume,
                    "`[resume]` is declared but no room kind keeps history",
                )
                .label(raw.span(), "nothing to resume")
                .help("declare `[history.\"<room kind>\"]`, or remove `[resume]`"),
            );
        }
        let mut ok = true;
        for f in [&r.offset_field, &r.epoch_field, &r.reason_field] {
            if !is_ident(f.get_ref()) || f.get_ref() == "type" {
                ok = false;
                self.err(
                    Diagnostic::new(
                        Code::BadResume,
                        format!("`{}` cannot be a position field", f.get_ref()),
                    )
                    .label(f.span(), "bad field name")
                    .help("use a lowercase identifier other than `type`, e.g. `offset` or `epoch`"),
                );
            }
        }
        if r.offset_field.get_ref() == r.epoch_field.get_ref() {
            ok = false;
            self.err(
                Diagnostic::new(Code::BadResume, "the offset and the epoch share one field")
                    .label(r.epoch_field.span(), "same as `offset_field`")
                    .help("give the offset and the epoch fields of their own"),
            );
        }
        let offset_param = r.offset_param.as_ref().unwrap_or(&r.offset_field);
        let epoch_param = r.epoch_param.as_ref().unwrap_or(&r.epoch_field);
        if offset_param.get_ref() == epoch_param.get_ref() || offset_param.get_ref().is_empty() {
            ok = false;
            self.err(
                Diagnostic::new(
                    Code::BadResume,
                    "the offset and the epoch share one query parameter",
                )
                .label(epoch_param.span(), "same as the offset's")
                .help("set `offset_param` and `epoch_param` to two different non-empty names"),
            );
        }
        for ep in endpoints {
            for src in &ep.token_sources {
                if let TokenSource::Query(q) = src {
                    for p in [offset_param, epoch_param] {
                        if p.get_ref() == q {
                            ok = false;
                            self.err(
                                Diagnostic::new(Code::BadResume, format!("query parameter `{q}` carries both a position and endpoint `{}`'s token", ep.name))
                                    .label(p.span(), "position parameter")
                                    .help("name the position's query parameters differently, e.g. `offset_param = \"since\"`"),
                            );
                        }
                    }
                }
            }
        }
        let recovered = self.message_ref(&r.recovered, names, Direction::Server);
        let not_recovered = self.message_ref(&r.not_recovered, names, Direction::Server);
        for (id, name) in [(recovered, &r.recovered), (not_recovered, &r.not_recovered)] {
            let Some(m) = id.map(|i| &messages[i]) else {
                ok = false;
                continue;
            };
            let mut need = vec![
                (&r.offset_field, FieldType::Int, "int"),
                (&r.epoch_field, FieldType::String, "string"),
            ];
            let is_reason_carrier = std::ptr::eq(name, &r.not_recovered);
            if is_reason_carrier {
                need.push((&r.reason_field, FieldType::String, "string"));
            }
            for (f, ty, ty_name) in need {
                let is_reason = is_reason_carrier && std::ptr::eq(f, &r.reason_field);
                let field = m.schema.fields.iter().find(|x| &x.name == f.get_ref());
                if !field.is_some_and(|x| x.ty == ty) {
                    ok = false;
                    self.err(
                        Diagnostic::new(Code::BadResume, format!("`{}` has no {ty_name} field `{}`", m.name, f.get_ref()))
                            .label(name.span(), "resume answer")
                            .help(format!("declare `fields.{} = {{ type = \"{ty_name}\" }}` on `[messages.{}]`: Beacon fills it in", f.get_ref(), m.name)),
                    );
                }
                let missing: Vec<&str> = Unrecoverable::ALL
                    .iter()
                    .map(|u| u.code())
                    .filter(|c| {
                        is_reason
                            && field.is_some_and(|x| {
                                !x.enum_values.is_empty() && !x.enum_values.iter().any(|v| v == c)
                            })
                    })
                    .collect();
                if !missing.is_empty() {
                    ok = false;
                    self.err(
                        Diagnostic::new(
                            Code::BadResume,
                            format!("`{}.{}` cannot carry every reason", m.name, f.get_ref()),
                        )
                        .label(name.span(), "resume answer")
                        .help(format!(
                            "add {} to its `enum`, or drop the `enum`",
                            missing
                                .iter()
                                .map(|c| format!("\"{c}\""))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    );
                }
            }
        }
        let (Some(recovered), Some(not_recovered), true) = (recovered, not_recovered, ok) else {
            return None;
        };
        Some(ResumeSpec {
            about,
            offset_field: r.offset_field.get_ref().clone(),
            epoch_field: r.epoch_field.get_ref().clone(),
            offset_param: offset_param.get_ref().clone(),
            epoch_param: epoch_param.get_ref().clone(),
            recovered,
            not_recovered,
            reason_field: r.reason_field.get_ref().clone(),
        })
    }
}

/// Whether some room name matches both kinds.
fn overlap(a: &HistorySpec, b: &HistorySpec) -> bool {
    match (a.wildcard, b.wildcard) {
        (true, true) => a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix),
        (true, false) => b.prefix.starts_with(&a.prefix),
        (false, true) => a.prefix.starts_with(&b.prefix),
        (false, false) => a.prefix == b.prefix,
    }
}
