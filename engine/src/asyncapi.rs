//! The protocol as documentation: an AsyncAPI 3.0 document built from the frozen
//! [`Protocol`]. Plain code: no I/O; `beacon asyncapi` prints what [`document`] returns.
//!
//! The document is written from Beacon's side: a client message is an operation Beacon
//! `receive`s, a server message one it `send`s. Each endpoint is a channel whose address is
//! its path pattern; each message's payload is a JSON Schema (the AsyncAPI default schema
//! format) built from the declared fields; close codes appear in the descriptions and, machine
//! readable, under `x-beacon-close-codes` so clients can derive their reconnect policy.

use serde_json::{json, Map, Value};

use crate::protocol::{
    Cond, Direction, Endpoint, FieldSpec, FieldType, MessageSpec, ParamType, Protocol, Recipients,
    Rejection, Schema, TokenSource, Unavailable,
};

fn field_type_schema(ty: FieldType) -> Value {
    match ty {
        FieldType::String => json!({"type": "string"}),
        FieldType::Int => json!({"type": "integer"}),
        FieldType::Number => json!({"type": "number"}),
        FieldType::Bool => json!({"type": "boolean"}),
        FieldType::Object => json!({"type": "object"}),
        FieldType::Array => json!({"type": "array"}),
        FieldType::Id => {
            json!({"oneOf": [{"type": "integer"}, {"type": "string", "minLength": 1}]})
        }
        FieldType::Any => json!({}),
    }
}

fn field_schema(f: &FieldSpec) -> Value {
    let mut s = field_type_schema(f.ty);
    let Value::Object(obj) = &mut s else {
        return s;
    };
    if !f.enum_values.is_empty() {
        obj.insert("enum".into(), json!(f.enum_values));
    }
    if let Some(m) = f.min {
        obj.insert("minimum".into(), json!(m));
    }
    if let Some(m) = f.max {
        obj.insert("maximum".into(), json!(m));
    }
    if let Some(n) = f.max_length {
        let key = if f.ty == FieldType::Array {
            "maxItems"
        } else {
            "maxLength"
        };
        obj.insert(key.into(), json!(n));
    }
    if let Some(items) = f.items {
        obj.insert("items".into(), field_type_schema(items));
    }
    if let Some(nested) = &f.nested {
        let inner = object_schema(nested, None);
        if let Value::Object(inner) = inner {
            obj.extend(inner);
        }
    }
    s
}

fn object_schema(schema: &Schema, type_field: Option<(&str, &str)>) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    if let Some((field, wire)) = type_field {
        props.insert(field.into(), json!({"type": "string", "const": wire}));
        required.push(field.to_owned());
    }
    for f in &schema.fields {
        props.insert(f.name.clone(), field_schema(f));
        if f.required {
            required.push(f.name.clone());
        }
    }
    let mut s = json!({"type": "object", "properties": props});
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    s
}

fn message_component(p: &Protocol, m: &MessageSpec, type_field: &str) -> Value {
    let who = match m.direction {
        Direction::Client => "Sent by clients.",
        Direction::Server => "Sent by the server.",
        Direction::Both => "Sent by clients and by the server.",
    };
    let mut desc = format!("{} {who}", m.about);
    if let Some(r) = &m.reply {
        desc.push_str(&format!(
            " Answered with `{}`.",
            p.messages[r.send].wire_type
        ));
    }
    if let Some(f) = m.forward_to.map(|id| &p.forwards[id]) {
        desc.push_str(&forward_text(p, f));
    }
    if let Some(rate) = m.rate {
        desc.push_str(&format!(
            " Rate limited to {} per second (burst {}).",
            rate.per_second, rate.burst
        ));
    }
    let mut payload = object_schema(&m.schema, Some((type_field, &m.wire_type)));
    let kinds: Vec<&str> = p
        .history
        .iter()
        .filter(|h| h.enters(&m.wire_type))
        .map(|h| h.pattern.as_str())
        .collect();
    if let (Some(r), false) = (&p.resume, kinds.is_empty()) {
        // Beacon writes the position into every message that enters a history.
        desc.push_str(&format!(
            " In rooms {} it carries its position (`{}`, `{}`).",
            kinds.join(", "),
            r.offset_field,
            r.epoch_field
        ));
        payload["properties"][&r.offset_field] = json!({"type": "integer", "minimum": 1,
            "description": "The message's offset in its room (rooms that keep history)."});
        payload["properties"][&r.epoch_field] = json!({"type": "string",
            "description": "The room history's epoch (rooms that keep history)."});
    }
    json!({
        "name": m.wire_type,
        "title": m.name,
        "summary": m.about,
        "description": desc,
        "contentType": "application/json",
        "payload": payload,
    })
}

