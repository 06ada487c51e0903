//! Checks `[limits]`: each bound within its range, the bounds consistent with each other, and
//! per-message rates on messages clients send.

use std::collections::HashMap;

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::{Names, Validator};

const MAX_BYTES: i64 = 16 * 1024 * 1024;

impl Validator {
    pub(super) fn limit(
        &mut self,
        v: &Option<S<i64>>,
        name: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> i64 {
        match v {
            None => default,
            Some(s) => {
                let x = *s.get_ref();
                if x < min || x > max {
                    self.err(
                        Diagnostic::new(
                            Code::LimitOutOfRange,
                            format!("limit `{name}` = {x} is out of range"),
                        )
                        .label(s.span(), format!("must be between {min} and {max}"))
                        .help(format!("the default is {default}")),
                    );
                    default
                } else {
                    x
                }
            }
        }
    }

    pub(super) fn limits(&mut self, l: Option<&RawLimits>) -> Limits {
        let none = None;
        let g = |f: fn(&RawLimits) -> &Option<S<i64>>| l.map(f).unwrap_or(&none);
        let max_frame = self.limit(
            g(|l| &l.max_frame_bytes),
            "max_frame_bytes",
            125,
            MAX_BYTES,
            65536,
        );
        let max_msg = self.limit(
            g(|l| &l.max_message_bytes),
            "max_message_bytes",
            125,
            MAX_BYTES,
            65536,
        );
        let lim = Limits {
            max_frame_bytes: max_frame as usize,
            max_message_bytes: max_msg as usize,
            handshake_timeout_ms: self.limit(
                g(|l| &l.handshake_timeout_ms),
                "handshake_timeout_ms",
                100,
                120_000,
                5000,
            ) as u64,
            auth_timeout_ms: self.limit(
                g(|l| &l.auth_timeout_ms),
                "auth_timeout_ms",
                100,
                120_000,
                5000,
            ) as u64,
            idle_timeout_ms: self.limit(
                g(|l| &l.idle_timeout_ms),
                "idle_timeout_ms",
                1000,
                3_600_000,
                90_000,
            ) as u64,
            ping_interval_ms: self.limit(
                g(|l| &l.ping_interval_ms),
                "ping_interval_ms",
                100,
                3_600_000,
                30_000,
            ) as u64,
            queue_max_messages: self.limit(
                g(|l| &l.queue_max_messages),
                "queue_max_messages",
                1,
                1_000_000,
                1024,
            ) as usize,
            queue_max_bytes: self.limit(
                g(|l| &l.queue_max_bytes),
                "queue_max_bytes",
                1024,
                1 << 30,
                1 << 20,
            ) as usize,
            max_errors: self.limit(g(|l| &l.max_errors), "max_errors", 1, 1_000_000, 20) as u32,
            max_connections_per_user: self.limit(
                g(|l| &l.max_connections_per_user),
                "max_connections_per_user",
                0,
                100_000,
                0,
            ) as usize,
        };
        if let Some(l) = l {
            if lim.ping_interval_ms >= lim.idle_timeout_ms {
                if let (Some(p), Some(i)) = (&l.ping_interval_ms, &l.idle_timeout_ms) {
                    self.err(
                        Diagnostic::new(Code::LimitOutOfRange, "ping interval must be shorter than the idle timeout")
                            .label(p.span(), "ping interval")
                            .label(i.span(), "idle timeout")
                            .help("a healthy client answers pings; the idle timeout must leave room for at least one"),
                    );
                }
            }
            if lim.max_frame_bytes > lim.max_message_bytes {
                if let Some(f) = &l.max_frame_bytes {
                    self.err(
                        Diagnostic::new(Code::LimitOutOfRange, "max_frame_bytes exceeds max_message_bytes")
                            .label(f.span(), "larger than a whole message may be")
                            .help("a frame is part of a message; lower max_frame_bytes or raise max_message_bytes"),
                    );
                }
            }
        }
        lim
    }

    /// Token buckets for client messages, keyed by message.
    pub(super) fn rates(
        &mut self,
        limits_raw: Option<&RawLimits>,
        names: &Names,
    ) -> HashMap<MsgId, Rate> {
        let mut rates: HashMap<MsgId, Rate> = HashMap::new();
        if let Some(l) = limits_raw {
            for (name, r) in &l.rate {
                match names.messages.get(name.get_ref()) {
                    Some(&(id, dir)) if dir.inbound() => {
                        let out_of_range = format!("rate for `{}` is out of range", name.get_ref());
                        if let Some(rate) =
                            self.rate(r, out_of_range, "e.g. `{ per_second = 2.0, burst = 10 }`")
                        {
                            rates.insert(id, rate);
                        }
                    }
                    Some(_) => self.err(
                        Diagnostic::new(Code::WrongDirection, format!("rate limit on `{}`, which clients cannot send", name.get_ref()))
                            .label(name.span(), "server-only message")
                            .help("rate limits apply to client messages (direction \"client\" or \"both\")"),
                    ),
                    None => self.unknown_message(name, names),
                }
            }
        }
        rates
    }

    /// A token bucket; `out_of_range` and `example` name where it is declared.
    pub(super) fn rate(
        &mut self,
        r: &RawRate,
        out_of_range: String,
        example: &str,
    ) -> Option<Rate> {
        let ps = *r.per_second.get_ref();
        let burst = *r.burst.get_ref();
        if !(ps > 0.0 && ps <= 1e6 && (1..=1_000_000).contains(&burst)) {
            self.err(
                Diagnostic::new(Code::LimitOutOfRange, out_of_range)
                    .label(r.per_second.span(), "per_second must be in (0, 1e6]")
                    .label(r.burst.span(), "burst must be in 1..=1000000")
                    .help(example),
            );
            return None;
        }
        Some(Rate {
            per_second: ps,
            burst: burst as u32,
        })
    }
}
