//! Checks `[[http]]` endpoints: method, path, body, rate, token minting, broadcast and response.

use std::collections::HashMap;
use std::ops::Range;

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::templates::InboundVars;
use super::{Names, Validator};

impl Validator {
    pub(super) fn http_endpoints(
        &mut self,
        raw: &[RawHttp],
        names: &Names,
        messages: &[MessageSpec],
    ) -> Vec<HttpEndpoint> {
        let mut http = Vec::new();
        let mut http_paths: HashMap<String, Range<usize>> = HashMap::new();
        for h in raw {
            self.ident("http endpoint", &h.name);
            if let Some(ep) = self.http(h, names, messages) {
                let key = format!("{:?} {}", ep.method, ep.path.source);
                if let Some(prev) = http_paths.insert(key, h.path.span()) {
                    self.err(
                        Diagnostic::new(
                            Code::BadHttpEndpoint,
                            format!("two HTTP endpoints share `{}`", h.path.get_ref()),
                        )
                        .label(h.path.span(), "second")
                        .label(prev, "first")
                        .help("give each method and path one endpoint"),
                    );
                }
                http.push(ep);
            }
        }
        http
    }

    fn http(
        &mut self,
        h: &RawHttp,
        names: &Names,
        messages: &[MessageSpec],
    ) -> Option<HttpEndpoint> {
        let about = self.about(&format!("HTTP endpoint `{}`", h.name.get_ref()), &h.about);
        let method = match h.method.get_ref().as_str() {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            other => {
                self.err(
                    Diagnostic::new(
                        Code::BadHttpEndpoint,
                        format!("unsupported method `{other}`"),
                    )
                    .label(h.method.span(), "unsupported")
                    .help("use \"GET\" or \"POST\""),
                );
                HttpMethod::Get
            }
        };
        let path = self.path_pattern(&h.path, &h.params)?;
        if ["/healthz", "/readyz", "/metrics"].contains(&path.source.as_str())
            || path.source.starts_with("/api/publish")
        {
            self.err(
                Diagnostic::new(
                    Code::BadHttpEndpoint,
                    format!("`{}` is reserved by the engine", path.source),
                )
                .label(h.path.span(), "reserved")
                .help("choose another path"),
            );
        }
        let param_names: Vec<String> = path.params.iter().map(|p| p.name.clone()).collect();
        let tokens = self.token_refs(&h.tokens, names);
        let authenticated = !h.tokens.is_empty();
        let authorize = self.authorize(&h.authorize, &param_names, names, authenticated);
        let body = h
            .body
            .as_ref()
            .and_then(|b| self.message_ref(b, names, Direction::Client));
        if body.is_some() && method == HttpMethod::Get {
            self.err(
                Diagnostic::new(Code::BadHttpEndpoint, "a GET endpoint has no body")
                    .label(h.method.span(), "GET")
                    .help("use POST, or remove `body`"),
            );
        }
        let empty = Schema::default();
        let schema = body.map(|b| &messages[b].schema).unwrap_or(&empty);
        let vars = InboundVars::Schema(schema);
        let rate = h.rate.as_ref().and_then(|r| {
            self.rate(
                r,
                "rate is out of range".into(),
                "e.g. `{ per_second = 0.5, burst = 1 }` for one request per 2 seconds",
            )
        });
        if rate.is_some() && !authenticated {
            self.err(
                Diagnostic::new(
                    Code::BadHttpEndpoint,
                    "a rate limit per caller needs an authenticated endpoint",
                )
                .label(h.name.span(), "public endpoint")
                .help("declare `tokens`, or remove `rate`"),
            );
        }
        let mint = h.mint.as_ref().and_then(|m| {
            let token = match names.tokens.get(m.token.get_ref()) {
                Some(&t) => t,
                None => {
                    self.err(
                        Diagnostic::new(
                            Code::UnknownTokenKind,
                            format!("no token kind named `{}`", m.token.get_ref()),
                        )
                        .label(m.token.span(), "unknown token kind")
                        .help("mint a token kind declared under [tokens]"),
                    );
                    return None;
                }
            };
            let ttl = *m.ttl_s.get_ref();
            if !(1..=86_400).contains(&ttl) {
                self.err(
                    Diagnostic::new(
                        Code::LimitOutOfRange,
                        format!("ttl_s = {ttl} is out of range"),
                    )
                    .label(m.ttl_s.span(), "must be 1..=86400")
                    .help("minted tokens are short-lived, e.g. 1800 (30 minutes)"),
                );
            }
            let with = m
                .with
                .as_ref()
                .map(|w| self.object_template(w, &param_names, &vars))
                .unwrap_or_default();
            Some(Mint {
                token,
                ttl_s: ttl.clamp(1, 86_400) as u64,
                with,
            })
        });
        if mint.is_some() && !authenticated {
            self.err(
                Diagnostic::new(
                    Code::BadHttpEndpoint,
                    "only an authenticated endpoint may mint tokens",
                )
                .label(h.name.span(), "public endpoint")
                .help("declare the token kinds callers present in `tokens`"),
            );
        }
        let broadcast = h.broadcast.as_ref().and_then(|a| {
            let send = self.message_ref(&a.send, names, Direction::Server)?;
            let with = a
                .with
                .as_ref()
                .map(|w| self.object_template(w, &param_names, &vars))
                .unwrap_or_default();
            let Some(room) = &a.room else {
                self.err(
                    Diagnostic::new(Code::BadHttpEndpoint, "an HTTP broadcast needs a `room`")
                        .label(a.send.span(), "no room")
                        .help("e.g. room = \"booking:{path.booking_id}\""),
                );
                return None;
            };
            let room = self.template(room, &param_names, &vars)?;
            if a.exclude_sender.is_some() {
                self.err(
                    Diagnostic::new(
                        Code::BadAction,
                        "`exclude_sender` has no meaning on an HTTP endpoint",
                    )
                    .label(a.send.span(), "here")
                    .help("an HTTP caller is not a room member; remove the key"),
                );
            }
            Some(Action {
                send,
                with,
                forward: a.forward.as_ref().map(|f| *f.get_ref()).unwrap_or(false),
                recipients: Recipients::Everyone,
                room: Some(room),
                frame: None,
            })
        });
        self.minted_allowed = mint.is_some();
        let respond = h
            .respond
            .as_ref()
            .map(|w| self.object_template(w, &param_names, &vars))
            .unwrap_or_default();
        self.minted_allowed = false;
        Some(HttpEndpoint {
            name: h.name.get_ref().clone(),
            about,
            method,
            path,
            tokens,
            authorize,
            body,
            rate,
            mint,
            broadcast,
            respond,
        })
    }
}