/// What happens to a message with `forward_to`: the backend stores it first and says what the
/// room and the sender get.
fn forward_text(p: &Protocol, f: &crate::protocol::Forward) -> String {
    let mut s = format!(
        " Handed to the app backend first (`{}`, {} ms per attempt, {} {}).",
        f.path,
        f.timeout_ms,
        f.retries,
        if f.retries == 1 { "retry" } else { "retries" }
    );
    if let Some(b) = &f.broadcast {
        let room = b
            .room
            .as_ref()
            .map(|r| format!("room `{}`", r.source))
            .unwrap_or_else(|| "home room".to_owned());
        let who = if b.recipients == Recipients::ExcludeSender {
            "the rest of the "
        } else {
            "the "
        };
        s.push_str(&format!(
            " Once it accepts, {who}{room} gets its answer as `{}`",
            p.messages[b.send].wire_type
        ));
        s.push_str(match f.reply {
            Some(_) => "",
            None => ".",
        });
    }
    if let Some(r) = f.reply {
        let lead = if f.broadcast.is_some() {
            " and the sender"
        } else {
            " Once it accepts, the sender gets"
        };
        s.push_str(&format!("{lead} `{}`.", p.messages[r].wire_type));
    }
    let error = p.error_reply.map(|e| p.messages[e].wire_type.as_str());
    if let Some(e) = error {
        s.push_str(&format!(
            " A refusal comes back as `{e}` with the backend's `code`."
        ));
    }
    match &f.unavailable {
        Unavailable::Error(code) => {
            if let Some(e) = error {
                s.push_str(&format!(
                    " If the backend cannot take it: `{e}` with code `{code}`; the socket stays open."
                ));
            }
        }
        Unavailable::Close(id) => {
            let c = &p.closes[*id];
            s.push_str(&format!(
                " If the backend cannot take it, the socket closes with {} ({}).",
                c.code, c.name
            ));
        }
    }
    s
}

/// The hooks a rule asks, in order.
fn hooks_in(c: &Cond, out: &mut Vec<usize>) {
    match c {
        Cond::Hook(h) if !out.contains(h) => out.push(*h),
        Cond::AllOf(cs) | Cond::AnyOf(cs) => cs.iter().for_each(|c| hooks_in(c, out)),
        _ => {}
    }
}

/// The backend questions an endpoint asks at the handshake, and presence.
fn endpoint_extras(p: &Protocol, ep: &Endpoint) -> String {
    let mut s = String::new();
    let mut hooks = Vec::new();
    for r in &ep.authorize {
        hooks_in(&r.cond, &mut hooks);
    }
    for h in hooks.iter().map(|&h| &p.hooks[h]) {
        let c = &p.closes[h.unavailable];
        s.push_str(&format!(
            " Asks the app backend (`{}`) whether the caller may connect; its answer may carry \
             facts (e.g. a role) that the rules after it, `only_if` and `{{claims.*}}` read as \
             claims. When the backend cannot answer, the socket closes with {} ({}).",
            h.path, c.code, c.name
        ));
    }
    let wire = |id: usize| p.messages[id].wire_type.as_str();
    let join: Vec<&str> = ep.on_join.iter().map(|s| wire(s.send)).collect();
    let leave: Vec<&str> = ep.on_leave.iter().map(|s| wire(s.send)).collect();
    if !join.is_empty() {
        s.push_str(&format!(
            " Presence: when a user's first socket joins, the rest of the home room gets `{}`.",
            join.join("`, `")
        ));
    }
    if !leave.is_empty() {
        s.push_str(&format!(
            " After a user's last socket leaves, the rest of the home room gets `{}`.",
            leave.join("`, `")
        ));
    }
    if let Some(o) = &ep.online {
        s.push_str(&format!(
            " A joining socket gets `{}` once for each other user already present, with that \
             user's id in `{}`.",
            wire(o.send),
            o.user_field
        ));
    }
    s
}

