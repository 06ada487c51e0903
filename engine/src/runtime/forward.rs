//! Client messages handed to the app's backend (`forward_to`): the backend stores the
//! message and answers what to send (the stored message with its database id, a receipt),
//! or refuses it with an error the sender gets. Exists on every shard.
//!
//! Each connection that forwards gets a lane: a FIFO of its forwarded messages and one task
//! that sends them one at a time, so a connection's forwarded messages reach the backend and
//! their answers reach the room in the order it sent them. The lane's task awaits the
//! backend (through `backend.rs`: pooled connections, a cap on requests in flight per shard)
//! while the connection and the rest of the shard go on; its other messages are not held
//! back. A lane ends when it is empty, so an idle connection holds nothing here.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::backend::{self, Outcome};
use super::probe::{ForwardResult, Probe};
use super::router::{self, Traffic};
use super::shard::{CloseCmd, Conn, Shard};
use crate::protocol::{Forward, Protocol, Recipients, Unavailable};
use crate::publish::server_frame;
use crate::session::{Effect, ForwardCall};

/// Forwarded messages one connection may have unanswered (the one being sent and those
/// waiting behind it); past it a message is refused at once (counted as `overloaded`) rather
/// than queued without bound.
pub const MAX_QUEUED_PER_CONNECTION: usize = 16;

/// Carries out effects on a connection: `conn.rs`'s `apply`, handed in so this module sits
/// below the connection task.
pub type Apply = fn(&Rc<Shard>, &Conn, &mut Vec<Effect>);

thread_local! {
    /// Lanes by connection id (ids are never reused on a shard). An entry exists exactly
    /// while its lane task runs.
    static LANES: RefCell<foldhash::HashMap<u64, Lane>> = RefCell::new(Default::default());
}

/// One connection's unanswered forwards. Owned by the connection's shard.
#[derive(Default)]
struct Lane {
    waiting: VecDeque<ForwardCall>,
    /// The lane's task has one out to the backend.
    sending: bool,
}

impl Lane {
    fn unanswered(&self) -> usize {
        self.waiting.len() + usize::from(self.sending)
    }
}

/// Queues `call` on the connection's lane, starting the lane's task when it is idle.
pub fn submit(shard: &Rc<Shard>, conn: &Conn, mut call: ForwardCall, apply: Apply) {
    call.body
        .insert("room".into(), Value::String(conn.room.to_string()));
    let forward = call.forward;
    let queued = LANES.with(|l| {
        let mut lanes = l.borrow_mut();
        match lanes.get_mut(&conn.id) {
            Some(lane) if lane.unanswered() >= MAX_QUEUED_PER_CONNECTION => Queued::Full,
            Some(lane) => {
                lane.waiting.push_back(call);
                Queued::Behind
            }
            None => {
                let mut lane = Lane::default();
                lane.waiting.push_back(call);
                lanes.insert(conn.id, lane);
                Queued::Started
            }
        }
    });
    match queued {
        Queued::Started => {
            glommio::spawn_local(lane(shard.clone(), conn.id, conn.room.clone(), apply)).detach();
        }
        Queued::Behind => {}
        Queued::Full => {
            shard.probe.forwarded(ForwardResult::Overloaded);
            unavailable(shard, Some(conn), &shard.shared.proto.forwards[forward]);
        }
    }
}

enum Queued {
    /// The lane was idle: its task starts with this message.
    Started,
    /// Behind the messages the lane's task is sending.
    Behind,
    /// The lane is at its cap: refused.
    Full,
}

/// Sends a connection's forwards one at a time until its lane is empty.
async fn lane(shard: Rc<Shard>, conn_id: u64, room: Rc<str>, apply: Apply) {
    loop {
        let next = LANES.with(|l| {
            let mut lanes = l.borrow_mut();
            let lane = lanes.get_mut(&conn_id)?;
            let next = lane.waiting.pop_front();
            lane.sending = next.is_some();
            if next.is_none() {
                lanes.remove(&conn_id);
            }
            next
        });
        let Some(call) = next else {
            return;
        };
        let answer = ask(&shard, &call).await;
        finish(&shard, conn_id, &room, call, answer, apply);
    }
}

