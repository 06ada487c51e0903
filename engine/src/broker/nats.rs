//! The core NATS client protocol, sans-IO: [`parse`] reads one server operation (`INFO`,
//! `MSG`, `PING`, `PONG`, `+OK`, `-ERR`) from a buffer; the `encode_*` functions write the
//! client's (`CONNECT`, `PUB`, `SUB`, `UNSUB`, `PING`, `PONG`). Subjects for room names come
//! from [`room_subject`], which escapes a room name into one valid subject token.
//!
//! As in [`super::resp`], "need more bytes" is `Ok(None)`; anything a NATS server does not send
//! is a [`NatsError`], after which the connection is rebuilt.

use bytes::Bytes;
use thiserror::Error;

/// Largest payload accepted (the server's own `max_payload` defaults to 1 MiB).
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Longest control line accepted (NATS's own limit is 4 KiB by default).
const MAX_LINE: usize = 64 * 1024;

/// One operation from the server. Crosses shards (Send); lives on the shard that read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The server's `INFO {json}`, as sent.
    Info(Bytes),
    /// A message on a subscription.
    Msg {
        subject: Bytes,
        sid: u64,
        reply: Option<Bytes>,
        payload: Bytes,
    },
    Ping,
    Pong,
    Ok,
    /// `-ERR 'reason'`, quotes removed.
    Err(Bytes),
}

/// The server sent something that is not the NATS protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NatsError {
    #[error("unknown operation")]
    UnknownOp,
    #[error("bad MSG arguments")]
    BadMsg,
    #[error("payload longer than the limit")]
    TooLong,
    #[error("control line longer than the limit")]
    LineTooLong,
    #[error("payload not followed by CRLF")]
    MissingCrlf,
}

/// Parses one operation from the start of `buf`: `Ok(Some((op, bytes used)))`, or `Ok(None)`
/// when `buf` holds only part of one.
pub fn parse(buf: &[u8]) -> Result<Option<(Op, usize)>, NatsError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(NatsError::LineTooLong);
        }
        return Ok(None);
    };
    if nl > MAX_LINE {
        return Err(NatsError::LineTooLong);
    }
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let used = nl + 1;
    let (verb, rest) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], trim(&line[i + 1..])),
        None => (line, &line[line.len()..]),
    };
    let op = if verb.eq_ignore_ascii_case(b"MSG") {
        let args: Vec<&[u8]> = rest
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|a| !a.is_empty())
            .collect();
        let (subject, sid, reply, len) = match args.as_slice() {
            [s, sid, len] => (*s, *sid, None, *len),
            [s, sid, r, len] => (*s, *sid, Some(*r), *len),
            _ => return Err(NatsError::BadMsg),
        };
        let sid = number(sid).ok_or(NatsError::BadMsg)?;
        let len = number(len).ok_or(NatsError::BadMsg)? as usize;
        if len > MAX_PAYLOAD {
            return Err(NatsError::TooLong);
        }
        if buf.len() < used + len + 2 {
            return Ok(None);
        }
        if &buf[used + len..used + len + 2] != b"\r\n" {
            return Err(NatsError::MissingCrlf);
        }
        let op = Op::Msg {
            subject: Bytes::copy_from_slice(subject),
            sid,
            reply: reply.map(Bytes::copy_from_slice),
            payload: Bytes::copy_from_slice(&buf[used..used + len]),
        };
        return Ok(Some((op, used + len + 2)));
    } else if verb.eq_ignore_ascii_case(b"PING") {
        Op::Ping
    } else if verb.eq_ignore_ascii_case(b"PONG") {
        Op::Pong
    } else if verb.eq_ignore_ascii_case(b"+OK") {
        Op::Ok
    } else if verb.eq_ignore_ascii_case(b"-ERR") {
        let r = rest.strip_prefix(b"'").unwrap_or(rest);
        Op::Err(Bytes::copy_from_slice(r.strip_suffix(b"'").unwrap_or(r)))
    } else if verb.eq_ignore_ascii_case(b"INFO") {
        Op::Info(Bytes::copy_from_slice(rest))
    } else {
        return Err(NatsError::UnknownOp);
    };
    Ok(Some((op, used)))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// `CONNECT` for a client that wants no `+OK` per command, and its own messages echoed (the
