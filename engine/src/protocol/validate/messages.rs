//! Checks `[messages]`: directions, wire types, field schemas, reply and broadcast actions,
//! filters, and every reference to a message by name.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::templates::InboundVars;
use super::{Names, Validator};

impl Validator {
    /// Names and directions before bodies, since actions refer to other messages.
    pub(super) fn message_names(
        &mut self,
        raw: &BTreeMap<S<String>, RawMessage>,
    ) -> HashMap<String, (MsgId, Direction)> {
        let mut by_name = HashMap::new();
        let mut wire_seen: HashMap<(String, bool), Range<usize>> = HashMap::new();
        for (i, (name, m)) in raw.iter().enumerate() {
            self.ident("message", name);
            let dir = match m.direction.get_ref().as_str() {
                "client" => Direction::Client,
                "server" => Direction::Server,
                "both" => Direction::Both,
                other => {
                    self.err(
                        Diagnostic::new(Code::BadField, format!("unknown direction `{other}`"))
                            .label(m.direction.span(), "unknown direction")
                            .help("use \"client\" (client to server), \"server\" (server to client) or \"both\""),
                    );
                    Direction::Both
                }
            };
            by_name.insert(name.get_ref().clone(), (i, dir));
            let wire = m
                .wire_type
                .as_ref()
                .map(|w| w.get_ref().clone())
                .unwrap_or_else(|| name.get_ref().clone());
            for outbound in [true, false] {
                let applies = if outbound {
                    dir.outbound()
                } else {
                    dir.inbound()
                };
                if !applies {
                    continue;
                }
                let span = m
                    .wire_type
                    .as_ref()
                    .map(|w| w.span())
                    .unwrap_or(name.span());
                if let Some(prev) = wire_seen.insert((wire.clone(), outbound), span.clone()) {
                    if outbound {
                        self.err(
                            Diagnostic::new(Code::DuplicateName, format!("two server messages share the wire type `{wire}`"))
                                .label(span, "second use")
                                .label(prev, "first use")
                                .help("the publish API routes by wire type; give each server message its own"),
                        );
                    }
                }
            }
        }
        by_name
    }

    pub(super) fn messages(
        &mut self,
        raw: &BTreeMap<S<String>, RawMessage>,
        names: &Names,
        rates: &HashMap<MsgId, Rate>,
    ) -> Vec<MessageSpec> {
        let mut messages = Vec::new();
        for (i, (name, m)) in raw.iter().enumerate() {
            let mut spec = self.message(name, m, names);
            spec.rate = rates.get(&i).copied();
            messages.push(spec);
        }
        messages
    }

    pub(super) fn unknown_message(&mut self, name: &S<String>, names: &Names) {
        let mut known: Vec<&String> = names.messages.keys().collect();
        known.sort();
        let close = known
            .iter()
            .find(|k| strsim_close(k, name.get_ref()))
            .map(|k| format!("did you mean `{k}`? "))
            .unwrap_or_default();
        self.err(
            Diagnostic::new(
                Code::UnknownMessage,
                format!("no message named `{}`", name.get_ref()),
            )
            .label(name.span(), "unknown message")
            .help(format!(
                "{close}declare it under `[messages.{}]`",
                name.get_ref()
            )),
        );
    }

    pub(super) fn message_ref(
        &mut self,
        name: &S<String>,
        names: &Names,
        want: Direction,
    ) -> Option<MsgId> {
        match names.messages.get(name.get_ref()) {
            None => {
                self.unknown_message(name, names);
                None
            }
            Some(&(id, dir)) => {
                let ok = match want {
                    Direction::Server => dir.outbound(),
                    Direction::Client => dir.inbound(),
                    Direction::Both => true,
                };
                if !ok {
                    let (need, hint) = match want {
                        Direction::Server => ("server-to-client", "\"server\" or \"both\""),
                        _ => ("client-to-server", "\"client\" or \"both\""),
                    };
                    self.err(
                        Diagnostic::new(Code::WrongDirection, format!("`{}` is used as a {need} message but its direction does not allow it", name.get_ref()))
                            .label(name.span(), "wrong direction")
                            .help(format!("set its direction to {hint}")),
                    );
                    None
                } else {
                    Some(id)
                }
            }
        }
    }

