//! Raw protocol -> frozen [`Protocol`], collecting every problem with a span, a stable code and
//! a hint. Plain code: no I/O.
//!
//! Checks the top level (version, names, descriptions) and the order everything else is checked
//! in; each part of the file has its module, shaped like [`super::raw`].

mod channel_layer;
mod closes;
mod endpoints;
mod forwards;
mod geo;
mod history;
mod http;
mod limits;
mod messages;
mod rules;
mod templates;
mod tokens;

use std::collections::HashMap;

use serde_json::Value;

use super::code::Code;
use super::diag::Diagnostic;
use super::model::*;
use super::raw::*;
use crate::message::Frame;

/// Parses and validates protocol text. Every problem is reported, not just the first.
pub fn load_protocol(src: &str) -> Result<Protocol, Vec<Diagnostic>> {
    let raw: RawProtocol = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => return Err(vec![toml_error(Code::Syntax, &e)]),
    };
    let mut v = Validator::default();
    let mut p = v.protocol(raw);
    if v.diags.is_empty() {
        compile_frames(&mut p);
        Ok(p)
    } else {
        Err(v.diags)
    }
}

/// Compiles every action that does not forward the client's fields into a [`Frame`], once,
/// so a reply or broadcast is spliced from bytes instead of built through a `Map`.
fn compile_frames(p: &mut Protocol) {
    let frames: Vec<_> = p
        .actions()
        .map(|a| {
            (!a.forward)
                .then(|| Frame::compile(&p.messages[a.send], &a.with))
                .flatten()
        })
        .collect();
    for (a, f) in p.actions_mut().zip(frames) {
        a.frame = f;
    }
}

/// A TOML syntax or shape error as a diagnostic: [`Code::Syntax`] in a protocol file,
/// [`Code::ConfigSyntax`] in the config.
pub fn toml_error(code: Code, e: &toml::de::Error) -> Diagnostic {
    let span = e.span().unwrap_or(0..0);
    let msg = e.message().trim().to_owned();
    let help = if msg.contains("unknown field") {
        "remove the key or fix its spelling; the schema is closed"
    } else if msg.contains("missing field") {
        "add the required key"
    } else {
        "fix the TOML at this location"
    };
    Diagnostic::new(code, msg).label(span, "here").help(help)
}

#[derive(Default)]
struct Validator {
    diags: Vec<Diagnostic>,
    hook_names: HashMap<String, HookId>,
    /// Hooks are awaited at handshakes and HTTP requests only, never per message.
    hooks_allowed: bool,
    /// `{minted}` exists only in an HTTP endpoint that mints a token.
    minted_allowed: bool,
    /// Which variables the template being validated may use; see [`GeoScope`].
    geo_scope: GeoScope,
    /// Every claim a template or condition names; see [`Protocol::claims_read`].
    claims_read: std::collections::BTreeSet<String>,
    /// While a client message's actions are validated: the endpoints that accept it, with
    /// their path parameters, which `{path.*}` in those actions reads by name.
    action_endpoints: Option<Vec<(String, Vec<String>)>>,
    /// Each client message's accepting endpoints (name, path parameters), from the raw file.
    accepted_on: HashMap<String, Vec<(String, Vec<String>)>>,
}

/// Geo templates are rendered on a pool's owner shard, away from any connection, so there
/// only `{geo.*}`, `{now.*}` and `{gen.id}` (and, for dispatch, `{in.*}` of the body) exist.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum GeoScope {
    #[default]
    Off,
    Only,
    WithBody,
}

#[derive(Default)]
struct Names {
    messages: HashMap<String, (MsgId, Direction)>,
    closes: HashMap<String, CloseId>,
    tokens: HashMap<String, TokenId>,
    pools: HashMap<String, usize>,
    /// Each pool's key template as written, parsed again against each message that uses it.
    pool_keys: Vec<S<String>>,
    dispatches: HashMap<String, usize>,
    forwards: HashMap<String, ForwardId>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 64
}

impl Validator {
    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn about(&mut self, what: &str, about: &S<String>) -> String {
        if about.get_ref().trim().is_empty() {
            self.err(
                Diagnostic::new(Code::EmptyAbout, format!("{what} has an empty `about`"))
                    .label(about.span(), "empty description")
                    .help(
                        "say in one sentence what this is for; it is the documentation users read",
                    ),
            );
        }
        about.get_ref().trim().to_owned()
    }