/// node reads its own publications back, like every other node's).
/// `CONNECT`: with a user, `user` and `pass`; with a password alone, it is a token.
pub fn encode_connect(out: &mut Vec<u8>, name: &str, user: Option<&str>, password: Option<&str>) {
    let mut o = serde_json::json!({
        "verbose": false, "pedantic": false, "echo": true, "headers": false,
        "lang": "rust", "version": env!("CARGO_PKG_VERSION"), "name": name, "protocol": 1,
    });
    match (user, password) {
        (Some(u), p) => {
            o["user"] = u.into();
            o["pass"] = p.unwrap_or_default().into();
        }
        (None, Some(p)) => o["auth_token"] = p.into(),
        (None, None) => {}
    }
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(o.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn encode_pub(out: &mut Vec<u8>, subject: &[u8], payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject);
    out.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

pub fn encode_sub(out: &mut Vec<u8>, subject: &[u8], sid: u64) {
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject);
    out.extend_from_slice(format!(" {sid}\r\n").as_bytes());
}

pub fn encode_unsub(out: &mut Vec<u8>, sid: u64) {
    out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
}

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// Whether `b` may stand for itself in an escaped subject token. Everything else (the
/// separator `.`, the wildcards `*` and `>`, whitespace, control bytes, non-ASCII, and `%`
/// itself) is written `%XX`.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'=' | b'@' | b'+' | b',')
}

