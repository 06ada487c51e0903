//! Checks templates (`{path.*}`, `{claims.*}`, `{in.*}`, ...): syntax, and that every variable
//! exists where the template is rendered.

use std::ops::Range;

use serde_json::Value;

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::{toml_to_json, GeoScope, Validator};

impl Validator {
    fn var(
        &mut self,
        name: &str,
        span: Range<usize>,
        params: &[String],
        inbound: &InboundVars,
    ) -> Option<Var> {
        if name.contains('|') {
            // `{a|b}`: the first of the alternatives that has a value.
            let alts: Vec<Option<Var>> = name
                .split('|')
                .map(|n| self.var(n, span.clone(), params, inbound))
                .collect();
            return alts.into_iter().collect::<Option<Vec<Var>>>().map(Var::Or);
        }
        if let Some(d) = self.geo_scope_refuses(name, &span) {
            self.err(d);
            return None;
        }
        let var = if let Some(g) = name.strip_prefix("geo.") {
            if self.geo_scope == GeoScope::Off {
                None
            } else {
                GeoVar::ALL
                    .iter()
                    .find(|(n, _)| *n == g)
                    .map(|(_, v)| Var::Geo(*v))
            }
        } else if let Some(p) = name.strip_prefix("path.") {
            if let Some(eps) = &self.action_endpoints {
                return self.action_path_var(p, eps.clone(), span);
            }
            params.iter().position(|x| x == p).map(Var::Path)
        } else if let Some(c) = name.strip_prefix("claims.") {
            (!c.is_empty()).then(|| {
                self.claims_read.insert(c.to_owned());
                Var::Claim(c.to_owned())
            })
        } else if name == "user.id" {
            Some(Var::UserId)
        } else if let Some(f) = name.strip_prefix("in.") {
            let path: Vec<String> = f.split('.').map(str::to_owned).collect();
            match inbound {
                InboundVars::None => None,
                InboundVars::Schema(s) => schema_has(s, &path).then_some(Var::In(path)),
            }
        } else {
            match name {
                "gen.id" => Some(Var::GenId),
                "now.iso" => Some(Var::NowIso),
                "now.ms" => Some(Var::NowMs),
                "minted" if self.minted_allowed => Some(Var::Minted),
                _ => None,
            }
        };
        if var.is_none() {
            let mut avail: Vec<String> = params.iter().map(|p| format!("path.{p}")).collect();
            avail.extend(
                ["user.id", "claims.<name>", "gen.id", "now.iso", "now.ms"].map(String::from),
            );
            if matches!(inbound, InboundVars::Schema(_)) {
                avail.push("in.<declared field>".into());
            }
            if self.geo_scope != GeoScope::Off {
                avail.extend(GeoVar::ALL.iter().map(|(n, _)| format!("geo.{n}")));
            }
            self.err(
                Diagnostic::new(
                    Code::BadTemplate,
                    format!("unknown template variable `{{{name}}}`"),
                )
                .label(span, "unknown variable")
                .help(format!("available here: {}", avail.join(", "))),
            );
        }
        var
    }

    /// `{path.<p>}` in a client message's action: the value of the parameter on whichever
    /// endpoint the message arrived, so every endpoint that accepts the message must declare it.
    fn action_path_var(
        &mut self,
        p: &str,
        endpoints: Vec<(String, Vec<String>)>,
        span: Range<usize>,
    ) -> Option<Var> {
        if endpoints.is_empty() {
            self.err(
                Diagnostic::new(
                    Code::BadTemplate,
                    format!("`{{path.{p}}}`: no endpoint accepts this message"),
                )
                .label(span, "no path to read")
                .help("list the message in the `inbound` of the endpoints whose path declares the parameter"),
            );
            return None;
        }
        let lacking: Vec<&str> = endpoints
            .iter()
            .filter(|(_, params)| !params.iter().any(|x| x == p))
            .map(|(e, _)| e.as_str())
            .collect();
        if lacking.is_empty() {
            return Some(Var::PathNamed(p.to_owned()));
        }
        let having: Vec<&str> = endpoints
            .iter()
            .filter(|(_, params)| params.iter().any(|x| x == p))
            .map(|(e, _)| e.as_str())
            .collect();
        let help = if having.is_empty() {
            format!(
                "no endpoint that accepts this message has a `{{{p}}}` path parameter; use a parameter every one of them declares"
            )
        } else {
            format!(
                "every endpoint that accepts this message must declare it (`{}` does); accept the message only there, or declare the parameter",
                having.join("`, `")
            )
        };
        self.err(
            Diagnostic::new(
                Code::BadTemplate,
                format!(
                    "`{{path.{p}}}`: endpoint `{}` accepts this message and has no such path parameter",
                    lacking.join("`, `")
                ),
            )
            .label(span, "not a parameter of every accepting endpoint")
            .help(help),
        );
        None
    }