/// The in-band refresh message of an endpoint with `refresh`.
fn refresh_component(p: &Protocol, ep: &Endpoint, wire: &str) -> Value {
    let code = |r: Rejection| p.close_for(r).code;
    let desc = format!(
        "Replaces the socket's token with a fresh one for the same user, so the socket outlives \
         short-lived access tokens: send it before the current token expires. Nothing is \
         answered when it is accepted. A token that does not verify, or one for another user, \
         closes the socket (code {} or {}); a socket whose token expires without a refresh is \
         closed with code {}.",
        code(Rejection::TokenInvalid),
        code(Rejection::TokenExpired),
        code(Rejection::TokenExpired),
    );
    json!({
        "name": wire,
        "title": "token refresh",
        "summary": "A fresh access token for this socket.",
        "description": desc,
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "properties": {
                ep.type_field.as_str(): {"type": "string", "const": wire},
                "token": {"type": "string", "description": "A new access token for the same user."},
            },
            "required": [ep.type_field.as_str(), "token"],
        },
    })
}

fn token_sources(ep: &Endpoint) -> String {
    let parts: Vec<String> = ep
        .token_sources
        .iter()
        .map(|s| match s {
            TokenSource::Query(n) => format!("query parameter `{n}`"),
            TokenSource::Bearer => "`Authorization: Bearer <token>`".to_owned(),
            TokenSource::Subprotocol(m) => {
                format!("`Sec-WebSocket-Protocol: {m}, <token>` (the server echoes `{m}`)")
            }
            TokenSource::FirstMessage(w) => {
                format!("a first message `{{\"type\": \"{w}\", \"token\": ...}}`")
            }
        })
        .collect();
    parts.join(", or ")
}

fn close_table(p: &Protocol) -> String {
    let mut s = String::from("Close codes:\n");
    for c in &p.closes {
        s.push_str(&format!(
            "- {} `{}` ({}): {} Reconnect: {}.\n",
            c.code,
            c.reason,
            c.name,
            c.about,
            c.reconnect.as_str()
        ));
    }
    s
}