/// The subject of `room`: `<prefix>.room.<room as one escaped token>`. An empty room name is
/// the token `%`, which no escaped name can produce.
pub fn room_subject(prefix: &str, room: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 6 + room.len());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b".room.");
    if room.is_empty() {
        out.push(b'%');
    }
    for &b in room.as_bytes() {
        if plain(b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// The room a subject made by [`room_subject`] carries; `None` for any other subject.
pub fn subject_room(prefix: &str, subject: &[u8]) -> Option<String> {
    let token = subject
        .strip_prefix(prefix.as_bytes())?
        .strip_prefix(b".room.")?;
    match token {
        b"%" => return Some(String::new()),
        b"" => return None,
        _ => {}
    }
    let mut out = Vec::with_capacity(token.len());
    let mut i = 0;
    while i < token.len() {
        match token[i] {
            b'%' => {
                // Only the form `room_subject` writes (upper-case hex, never a plain byte), so
                // one room has exactly one subject.
                let hex = token.get(i + 1..i + 3)?;
                if !hex
                    .iter()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h))
                {
                    return None;
                }
                let b = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                if plain(b) {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn server_operations_parse() {
        let info = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n";
        assert_eq!(
            parse(info).unwrap(),
            Some((
                Op::Info(b("{\"server_id\":\"x\",\"max_payload\":1048576}")),
                info.len()
            ))
        );
        assert_eq!(parse(b"PING\r\n").unwrap(), Some((Op::Ping, 6)));
        assert_eq!(parse(b"pong\r\n").unwrap(), Some((Op::Pong, 6)));
        assert_eq!(parse(b"+OK\r\n").unwrap(), Some((Op::Ok, 5)));
        assert_eq!(
            parse(b"-ERR 'Authorization Violation'\r\n")
                .unwrap()
                .unwrap()
                .0,
            Op::Err(b("Authorization Violation"))
        );
        let msg = b"MSG beacon.room.a 7 5\r\nhe\r\no\r\n";
        assert_eq!(
            parse(msg).unwrap(),
            Some((
                Op::Msg {
                    subject: b("beacon.room.a"),
                    sid: 7,
                    reply: None,
                    payload: b("he\r\no")
                },
                msg.len()
            ))
        );
        let (op, _) = parse(b"MSG s 1 _INBOX.x 0\r\n\r\n").unwrap().unwrap();
        assert!(matches!(op, Op::Msg { reply: Some(r), .. } if r == b("_INBOX.x")));
    }

    #[test]
    fn partial_input_waits_and_garbage_is_an_error() {
        let msg = b"MSG s 1 3\r\nabc\r\n";
        for cut in 0..msg.len() {
            assert_eq!(parse(&msg[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse(b"HELLO\r\n"), Err(NatsError::UnknownOp));
        assert_eq!(parse(b"MSG s x 3\r\nabc\r\n"), Err(NatsError::BadMsg));
        assert_eq!(parse(b"MSG s 1\r\n"), Err(NatsError::BadMsg));
        assert_eq!(parse(b"MSG s 1 3\r\nabcd\r\n"), Err(NatsError::MissingCrlf));
        assert_eq!(
            parse(format!("MSG s 1 {}\r\n", MAX_PAYLOAD + 1).as_bytes()),
            Err(NatsError::TooLong)
        );
    }

    #[test]
    fn client_operations_encode() {
        let mut o = Vec::new();
        encode_pub(&mut o, b"a.b", b"xy");
        encode_sub(&mut o, b"a.b", 3);
        encode_unsub(&mut o, 3);
        assert_eq!(o, b"PUB a.b 2\r\nxy\r\nSUB a.b 3\r\nUNSUB 3\r\n");
        let mut c = Vec::new();
        encode_connect(&mut c, "beacon-n1-0", None, Some("s3cret"));
        let line = std::str::from_utf8(&c).unwrap();
        assert!(
            line.starts_with("CONNECT {") && line.ends_with("}\r\n"),
            "{line}"
        );
        assert!(line.contains("\"verbose\":false") && line.contains("\"auth_token\":\"s3cret\""));
        let mut c = Vec::new();
        encode_connect(&mut c, "n", Some("app"), Some("pw"));
        let line = std::str::from_utf8(&c).unwrap();
        assert!(
            line.contains("\"user\":\"app\"")
                && line.contains("\"pass\":\"pw\"")
                && !line.contains("auth_token"),
            "{line}"
        );
    }

    #[test]
    fn room_names_become_one_subject_token() {
        let s = room_subject("beacon", "booking:42");
        assert_eq!(s, b"beacon.room.booking:42");
        let s = room_subject("beacon", "a.b *>% c\u{e9}");
        assert_eq!(s, b"beacon.room.a%2Eb%20%2A%3E%25%20c%C3%A9");
        assert_eq!(
            subject_room("beacon", &s).as_deref(),
            Some("a.b *>% c\u{e9}")
        );
        assert_eq!(
            subject_room("beacon", &room_subject("beacon", "")).as_deref(),
            Some("")
        );
        assert_eq!(subject_room("beacon", b"beacon.node.n1.0"), None);
        assert_eq!(subject_room("beacon", b"beacon.room.a.b"), None);
        // Non-canonical escapes name no room: one room, one subject.
        assert_eq!(subject_room("beacon", b"beacon.room.a%2eb"), None);
        assert_eq!(subject_room("beacon", b"beacon.room.%41"), None);
        assert_eq!(subject_room("beacon", b"beacon.room."), None);
    }

    proptest! {
        /// Escaping is reversible and never yields a separator, wildcard or space.
        #[test]
        fn subjects_round_trip(room in ".{0,40}") {
            let s = room_subject("p", &room);
            let token = &s[b"p.room.".len()..];
            prop_assert!(!token.is_empty());
            prop_assert!(token.iter().all(|b| b.is_ascii_graphic() && !b".*>".contains(b)));
            prop_assert_eq!(subject_room("p", &s), Some(room));
        }

        /// However a stream of messages is cut, it parses to the same operations.
        #[test]
        fn split_reads_parse_the_same(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut stream = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                stream.extend_from_slice(format!("MSG s.{i} {i} {}\r\n", p.len()).as_bytes());
                stream.extend_from_slice(p);
                stream.extend_from_slice(b"\r\nPING\r\n");
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.push(stream.len());
            points.sort_unstable();
            let (mut buf, mut out, mut last) = (Vec::new(), Vec::new(), 0);
            for p in points {
                buf.extend_from_slice(&stream[last..p]);
                last = p;
                while let Some((op, n)) = parse(&buf).unwrap() {
                    out.push(op);
                    buf.drain(..n);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out.len(), payloads.len() * 2);
            for (i, p) in payloads.iter().enumerate() {
                match &out[2 * i] {
                    Op::Msg { sid, payload, .. } => {
                        prop_assert_eq!(*sid, i as u64);
                        prop_assert_eq!(&payload[..], &p[..]);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
                prop_assert_eq!(&out[2 * i + 1], &Op::Ping);
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((_, n))) = parse(&data) {
                prop_assert!(n <= data.len() && n > 0);
            }
        }
    }
}