/// What the backend made of one forwarded message.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// 2xx: the answer's JSON object (`{}` for an empty body).
    Accepted(Map<String, Value>),
    /// 4xx: the error code and text for the sender.
    Refused(String, String),
    /// Nothing usable after every attempt.
    Unavailable,
    /// Not sent: the shard's cap on requests in flight.
    Overloaded,
}

async fn ask(shard: &Shard, call: &ForwardCall) -> Answer {
    let f = &shard.shared.proto.forwards[call.forward];
    let body = Value::Object(call.body.clone()).to_string();
    let timeout = Duration::from_millis(f.timeout_ms);
    for attempt in 0..=f.retries {
        if attempt > 0 {
            Probe::inc(&shard.probe.forward_retries, 1);
        }
        match backend::post(shard, &f.path, body.as_bytes(), timeout).await {
            Outcome::Answered(status, body) => match interpret(status, &body) {
                Some(a) => return a,
                None => continue,
            },
            Outcome::Failed => continue,
            Outcome::Overloaded => return Answer::Overloaded,
        }
    }
    tracing::warn!(forward = %f.name, "backend unavailable for a forwarded message");
    Answer::Unavailable
}

/// The forward contract: 2xx with a JSON object (or nothing) accepts; 4xx refuses with
/// `{"error": code, "message": text}`; `None` (5xx, anything else) is worth another try.
/// A 2xx whose body is not a JSON object is the backend's bug, not worth repeating.
fn interpret(status: u16, body: &[u8]) -> Option<Answer> {
    match status {
        200..=299 => Some(if body.iter().all(u8::is_ascii_whitespace) {
            Answer::Accepted(Map::new())
        } else {
            match serde_json::from_slice(body) {
                Ok(Value::Object(m)) => Answer::Accepted(m),
                _ => Answer::Unavailable,
            }
        }),
        400..=499 => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let text = |k: &str, default: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or(default)
                    .chars()
                    .take(512)
                    .collect::<String>()
            };
            Some(Answer::Refused(
                text("error", "refused"),
                text("message", "the backend refused this message"),
            ))
        }
        _ => None,
    }
}

/// The answer's `broadcast` and `reply` objects as frames of the forward's declared
/// messages, all checked before any is sent: an answer that does not fit is the backend's
/// bug, and none of it goes out.
fn answer_frames(
    proto: &Protocol,
    f: &Forward,
    answer: &Map<String, Value>,
) -> Result<(Option<Bytes>, Option<Bytes>), String> {
    let frame = |key: &str, declared: Option<usize>| -> Result<Option<Bytes>, String> {
        match (answer.get(key), declared) {
            (None | Some(Value::Null), _) => Ok(None),
            (Some(Value::Object(m)), Some(id)) => server_frame(proto, id, m)
                .map(Some)
                .map_err(|e| format!("`{key}` does not match `{}`: {e}", proto.messages[id].name)),
            (Some(Value::Object(_)), None) => {
                Err(format!("`{key}` is not declared for this forward"))
            }
            (Some(_), _) => Err(format!("`{key}` is not an object")),
        }
    };
    Ok((
        frame("broadcast", f.broadcast.as_ref().map(|b| b.send))?,
        frame("reply", f.reply)?,
    ))
}