/// Channel and operation keys must be identifiers; endpoint names already are, mostly.
fn key(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Builds the AsyncAPI 3.0 document of `p`.
pub fn document(p: &Protocol) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut components = Map::new();
    for ep in &p.endpoints {
        let ch = key(&ep.name);
        let mut msgs = Map::new();
        let mut receive = Vec::new();
        let mut send = Vec::new();
        let listed = ep
            .inbound
            .iter()
            .map(|&m| (m, true))
            .chain(ep.outbound.iter().map(|&m| (m, false)));
        for (id, inbound) in listed {
            let m = &p.messages[id];
            let comp = format!("{ch}.{}", key(&m.name));
            let mkey = key(&m.name);
            if !msgs.contains_key(&mkey) {
                // The type field is per endpoint for inbound messages, so components are too.
                let tf = if inbound {
                    ep.type_field.as_str()
                } else {
                    "type"
                };
                components.insert(comp.clone(), message_component(p, m, tf));
                msgs.insert(
                    mkey.clone(),
                    json!({"$ref": format!("#/components/messages/{comp}")}),
                );
            }
            let r = json!({"$ref": format!("#/channels/{ch}/messages/{mkey}")});
            if inbound {
                receive.push(r);
            } else {
                send.push(r);
            }
        }
        if let Some(wire) = &ep.refresh {
            // Handled by the engine, not declared as a message: described here so that a client
            // generated from this document can keep a socket past its token's expiry.
            let comp = format!("{ch}.token_refresh");
            components.insert(comp.clone(), refresh_component(p, ep, wire));
            msgs.insert(
                "token_refresh".to_owned(),
                json!({"$ref": format!("#/components/messages/{comp}")}),
            );
            receive.push(json!({"$ref": format!("#/channels/{ch}/messages/token_refresh")}));
        }
        let mut params = Map::new();
        for prm in &ep.path.params {
            let ty = match prm.ty {
                ParamType::String => "string",
                ParamType::Int => "integer",
            };
            params.insert(
                prm.name.clone(),
                json!({"description": format!("Path parameter ({ty}, at most {} bytes).", prm.max_length)}),
            );
        }
        let auth = if ep.tokens.is_empty() {
            "No token required.".to_owned()
        } else {
            let kinds: Vec<&str> = ep
                .tokens
                .iter()
                .map(|&t| p.tokens[t].name.as_str())
                .collect();
            format!("Token ({}) in {}.", kinds.join(" or "), token_sources(ep))
        };
        let resumable = p.history.iter().any(|h| h.may_match(&ep.room));
        let first_message = ep
            .token_sources
            .iter()
            .any(|s| matches!(s, TokenSource::FirstMessage(_)));
        let auth = match (&p.resume, resumable && first_message) {
            (Some(r), true) => format!(
                "{auth} A first message may also carry the position to resume from \
                 (`\"{}\": <offset>, \"{}\": \"<epoch>\"`), as the query parameters do.",
                r.offset_field, r.epoch_field
            ),
            _ => auth,
        };
        let mut denies: Vec<String> = ep
            .authorize
            .iter()
            .map(|r| {
                let c = &p.closes[r.deny];
                format!("{} ({})", c.code, c.name)
            })
            .collect();
        denies.dedup();
        let description = format!(
            "{}\n\nHome room: `{}`. {auth}{}{}\n\n{}",
            ep.about,
            ep.room.source,
            if denies.is_empty() {
                String::new()
            } else {
                format!(" Refused with close code {}.", denies.join(", "))
            },
            endpoint_extras(p, ep),
            close_table(p)
        );
        let mut channel = json!({
            "address": ep.path.source,
            "title": ep.name,
            "description": description,
            "messages": msgs,
        });
        if !params.is_empty() {
            channel["parameters"] = Value::Object(params);
        }
        let mut query: Map<String, Value> = ep
            .token_sources
            .iter()
            .filter_map(|s| match s {
                TokenSource::Query(n) => Some((
                    n.clone(),
                    json!({"type": "string", "description": "Access token."}),
                )),
                _ => None,
            })
            .collect();
        if let (Some(r), true) = (&p.resume, resumable) {
            query.insert(r.offset_param.clone(), json!({"type": "string",
                "description": "Resume: the offset of the last message received in the home room (with the epoch)."}));
            query.insert(
                r.epoch_param.clone(),
                json!({"type": "string",
                "description": "Resume: the epoch of that message."}),
            );
        }
        if !query.is_empty() {
            channel["bindings"] = json!({"ws": {
                "method": "GET",
                "query": {"type": "object", "properties": query},
                "bindingVersion": "0.1.0",
            }});
        }
        channels.insert(ch.clone(), channel);
        for (action, list) in [("receive", receive), ("send", send)] {
            if list.is_empty() {
                continue;
            }
            let summary = if action == "receive" {
                format!("Messages clients send on {}.", ep.path.source)
            } else {
                format!("Messages Beacon sends on {}.", ep.path.source)
            };
            operations.insert(
                format!("{ch}.{action}"),
                json!({
                    "action": action,
                    "channel": {"$ref": format!("#/channels/{ch}")},
                    "summary": summary,
                    "messages": list,
                }),
            );
        }
    }
    let closes: Vec<Value> = p
        .closes
        .iter()
        .map(|c| {
            json!({"code": c.code, "name": c.name, "reason": c.reason,
                   "reconnect": c.reconnect.as_str(), "description": c.about})
        })
        .collect();
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": p.name,
            "version": "1",
            "description": format!("{}\n\n{}", p.about, close_table(p)),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": components},
        "x-beacon-close-codes": closes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_protocol() -> Protocol {
        let src = include_str!("../../protocol.toml");
        crate::protocol::load_protocol(src).expect("default protocol validates")
    }

    #[test]
    fn every_endpoint_is_a_channel_and_every_reference_resolves() {
        let p = default_protocol();
        let doc = document(&p);
        assert_eq!(doc["asyncapi"], "3.0.0");
        for ep in &p.endpoints {
            assert_eq!(doc["channels"][&ep.name]["address"], ep.path.source);
        }
        let text = doc.to_string();
        // Every "$ref" points at something in the document.
        for part in text.split("\"$ref\":\"#/").skip(1) {
            let path = &part[..part.find('"').unwrap()];
            let target = path.split('/').fold(&doc, |v, k| {
                v.get(k).unwrap_or_else(|| panic!("dangling ref {path}"))
            });
            assert!(target.is_object(), "{path}");
        }
    }

    #[test]
    fn history_messages_document_their_position_and_endpoints_the_resume_query() {
        let src = include_str!("../../tests/fixtures/history.toml");
        let doc = document(&crate::protocol::load_protocol(src).unwrap());
        let messages = &doc["components"]["messages"];
        let said = &messages["room.said"]["payload"]["properties"];
        assert_eq!(said["offset"]["type"], "integer");
        assert_eq!(said["epoch"]["type"], "string");
        assert!(messages["room.note"]["payload"]["properties"]["offset"].is_null());
        let query = |ep: &str| doc["channels"][ep]["bindings"]["ws"]["query"]["properties"].clone();
        assert_eq!(query("room")["since"]["type"], "string");
        assert!(query("plain")["since"].is_null());
        let about = |ep: &str| {
            doc["channels"][ep]["description"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert!(
            about("room_first_message").contains(r#"`"offset": <offset>, "epoch": "<epoch>"`"#),
            "{}",
            about("room_first_message")
        );
        assert!(!about("room").contains("first message may"));
    }

    #[test]
    fn payloads_carry_the_wire_type_and_field_constraints() {
        let p = default_protocol();
        let doc = document(&p);
        let m = &doc["components"]["messages"]["booking.location_update"];
        assert_eq!(
            m["payload"]["properties"]["type"]["const"],
            "location_update"
        );
        assert_eq!(m["payload"]["properties"]["lat"]["maximum"], 90.0);
        let req = m["payload"]["required"].as_array().unwrap();
        assert!(req.contains(&json!("lat")) && !req.contains(&json!("eta_minutes")));
    }

    #[test]
    fn the_refresh_message_is_described_where_an_endpoint_takes_one() {
        let p = default_protocol();
        let doc = document(&p);
        for ep in &p.endpoints {
            let wire = ep
                .refresh
                .as_deref()
                .expect("every shipped endpoint refreshes");
            let m = &doc["components"]["messages"][format!("{}.token_refresh", ep.name)];
            assert_eq!(m["payload"]["properties"]["type"]["const"], wire);
            assert_eq!(m["payload"]["required"], json!(["type", "token"]));
            let ops = doc["operations"][format!("{}.receive", ep.name)]["messages"].to_string();
            assert!(ops.contains("token_refresh"), "{ops}");
        }
    }

    #[test]
    fn forwards_hooks_facts_and_presence_are_described() {
        let src = include_str!("../../config/protocols/umemployed.toml");
        let doc = document(&crate::protocol::load_protocol(src).unwrap());
        let chat = doc["channels"]["chat"]["description"].as_str().unwrap();
        assert!(
            chat.contains("Asks the app backend (`/internal/beacon/authorize/`)"),
            "{chat}"
        );
        assert!(chat.contains("facts"), "{chat}");
        assert!(
            chat.contains("the rest of the home room gets `user_status`"),
            "{chat}"
        );
        assert!(
            chat.contains("A joining socket gets `user_status` once for each other user"),
            "{chat}"
        );
        let sent = doc["components"]["messages"]["chat.send_chat_message"]["description"]
            .as_str()
            .unwrap();
        assert!(
            sent.contains("Handed to the app backend first (`/internal/beacon/chat/message/`"),
            "{sent}"
        );
        assert!(sent.contains("gets its answer as `chat_message`"), "{sent}");
        assert!(
            sent.contains("`error` with code `backend_unavailable`"),
            "{sent}"
        );
        // Messages that are not forwarded say nothing of it.
        let typing = doc["components"]["messages"]["chat.typing"]["description"]
            .as_str()
            .unwrap();
        assert!(!typing.contains("Handed to the app backend"), "{typing}");
    }

    #[test]
    fn close_codes_are_described_and_machine_readable() {
        let p = default_protocol();
        let doc = document(&p);
        let desc = doc["channels"]["booking"]["description"].as_str().unwrap();
        assert!(desc.contains("4003"), "{desc}");
        assert!(desc.contains("Refused with close code 4003"), "{desc}");
        let closes = doc["x-beacon-close-codes"].as_array().unwrap();
        assert!(closes
            .iter()
            .any(|c| c["code"] == 4001 && c["reconnect"] == "after-reauth"));
    }
}