    fn message(&mut self, name: &S<String>, m: &RawMessage, names: &Names) -> MessageSpec {
        let about = self.about(&format!("message `{}`", name.get_ref()), &m.about);
        let direction = names.messages[name.get_ref()].1;
        let schema = self.schema(&m.fields, 0);
        let inbound_vars = InboundVars::Schema(&schema);
        let action = |v: &mut Self, a: &Option<RawAction>, kind: &str| -> Option<Action> {
            let a = a.as_ref()?;
            if !direction.inbound() {
                v.err(
                    Diagnostic::new(Code::BadAction, format!("server message `{}` cannot have a `{kind}` action", name.get_ref()))
                        .label(a.send.span(), "action on a server message")
                        .help("actions run when a client sends the message; set direction to \"client\" or \"both\""),
                );
            }
            let send = v.message_ref(&a.send, names, Direction::Server)?;
            // `{path.*}` reads the parameter of the endpoint the message arrived on.
            v.action_endpoints = Some(
                v.accepted_on
                    .get(name.get_ref())
                    .cloned()
                    .unwrap_or_default(),
            );
            let with = a
                .with
                .as_ref()
                .map(|w| v.object_template(w, &[], &inbound_vars))
                .unwrap_or_default();
            let room = a
                .room
                .as_ref()
                .map(|r| v.template(r, &[], &InboundVars::Schema(&schema)));
            v.action_endpoints = None;
            if kind == "reply" {
                if let Some(ex) = &a.exclude_sender {
                    v.err(
                        Diagnostic::new(
                            Code::BadAction,
                            "`exclude_sender` has no meaning on a reply",
                        )
                        .label(ex.span(), "here")
                        .help("a reply goes to the sender only; remove this key"),
                    );
                }
                if let Some(r) = &a.room {
                    v.err(
                        Diagnostic::new(Code::BadAction, "`room` has no meaning on a reply")
                            .label(r.span(), "here")
                            .help(
                                "a reply goes to the sender only; use `broadcast` to reach a room",
                            ),
                    );
                }
            }
            Some(Action {
                send,
                with,
                forward: a.forward.as_ref().map(|f| *f.get_ref()).unwrap_or(false),
                recipients: if a
                    .exclude_sender
                    .as_ref()
                    .map(|e| *e.get_ref())
                    .unwrap_or(false)
                {
                    Recipients::ExcludeSender
                } else {
                    Recipients::Everyone
                },
                room: room.flatten(),
                frame: None,
            })
        };
        let reply = action(self, &m.reply, "reply");
        let broadcast = action(self, &m.broadcast, "broadcast");
        let (geo_provider, geo_search, geo_respond) =
            self.geo_actions(name, m, &schema, names, direction);
        let forward_to = self.forward_ref(name, &m.forward_to, direction, names);
        for f in &m.ignore_if_empty {
            if !schema
                .fields
                .iter()
                .any(|s| &s.name == f.get_ref() && s.ty == FieldType::String)
            {
                self.err(
                    Diagnostic::new(Code::BadField, format!("`{}` is not a declared string field", f.get_ref()))
                        .label(f.span(), "not a string field of this message")
                        .help("ignore_if_empty lists string fields; declare the field with type = \"string\""),
                );
            }
        }
        let only_if: Vec<Cond> = m
            .only_if
            .iter()
            .filter_map(|c| self.cond(c, &[], true))
            .collect();
        if !only_if.is_empty() && !direction.inbound() {
            self.err(
                Diagnostic::new(
                    Code::BadAction,
                    format!("server message `{}` cannot have `only_if`", name.get_ref()),
                )
                .label(name.span(), "server message")
                .help("only_if drops client messages from callers who fail it"),
            );
        }
        let filter = m.filter.as_ref().map(|f| {
            let ok = schema.fields.iter().any(|s| {
                &s.name == f.values_from.get_ref()
                    && s.ty == FieldType::Array
                    && s.items == Some(FieldType::String)
            });
            if !ok {
                self.err(
                    Diagnostic::new(
                        Code::BadFilter,
                        format!(
                            "`{}` is not a declared array of strings",
                            f.values_from.get_ref()
                        ),
                    )
                    .label(f.values_from.span(), "not an array field of this message")
                    .help(
                        "declare it, e.g. fields.types = { type = \"array\", items = \"string\" }",
                    ),
                );
            }
            let mut applies_to = Vec::new();
            for a in &f.applies_to {
                match names.messages.get(a.get_ref()) {
                    Some(&(_, d)) if d.outbound() => applies_to.push(a.get_ref().clone()),
                    Some(_) => self.err(
                        Diagnostic::new(
                            Code::BadFilter,
                            format!("`{}` is not a server message", a.get_ref()),
                        )
                        .label(a.span(), "clients send this")
                        .help("filters select messages the server sends"),
                    ),
                    None => self.unknown_message(a, names),
                }
            }
            if applies_to.is_empty() {
                self.err(
                    Diagnostic::new(Code::BadFilter, "a filter applies to no message")
                        .label(f.field.span(), "in this filter")
                        .help("list server messages in `applies_to`"),
                );
            }
            FilterSpec {
                field: f.field.get_ref().clone(),
                values_from: f.values_from.get_ref().clone(),
                applies_to,
            }
        });
        MessageSpec {
            only_if,
            filter,
            name: name.get_ref().clone(),
            about,
            direction,
            wire_type: m
                .wire_type
                .as_ref()
                .map(|w| w.get_ref().clone())
                .unwrap_or_else(|| name.get_ref().clone()),
            schema,
            reply,
            broadcast,
            ignore_if_empty: m
                .ignore_if_empty
                .iter()
                .map(|f| f.get_ref().clone())
                .collect(),
            rate: None,
            geo_provider,
            geo_search,
            geo_respond,
            forward_to,
        }
    }