fn finish(
    shard: &Rc<Shard>,
    conn_id: u64,
    room: &str,
    mut call: ForwardCall,
    answer: Answer,
    apply: Apply,
) {
    let proto = &shard.shared.proto;
    let f = &proto.forwards[call.forward];
    // The sender may have gone while the backend answered: what goes to the room still goes.
    let conn = shard.conn(conn_id);
    let answer = match answer {
        Answer::Accepted(a) => match answer_frames(proto, f, &a) {
            Ok(frames) => Ok(frames),
            Err(why) => {
                tracing::warn!(forward = %f.name, %why, "unusable backend answer");
                Err(Answer::Unavailable)
            }
        },
        other => Err(other),
    };
    if conn.is_none() {
        // Nobody to hand these to: count what was addressed to the sender, not carried out.
        let lost = match &answer {
            Ok((_, reply)) => call.then.len() + usize::from(reply.is_some()),
            Err(Answer::Refused(..)) => usize::from(proto.error_reply.is_some()),
            Err(_) => usize::from(matches!(f.unavailable, Unavailable::Error(_))),
        };
        Probe::inc(&shard.probe.forward_sender_gone, lost as u64);
    }
    match answer {
        Ok((broadcast, reply)) => {
            shard.probe.forwarded(ForwardResult::Accepted);
            if let Some(conn) = &conn {
                apply(shard, conn, &mut call.then);
            }
            if let (Some(frame), Some(b)) = (broadcast, &f.broadcast) {
                let exclude = (b.recipients == Recipients::ExcludeSender).then_some(conn_id);
                match &call.room {
                    // The home room: through the broker when clustered, so members on other
                    // nodes hear it too.
                    None => {
                        router::deliver_home(shard, room, &frame, exclude);
                    }
                    Some(r) => {
                        router::deliver(shard, r, frame, exclude, Traffic::Broadcast);
                    }
                }
            }
            if let (Some(frame), Some(conn)) = (reply, &conn) {
                send(shard, conn, &frame);
            }
        }
        Err(Answer::Refused(code, text)) => {
            shard.probe.forwarded(ForwardResult::Refused);
            if let Some(conn) = &conn {
                if let Some(frame) = error_frame(proto, &code, &text) {
                    send(shard, conn, &frame);
                }
            }
        }
        Err(Answer::Overloaded) => {
            shard.probe.forwarded(ForwardResult::Overloaded);
            unavailable(shard, conn.as_deref(), f);
        }
        Err(_) => {
            shard.probe.forwarded(ForwardResult::Unavailable);
            unavailable(shard, conn.as_deref(), f);
        }
    }
}

/// The sender of a message the backend did not take gets the forward's declared error or
/// close.
fn unavailable(shard: &Shard, conn: Option<&Conn>, f: &Forward) {
    let Some(conn) = conn else {
        return;
    };
    match &f.unavailable {
        Unavailable::Error(code) => {
            let text = "the backend could not take this message; try again later";
            if let Some(frame) = error_frame(&shard.shared.proto, code, text) {
                send(shard, conn, &frame);
            }
        }
        Unavailable::Close(id) => conn.request_close(CloseCmd::Declared(*id)),
    }
}

/// The protocol's error reply (`[errors] reply`) with this code and text.
fn error_frame(proto: &Protocol, code: &str, text: &str) -> Option<Bytes> {
    let id = proto.error_reply?;
    let mut m = Map::new();
    m.insert("code".into(), Value::String(code.to_owned()));
    m.insert("message".into(), Value::String(text.to_owned()));
    server_frame(proto, id, &m).ok()
}

fn send(shard: &Shard, conn: &Conn, frame: &Bytes) {
    if conn.enqueue(frame, &shard.shared, &shard.probe) {
        Probe::inc(&shard.probe.messages_out, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forward_contract() {
        let ok = |b: &[u8]| interpret(200, b);
        assert_eq!(ok(b""), Some(Answer::Accepted(Map::new())));
        assert_eq!(ok(b" \n"), Some(Answer::Accepted(Map::new())));
        match ok(br#"{"broadcast":{"a":1}}"#) {
            Some(Answer::Accepted(m)) => assert!(m.contains_key("broadcast")),
            other => panic!("{other:?}"),
        }
        assert_eq!(ok(b"[1]"), Some(Answer::Unavailable));
        assert_eq!(interpret(204, b""), Some(Answer::Accepted(Map::new())));
        assert_eq!(
            interpret(
                403,
                br#"{"error":"not_author","message":"only its author"}"#
            ),
            Some(Answer::Refused(
                "not_author".into(),
                "only its author".into()
            ))
        );
        assert_eq!(
            interpret(404, b"<html>"),
            Some(Answer::Refused(
                "refused".into(),
                "the backend refused this message".into()
            ))
        );
        // Worth another try.
        assert_eq!(interpret(500, b"{}"), None);
        assert_eq!(interpret(503, b""), None);
        assert_eq!(interpret(302, b""), None);
    }
}
