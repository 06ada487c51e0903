//! The publish API's body rules, sans-IO: JSON body in, encoded frames per room out, or the one
//! HTTP error the request is refused with. Plain values.
//!
//! [`crate::runtime`] reads the body off the socket, checks the API key and content type, then
//! calls [`prepare`] and delivers what it returns; everything a publisher can get wrong about
//! the body itself is decided here, so it is tested and fuzzed without a socket.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::message;
use crate::protocol::Protocol;
use crate::ws::http_error::{HttpError, HttpErrorKind};

/// Most items one publish request may carry.
pub const MAX_BATCH: usize = 1000;

/// Longest room name a publisher may target, in bytes.
pub const MAX_ROOM_BYTES: usize = 256;

/// A validated publish body: what to deliver, in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `(room, encoded text frame)` per item.
    pub items: Vec<(String, Bytes)>,
    /// The body was one object rather than an array, so the reply is one object too.
    pub single: bool,
}

/// Validates a publish body against the protocol's server messages.
///
/// The body is one item or an array of 1 to [`MAX_BATCH`] items, each
/// `{"room": "...", "message": {"type": "<server message>", ...}}`. Every item is checked
/// before any is returned: a bad item fails the whole request, so a publisher never has to
/// work out which half of a batch went out.
pub fn prepare(proto: &Protocol, body: &[u8]) -> Result<Prepared, HttpError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| HttpError::new(HttpErrorKind::BadRequest, "body is not valid JSON"))?;
    let (items, single) = match v {
        Value::Array(a) => (a, false),
        other => (vec![other], true),
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(HttpError::new(
            HttpErrorKind::BadRequest,
            format!("send 1 to {MAX_BATCH} items"),
        ));
    }
    let mut prepared = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = |kind: HttpErrorKind, msg: &str| {
            HttpError::new(
                kind,
                if single {
                    msg.to_owned()
                } else {
                    format!("item {i}: {msg}")
                },
            )
        };
        prepared.push(prepare_item(proto, item, at)?);
    }
    Ok(Prepared {
        items: prepared,
        single,
    })
}

fn prepare_item(
    proto: &Protocol,
    item: Value,
    at: impl Fn(HttpErrorKind, &str) -> HttpError,
) -> Result<(String, Bytes), HttpError> {
    use HttpErrorKind::BadRequest;
    let Value::Object(mut obj) = item else {
        return Err(at(
            BadRequest,
            "expected an object with `room` and `message`",
        ));
    };
    let room = match obj.remove("room") {
        Some(Value::String(r)) if !r.is_empty() && r.len() <= MAX_ROOM_BYTES => r,
        _ => {
            return Err(at(
                BadRequest,
                "`room` must be a non-empty string of at most 256 bytes",
            ))
        }
    };
    let Some(Value::Object(msg)) = obj.remove("message") else {
        return Err(at(BadRequest, "`message` must be an object"));
    };
    let frame = encode_message(proto, &msg).map_err(|(kind, why)| at(kind, &why))?;
    Ok((room, frame))
}

/// A server message from outside (a publish, a Django channel-layer event): its `type` names a
/// declared server message, its fields match that message's schema; encoded with `type` first
/// and undeclared fields dropped. The error is the status class and the reason.
pub fn encode_message(
    proto: &Protocol,
    msg: &Map<String, Value>,
) -> Result<Bytes, (HttpErrorKind, String)> {
    use HttpErrorKind::{BadRequest, NotFound};
    let Some(Value::String(ty)) = msg.get("type") else {
        return Err((
            BadRequest,
            "`message.type` must name a server message".to_owned(),
        ));
    };
    let Some(&id) = proto.server_by_wire.get(ty.as_str()) else {
        return Err((NotFound, format!("unknown message type `{ty}`")));
    };
    server_frame(proto, id, msg)
        .map_err(|e| (BadRequest, format!("message does not match `{ty}`: {e}")))
}

/// The frame of server message `id` with the fields of `msg` (its `type`, if any, is
/// replaced by the message's wire type), or why `msg` does not match the message's schema.
/// Undeclared fields are dropped. Shared by [`encode_message`] and forward answers.
pub fn server_frame(
    proto: &Protocol,
    id: usize,
    msg: &Map<String, Value>,
) -> Result<Bytes, String> {
    let spec = &proto.messages[id];
    message::check(&spec.schema, msg, "").map_err(|e| e.describe())?;
    // `type` first, for humans reading frames.
    let mut ordered = Map::new();
    ordered.insert("type".into(), Value::String(spec.wire_type.clone()));
    for (k, v) in message::declared_fields(&spec.schema, msg) {
        if k != "type" {
            ordered.insert(k, v);
        }
    }
    Ok(crate::session::encode(&ordered))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::load_protocol;

    fn proto() -> Protocol {
        load_protocol(include_str!("../../protocol.toml")).unwrap()
    }

    fn payload(frame: &Bytes) -> Value {
        // Server frames are unmasked; these payloads are all under 126 bytes.
        assert!(frame[1] < 126);
        serde_json::from_slice(&frame[2..]).unwrap()
    }

    #[test]
    fn single_item_is_encoded_with_type_first_and_undeclared_fields_dropped() {
        let body = br#"{"room":"user:7","message":{"title":"Hi","type":"notification","message":"m","extra":1}}"#;
        let p = prepare(&proto(), body).unwrap();
        assert!(p.single);
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].0, "user:7");
        let v = payload(&p.items[0].1);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.remove(0), "type");
        keys.sort_unstable();
        assert_eq!(keys, ["message", "title"]);
    }

    #[test]
    fn a_bad_item_fails_the_batch_and_is_named() {
        let body = br#"[{"room":"user:1","message":{"type":"pong"}},{"room":"","message":{"type":"pong"}}]"#;
        let e = prepare(&proto(), body).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.message.starts_with("item 1: `room`"), "{}", e.message);
    }

    #[test]
    fn statuses_follow_the_blame() {
        let p = proto();
        let status = |body: &[u8]| prepare(&p, body).unwrap_err().status();
        assert_eq!(status(b"{"), 400);
        assert_eq!(status(b"[]"), 400);
        assert_eq!(status(br#"{"room":"r","message":{"type":"nope"}}"#), 404);
        // A client message is not publishable.
        assert_eq!(status(br#"{"room":"r","message":{"type":"ping"}}"#), 404);
        assert_eq!(
            status(br#"{"room":"r","message":{"type":"location_update","booking_id":"b","lat":91,"lng":0}}"#),
            400
        );
    }
}