    fn field_type(&mut self, ty: &S<String>) -> FieldType {
        match ty.get_ref().as_str() {
            "string" => FieldType::String,
            "int" => FieldType::Int,
            "number" => FieldType::Number,
            "bool" => FieldType::Bool,
            "object" => FieldType::Object,
            "array" => FieldType::Array,
            "id" => FieldType::Id,
            "any" => FieldType::Any,
            other => {
                self.err(
                    Diagnostic::new(Code::BadField, format!("unknown field type `{other}`"))
                        .label(ty.span(), "unknown type")
                        .help("use one of: string, int, number, bool, object, array, id, any"),
                );
                FieldType::Any
            }
        }
    }

    fn schema(&mut self, fields: &BTreeMap<S<String>, RawField>, depth: usize) -> Schema {
        let mut out = Vec::new();
        for (name, f) in fields {
            if name.get_ref().is_empty() || name.get_ref().len() > 64 {
                self.err(
                    Diagnostic::new(Code::BadField, "field names must be 1 to 64 bytes")
                        .label(name.span(), "bad field name")
                        .help("rename the field"),
                );
            }
            let ty = self.field_type(&f.ty);
            let enum_values: Vec<String> = f
                .enum_
                .as_ref()
                .map(|e| e.get_ref().iter().map(|s| s.get_ref().clone()).collect())
                .unwrap_or_default();
            if let Some(e) = &f.enum_ {
                if ty != FieldType::String {
                    self.err(
                        Diagnostic::new(Code::BadField, "`enum` applies to string fields only")
                            .label(e.span(), "enum on a non-string field")
                            .help("set type = \"string\" or remove the enum"),
                    );
                }
                if e.get_ref().is_empty() {
                    self.err(
                        Diagnostic::new(Code::BadField, "`enum` is empty")
                            .label(e.span(), "no allowed values")
                            .help("list the allowed values"),
                    );
                }
            }
            for (bound, val) in [("min", &f.min), ("max", &f.max)] {
                if let Some(b) = val {
                    if !matches!(ty, FieldType::Int | FieldType::Number) || !b.get_ref().is_finite()
                    {
                        self.err(
                            Diagnostic::new(
                                Code::BadField,
                                format!(
                                    "`{bound}` applies to finite bounds on int or number fields"
                                ),
                            )
                            .label(b.span(), "misplaced bound")
                            .help("set type = \"number\" or \"int\", or remove the bound"),
                        );
                    }
                }
            }
            if let (Some(lo), Some(hi)) = (&f.min, &f.max) {
                if lo.get_ref() > hi.get_ref() {
                    self.err(
                        Diagnostic::new(Code::BadField, "`min` is greater than `max`")
                            .label(lo.span(), "min")
                            .label(hi.span(), "max")
                            .help("swap the bounds"),
                    );
                }
            }
            let max_length = match &f.max_length {
                Some(m)
                    if *m.get_ref() < 1 || !matches!(ty, FieldType::String | FieldType::Array) =>
                {
                    self.err(
                        Diagnostic::new(
                            Code::BadField,
                            "`max_length` must be positive and applies to strings and arrays",
                        )
                        .label(m.span(), "misplaced or non-positive")
                        .help("strings count bytes, arrays count items"),
                    );
                    None
                }
                Some(m) => Some(*m.get_ref() as usize),
                None => None,
            };
            let items = f.items.as_ref().map(|i| {
                if ty != FieldType::Array {
                    self.err(
                        Diagnostic::new(Code::BadField, "`items` applies to array fields only")
                            .label(i.span(), "items on a non-array")
                            .help("set type = \"array\" or remove `items`"),
                    );
                }
                self.field_type(i)
            });
            let nested = f.fields.as_ref().map(|n| {
                if ty != FieldType::Object {
                    self.err(
                        Diagnostic::new(
                            Code::BadField,
                            "nested `fields` apply to object fields only",
                        )
                        .label(f.ty.span(), "not an object")
                        .help("set type = \"object\""),
                    );
                }
                if depth >= 4 {
                    self.err(
                        Diagnostic::new(Code::BadField, "objects nest at most 4 levels deep")
                            .label(f.ty.span(), "too deep")
                            .help("flatten the schema"),
                    );
                }
                self.schema(n, depth + 1)
            });
            out.push(FieldSpec {
                name: name.get_ref().clone(),
                ty,
                required: f.required.as_ref().map(|r| *r.get_ref()).unwrap_or(true),
                enum_values,
                min: f.min.as_ref().map(|m| *m.get_ref()),
                max: f.max.as_ref().map(|m| *m.get_ref()),
                max_length,
                items,
                nested,
            });
        }
        Schema { fields: out }
    }
}

fn strsim_close(a: &str, b: &str) -> bool {
    // Cheap "did you mean": same length ±1 and at most two differing positions.
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let diff = a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len());
    diff <= 2
}