    pub(super) fn template(
        &mut self,
        s: &S<String>,
        params: &[String],
        inbound: &InboundVars,
    ) -> Option<Template> {
        parse_template(s.get_ref())
            .map_err(|why| {
                self.err(
                    Diagnostic::new(Code::BadTemplate, format!("invalid template: {why}"))
                        .label(s.span(), why)
                        .help("templates are text with {variables}, e.g. \"booking:{path.booking_id}\"; write {{ for a literal brace"),
                );
            })
            .ok()
            .and_then(|raw| {
                let mut pieces = Vec::new();
                let mut ok = true;
                for p in raw {
                    match p {
                        RawPiece::Text(t) => pieces.push(Piece::Text(t)),
                        RawPiece::Var(v) => match self.var(&v, s.span(), params, inbound) {
                            Some(v) => pieces.push(Piece::Var(v)),
                            None => ok = false,
                        },
                    }
                }
                ok.then(|| Template {
                    source: s.get_ref().clone(),
                    pieces,
                })
            })
    }

    pub(super) fn object_template(
        &mut self,
        t: &S<toml::Table>,
        params: &[String],
        inbound: &InboundVars,
    ) -> Vec<(String, ValueTemplate)> {
        let span = t.span();
        t.get_ref()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    self.value_template(v, span.clone(), params, inbound),
                )
            })
            .collect()
    }

    fn value_template(
        &mut self,
        v: &toml::Value,
        span: Range<usize>,
        params: &[String],
        inbound: &InboundVars,
    ) -> ValueTemplate {
        match v {
            toml::Value::String(s) => {
                // `{var|string}`: the value as text even when the variable is a number.
                let as_text = s.contains("|string}");
                let spanned = S::new(span.clone(), s.replace("|string}", "}"));
                match self.template(&spanned, params, inbound) {
                    Some(t) if as_text => ValueTemplate::Interp(t),
                    Some(t) => match t.pieces.as_slice() {
                        [Piece::Var(v)] => ValueTemplate::Whole(v.clone()),
                        [] => ValueTemplate::Literal(Value::String(String::new())),
                        [Piece::Text(t)] => ValueTemplate::Literal(Value::String(t.clone())),
                        _ => ValueTemplate::Interp(t),
                    },
                    None => ValueTemplate::Literal(Value::Null),
                }
            }
            toml::Value::Table(t) => ValueTemplate::Object(
                t.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            self.value_template(v, span.clone(), params, inbound),
                        )
                    })
                    .collect(),
            ),
            toml::Value::Array(a) => ValueTemplate::Array(
                a.iter()
                    .map(|v| self.value_template(v, span.clone(), params, inbound))
                    .collect(),
            ),
            other => ValueTemplate::Literal(toml_to_json(other).unwrap_or(Value::Null)),
        }
    }
}

pub(super) enum InboundVars<'a> {
    None,
    Schema(&'a Schema),
}

fn schema_has(s: &Schema, path: &[String]) -> bool {
    match path.split_first() {
        None => false,
        Some((head, rest)) => s.fields.iter().any(|f| {
            &f.name == head
                && (rest.is_empty()
                    || f.nested
                        .as_ref()
                        .map(|n| schema_has(n, rest))
                        .unwrap_or(false)
                    || (f.ty == FieldType::Object && f.nested.is_none())
                    || f.ty == FieldType::Any)
        }),
    }
}

enum RawPiece {
    Text(String),
    Var(String),
}

fn parse_template(s: &str) -> Result<Vec<RawPiece>, &'static str> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c)
                            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '|' =>
                        {
                            name.push(c)
                        }
                        Some(_) => return Err("variable names use letters, digits, `_` and `.`"),
                        None => return Err("unclosed `{`"),
                    }
                }
                if name.is_empty() {
                    return Err("empty `{}`");
                }
                if !text.is_empty() {
                    out.push(RawPiece::Text(std::mem::take(&mut text)));
                }
                out.push(RawPiece::Var(name));
            }
            '}' => return Err("unmatched `}`"),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        out.push(RawPiece::Text(text));
    }
    Ok(out)
}
