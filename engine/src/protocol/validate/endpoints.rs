//! Checks `[[endpoints]]`: path patterns and parameters, token sources, rooms, origins, and the
//! messages each endpoint accepts and sends.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::templates::InboundVars;
use super::{is_ident, Names, Validator};

impl Validator {
    pub(super) fn endpoints(
        &mut self,
        raw: &RawProtocol,
        names: &Names,
        messages: &[MessageSpec],
    ) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        let mut endpoint_names: HashMap<String, Range<usize>> = HashMap::new();
        let mut paths: HashMap<String, Range<usize>> = HashMap::new();
        for e in &raw.endpoints {
            self.ident("endpoint", &e.name);
            if let Some(prev) = endpoint_names.insert(e.name.get_ref().clone(), e.name.span()) {
                self.err(
                    Diagnostic::new(
                        Code::DuplicateName,
                        format!("duplicate endpoint name `{}`", e.name.get_ref()),
                    )
                    .label(e.name.span(), "second definition")
                    .label(prev, "first definition")
                    .help("endpoint names label metrics and hook calls; make them unique"),
                );
            }
            if let Some(ep) = self.endpoint(e, names, messages) {
                let shape = ep
                    .path
                    .segments
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(l) => l.clone(),
                        Segment::Param(_) => "{}".into(),
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                if let Some(prev) = paths.insert(shape, e.path.span()) {
                    self.err(
                        Diagnostic::new(
                            Code::BadPath,
                            format!("path `{}` overlaps an earlier endpoint", e.path.get_ref()),
                        )
                        .label(e.path.span(), "never reached")
                        .label(prev, "matches first")
                        .help("two endpoints cannot have the same path shape"),
                    );
                }
                endpoints.push(ep);
            }
        }
        if raw.endpoints.is_empty() {
            self.err(
                Diagnostic::new(Code::Syntax, "the protocol declares no endpoints")
                    .label(raw.name.span(), "in this protocol")
                    .help("add at least one `[[endpoints]]` table"),
            );
        }
        endpoints
    }

    fn endpoint(
        &mut self,
        e: &RawEndpoint,
        names: &Names,
        messages: &[MessageSpec],
    ) -> Option<Endpoint> {
        let about = self.about(&format!("endpoint `{}`", e.name.get_ref()), &e.about);
        let path = self.path_pattern(&e.path, &e.params)?;
        let param_names: Vec<String> = path.params.iter().map(|p| p.name.clone()).collect();
        let tokens = self.token_refs(&e.tokens, names);
        let mut token_sources = Vec::new();
        for s in &e.token_sources {
            let src = s.get_ref();
            let parsed = if let Some(q) = src.strip_prefix("query:") {
                (!q.is_empty()).then(|| TokenSource::Query(q.to_owned()))
            } else if src == "header:authorization" {
                Some(TokenSource::Bearer)
            } else if let Some(m) = src.strip_prefix("subprotocol:") {
                (!m.is_empty()).then(|| TokenSource::Subprotocol(m.to_owned()))
            } else if let Some(m) = src.strip_prefix("message:") {
                (!m.is_empty()).then(|| TokenSource::FirstMessage(m.to_owned()))
            } else {
                None
            };
            match parsed {
                Some(p) => token_sources.push(p),
                None => self.err(
                    Diagnostic::new(Code::BadTokenSource, format!("unknown token source `{src}`"))
                        .label(s.span(), "unknown source")
                        .help("use \"query:<name>\", \"header:authorization\", \"subprotocol:<marker>\" or \"message:<type>\""),
                ),
            }
        }
        if tokens.is_empty() != token_sources.is_empty() {
            let span = e
                .tokens
                .first()
                .map(|t| t.span())
                .or(e.token_sources.first().map(|t| t.span()))
                .unwrap_or(e.name.span());
            self.err(
                Diagnostic::new(Code::BadTokenSource, "`tokens` and `token_sources` must both be set or both be empty")
                    .label(span, "only one is set")
                    .help("an endpoint either authenticates (token kinds and where to find them) or is public"),
            );
        }
        let authenticated = !tokens.is_empty();
        let room = self.template(&e.room, &param_names, &InboundVars::None)?;
        if !authenticated
            && room
                .pieces
                .iter()
                .any(|p| matches!(p, Piece::Var(Var::UserId | Var::Claim(_))))
        {
            self.err(
                Diagnostic::new(
                    Code::BadTemplate,
                    "the room uses the caller's identity but the endpoint is public",
                )
                .label(e.room.span(), "needs a token")
                .help(
                    "declare `tokens` and `token_sources`, or build the room from path parameters",
                ),
            );
        }
        let mut inbound = Vec::new();
        let mut inbound_by_wire = HashMap::new();
        for m in &e.inbound {
            if let Some(id) = self.message_ref(m, names, Direction::Client) {
                inbound.push(id);
                inbound_by_wire.insert(messages[id].wire_type.clone(), id);
            }
        }
        let mut outbound = Vec::new();
        for m in &e.outbound {
            if let Some(id) = self.message_ref(m, names, Direction::Server) {
                outbound.push(id);
            }
        }
        let mut on_connect = Vec::new();
        for s in &e.on_connect {
            if let Some(send) = self.message_ref(&s.send, names, Direction::Server) {
                let with = s
                    .with
                    .as_ref()
                    .map(|w| self.object_template(w, &param_names, &InboundVars::None))
                    .unwrap_or_default();
                on_connect.push(SendSpec { send, with });
            }
        }
        let authorize = self.authorize(&e.authorize, &param_names, names, authenticated);
        let missing_params = e.missing_params.as_ref().and_then(|m| {
            if path.params.is_empty() {
                self.err(
                    Diagnostic::new(
                        Code::BadParameter,
                        "`missing_params` on a path without parameters",
                    )
                    .label(m.span(), "never used")
                    .help("remove the key"),
                );
            }
            self.close_ref(m, names)
        });
        let presence = |v: &mut Self, list: &[RawSend]| -> Vec<SendSpec> {
            list.iter()
                .filter_map(|s| {
                    let send = v.message_ref(&s.send, names, Direction::Server)?;
                    let with = s
                        .with
                        .as_ref()
                        .map(|w| v.object_template(w, &param_names, &InboundVars::None))
                        .unwrap_or_default();
                    Some(SendSpec { send, with })
                })
                .collect()
        };
        let on_join = presence(self, &e.on_join);
        let on_leave = presence(self, &e.on_leave);
        let online = e.online.as_ref().and_then(|o| {
            let send = self.message_ref(&o.send, names, Direction::Server)?;
            let spec = &messages[send];
            if !spec
                .schema
                .fields
                .iter()
                .any(|f| &f.name == o.user_field.get_ref())
            {
                self.err(
                    Diagnostic::new(
                        Code::BadField,
                        format!(
                            "`{}` is not a field of `{}`",
                            o.user_field.get_ref(),
                            spec.name
                        ),
                    )
                    .label(o.user_field.span(), "not declared")
                    .help(
                        "name the field of the message that carries the user id, e.g. \"user_id\"",
                    ),
                );
            }
            let with = o
                .with
                .as_ref()
                .map(|w| self.object_template(w, &param_names, &InboundVars::None))
                .unwrap_or_default();
            Some(OnlineSpec {
                send,
                user_field: o.user_field.get_ref().clone(),
                with,
            })
        });
        if online.is_some() && on_join.is_empty() && on_leave.is_empty() {
            if let Some(o) = &e.online {
                self.err(
                    Diagnostic::new(Code::BadAction, "`online` without `on_join` or `on_leave`")
                        .label(o.send.span(), "no presence to list")
                        .help("presence is counted for endpoints that announce it; add on_join/on_leave"),
                );
            }
        }
        let origins = e.origins.as_ref().map(|os| {
            os.iter()
                .filter_map(|o| {
                    let s = o.get_ref();
                    let ok = (s.starts_with("http://") || s.starts_with("https://"))
                        && !s.trim_start_matches("https://").trim_start_matches("http://").contains('/');
                    if ok {
                        Some(s.to_ascii_lowercase())
                    } else {
                        self.err(
                            Diagnostic::new(Code::BadParameter, format!("`{s}` is not an origin"))
                                .label(o.span(), "not scheme://host[:port]")
                                .help("an origin is a scheme, host and optional port with no path, e.g. \"https://app.example.com\""),
                        );
                        None
                    }
                })
                .collect()
        });
        let untyped_inbound = e.untyped_inbound.as_ref().and_then(|u| {
            let id = self.message_ref(u, names, Direction::Client)?;
            if !inbound.contains(&id) {
                self.err(
                    Diagnostic::new(
                        Code::UnknownMessage,
                        format!("`{}` is not in this endpoint's inbound list", u.get_ref()),
                    )
                    .label(u.span(), "not accepted here")
                    .help("add it to `inbound`"),
                );
            }
            Some(id)
        });
        let echo = e.echo.as_ref().map(|x| *x.get_ref()).unwrap_or(false);
        let refresh = e.refresh.as_ref().and_then(|r| {
            if !authenticated {
                self.err(
                    Diagnostic::new(Code::BadTokenSource, "`refresh` on an endpoint without tokens")
                        .label(r.span(), "nothing to refresh")
                        .help("declare `tokens` and `token_sources`, or remove `refresh`"),
                );
                return None;
            }
            if inbound_by_wire.contains_key(r.get_ref()) {
                self.err(
                    Diagnostic::new(Code::BadTokenSource, format!("`refresh = \"{}\"` collides with an inbound message", r.get_ref()))
                        .label(r.span(), "ambiguous")
                        .help("the refresh message is handled by the engine; do not declare it as an inbound message"),
                );
                return None;
            }
            Some(r.get_ref().clone())
        });
        if echo && !inbound.is_empty() {
            self.err(
                Diagnostic::new(
                    Code::BadAction,
                    "an echo endpoint cannot declare inbound messages",
                )
                .label(e.name.span(), "echo endpoint")
                .help("echo endpoints return every message unchanged; remove `inbound` or `echo`"),
            );
        }
        for src in &token_sources {
            if let TokenSource::FirstMessage(wire) = src {
                if inbound_by_wire.contains_key(wire) {
                    self.err(
                        Diagnostic::new(Code::BadTokenSource, format!("`message:{wire}` collides with an inbound message of the same type"))
                            .label(e.token_sources.iter().find(|s| s.get_ref().ends_with(wire.as_str())).map(|s| s.span()).unwrap_or(e.name.span()), "ambiguous")
                            .help("the authentication message is handled by the engine; do not declare it as an inbound message"),
                    );
                }
            }
        }
        Some(Endpoint {
            name: e.name.get_ref().clone(),
            about,
            path,
            tokens,
            token_sources,
            room,
            inbound,
            outbound,
            on_connect,
            authorize,
            origins,
            type_field: e
                .type_field
                .as_ref()
                .map(|t| t.get_ref().clone())
                .unwrap_or_else(|| "type".into()),
            untyped_inbound,
            inbound_by_wire,
            echo,
            refresh,
            missing_params,
            on_join,
            on_leave,
            online,
        })
    }

    pub(super) fn path_pattern(
        &mut self,
        path: &S<String>,
        declared: &BTreeMap<S<String>, RawParam>,
    ) -> Option<PathPattern> {
        let src = path.get_ref();
        let bad = |v: &mut Self, why: &str| {
            v.err(
                Diagnostic::new(Code::BadPath, format!("invalid path pattern: {why}"))
                    .label(path.span(), why.to_owned())
                    .help("paths look like \"/ws/bookings/{booking_id}/\": literal segments and whole-segment {parameters}"),
            );
        };
        if !src.starts_with('/') || src.contains('?') || src.contains("//") {
            bad(
                self,
                "must start with `/` and contain no `?` or empty segments",
            );
            return None;
        }
        let trailing_slash = src.len() > 1 && src.ends_with('/');
        let body = src.trim_start_matches('/').trim_end_matches('/');
        let mut segments = Vec::new();
        let mut params = Vec::new();
        let mut ok = true;
        for seg in body.split('/').filter(|s| !s.is_empty()) {
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if !is_ident(inner) {
                    bad(self, "parameter names are lowercase identifiers");
                    ok = false;
                    continue;
                }
                if params.iter().any(|p: &ParamSpec| p.name == inner) {
                    bad(self, "a parameter appears twice");
                    ok = false;
                    continue;
                }
                let decl = declared.iter().find(|(k, _)| k.get_ref() == inner);
                let (ty, max_length) = match decl {
                    None => (ParamType::String, 128),
                    Some((_, p)) => {
                        let ty = match p.ty.get_ref().as_str() {
                            "string" => ParamType::String,
                            "int" => ParamType::Int,
                            other => {
                                self.err(
                                    Diagnostic::new(
                                        Code::BadParameter,
                                        format!("unknown parameter type `{other}`"),
                                    )
                                    .label(p.ty.span(), "unknown type")
                                    .help("use \"string\" or \"int\""),
                                );
                                ParamType::String
                            }
                        };
                        let ml = match &p.max_length {
                            Some(m) if !(1..=1024).contains(m.get_ref()) => {
                                self.err(
                                    Diagnostic::new(
                                        Code::BadParameter,
                                        "parameter max_length must be 1-1024",
                                    )
                                    .label(m.span(), "out of range")
                                    .help("path parameters are short identifiers"),
                                );
                                128
                            }
                            Some(m) => *m.get_ref() as usize,
                            None => 128,
                        };
                        (ty, ml)
                    }
                };
                segments.push(Segment::Param(params.len()));
                params.push(ParamSpec {
                    name: inner.to_owned(),
                    ty,
                    max_length,
                });
            } else if seg.contains('{') || seg.contains('}') {
                bad(self, "a parameter must be a whole segment");
                ok = false;
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        for k in declared.keys() {
            if !params.iter().any(|p| &p.name == k.get_ref()) {
                self.err(
                    Diagnostic::new(
                        Code::BadParameter,
                        format!("parameter `{}` does not appear in the path", k.get_ref()),
                    )
                    .label(k.span(), "not in the path")
                    .help(format!(
                        "add `{{{}}}` to the path or remove this entry",
                        k.get_ref()
                    )),
                );
            }
        }
        ok.then_some(PathPattern {
            source: src.clone(),
            segments,
            params,
            trailing_slash,
        })
    }
}