    fn ident(&mut self, what: &str, name: &S<String>) {
        if !is_ident(name.get_ref()) {
            self.err(
                Diagnostic::new(Code::BadIdentifier, format!("{what} name `{}` is not a valid identifier", name.get_ref()))
                    .label(name.span(), "invalid name")
                    .help("use lowercase letters, digits and `_`, starting with a letter, at most 64 characters"),
            );
        }
    }

    fn protocol(&mut self, raw: RawProtocol) -> Protocol {
        if *raw.version.get_ref() != 1 {
            self.err(
                Diagnostic::new(
                    Code::Version,
                    format!("unsupported protocol version {}", raw.version.get_ref()),
                )
                .label(raw.version.span(), "unsupported")
                .help("this Beacon understands `version = 1`"),
            );
        }
        self.ident("protocol", &raw.name);
        let about = self.about("the protocol", &raw.about);

        // Whatever is referred to by name is named before any body that refers to it.
        let (closes, close_names) = self.closes(&raw);
        let hooks = self.hooks(&raw.hooks, &close_names);
        let mut names = Names {
            closes: close_names,
            ..Names::default()
        };
        if let Some(g) = &raw.geo {
            self.geo_names(g, &mut names);
        }
        names.messages = self.message_names(&raw.messages);
        let has_error_reply = raw.errors.as_ref().is_some_and(|e| e.reply.is_some());
        let (forwards, forward_names) = self.forwards(&raw.forwards, &names, has_error_reply);
        names.forwards = forward_names;
        let limits = self.limits(raw.limits.as_ref());
        let rates = self.rates(raw.limits.as_ref(), &names);
        let tokens = self.tokens(&raw.tokens, &mut names);
        self.accepted_on = accepting_endpoints(&raw.endpoints);
        let messages = self.messages(&raw.messages, &names, &rates);
        let endpoints = self.endpoints(&raw, &names, &messages);
        let close_on = self.close_on(&raw, &names, &limits);

        let error_reply = raw
            .errors
            .as_ref()
            .and_then(|e| e.reply.as_ref())
            .and_then(|r| self.message_ref(r, &names, Direction::Server));
        let http = self.http_endpoints(&raw.http, &names, &messages);
        let geo = match &raw.geo {
            Some(g) => {
                let spec = self.geo_spec(g, &names, &messages);
                self.dispatch_paths(g, &raw.http);
                spec
            }
            None => GeoSpec::default(),
        };

        let (history, resume) = self.history(&raw, &names, &messages, &endpoints, &limits);
        let channel_layer = raw
            .channel_layer
            .as_ref()
            .map(|c| self.channel_layer(c, &names));

        let server_by_wire = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.direction.outbound())
            .map(|(i, m)| (m.wire_type.clone(), i))
            .collect();

        Protocol {
            name: raw.name.get_ref().clone(),
            about,
            limits,
            tokens,
            endpoints,
            messages,
            closes,
            close_on,
            error_reply,
            server_by_wire,
            hooks,
            http,
            forwards,
            geo,
            claims_read: std::mem::take(&mut self.claims_read),
            history,
            resume,
            channel_layer,
        }
    }
}

/// Message name -> the endpoints (name, path parameter names) whose `inbound` or
/// `untyped_inbound` names it.
fn accepting_endpoints(endpoints: &[RawEndpoint]) -> HashMap<String, Vec<(String, Vec<String>)>> {
    let mut by_msg: HashMap<String, Vec<(String, Vec<String>)>> = HashMap::new();
    for e in endpoints {
        let params: Vec<String> = e
            .path
            .get_ref()
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let mut names: Vec<&String> = e.inbound.iter().map(|m| m.get_ref()).collect();
        names.extend(e.untyped_inbound.as_ref().map(|m| m.get_ref()));
        names.sort();
        names.dedup();
        for m in names {
            by_msg
                .entry(m.clone())
                .or_default()
                .push((e.name.get_ref().clone(), params.clone()));
        }
    }
    by_msg
}

fn toml_to_json(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number)?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        _ => return None,
    })
}
