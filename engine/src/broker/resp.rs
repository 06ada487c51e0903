//! RESP, Redis's wire format (RESP2, and the RESP3 types a server may answer with), client
//! side and sans-IO: [`parse`] reads one reply or push from a buffer, [`encode`] writes one
//! command. Enough for PING, PUBLISH, SUBSCRIBE/UNSUBSCRIBE, SPUBLISH/SSUBSCRIBE, EVAL/EVALSHA
//! and the messages a subscribed connection receives.
//!
//! As in [`crate::ws::codec`], "need more bytes" is `Ok(None)`, never an error: a reply cut
//! anywhere by a short read parses once the rest arrives, with the same result. A server that
//! sends something no Redis sends is a [`RespError`], after which the connection is rebuilt.
//! Sizes and nesting are bounded so a broken peer cannot make the node allocate without end.

use bytes::Bytes;
use thiserror::Error;

/// Largest bulk string accepted (Redis's own `proto-max-bulk-len` default is 512 MiB; a Beacon
/// message is a WebSocket frame, bounded far below this).
pub const MAX_BULK: usize = 64 << 20;
/// Most elements in one aggregate (array, map, set, push).
pub const MAX_ELEMENTS: usize = 1 << 20;
/// Deepest nesting of aggregates; Beacon's replies nest at most twice.
pub const MAX_DEPTH: usize = 16;

/// One RESP value. Crosses shards (Send); in practice it lives on the shard that read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+OK`
    Simple(Bytes),
    /// `-ERR ...` or RESP3 `!` (blob error): the server refused a command.
    Error(Bytes),
    /// `:42`
    Int(i64),
    /// `$5\r\nhello`; `$-1` (RESP2 null bulk) is [`Value::Null`].
    Bulk(Bytes),
    /// `*n` (RESP2 array) or `~n` (RESP3 set); `*-1` is [`Value::Null`].
    Array(Vec<Value>),
    /// RESP3 `>n`: out-of-band data such as a subscribed channel's message.
    Push(Vec<Value>),
    /// RESP3 `%n`, as key-value pairs in the order sent.
    Map(Vec<(Value, Value)>),
    /// `_`, `$-1`, `*-1`
    Null,
    /// RESP3 `#t` / `#f`
    Bool(bool),
    /// RESP3 `,` (kept as its text: Beacon never computes with it) and `(` big numbers.
    Double(Bytes),
    /// RESP3 `=` verbatim string, its `txt:` prefix removed.
    Verbatim(Bytes),
}

impl Value {
    /// The bytes of a string-like value (simple, bulk, verbatim).
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Simple(b) | Value::Bulk(b) | Value::Verbatim(b) => Some(b),
            _ => None,
        }
    }

    /// The elements of an array or push: what a subscribed connection receives.
    pub fn as_items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) | Value::Push(v) => Some(v),
            _ => None,
        }
    }
}

/// The server sent something that is not RESP; the connection cannot be trusted further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RespError {
    #[error("unknown RESP type byte {0:#04x}")]
    UnknownType(u8),
    #[error("bad length or integer")]
    BadInteger,
    #[error("bulk string longer than the limit")]
    TooLong,
    #[error("aggregate with too many elements")]
    TooManyElements,
    #[error("aggregates nested too deeply")]
    TooDeep,
    #[error("missing CRLF")]
    MissingCrlf,
}

/// Parses one value from the start of `buf`: `Ok(Some((value, bytes used)))`, or `Ok(None)` when
/// `buf` holds only part of one.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    let mut pos = 0;
    match value(buf, &mut pos, 0)? {
        Some(v) => Ok(Some((v, pos))),
        None => Ok(None),
    }
}

/// The line starting at `*pos` (without CRLF), advancing past it; `None` when incomplete.
fn line<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, RespError> {
    let rest = &buf[*pos..];
    let Some(i) = rest.iter().position(|&b| b == b'\n') else {
        // A line of a sane reply is short; a peer streaming bytes without a newline is broken.
        if rest.len() > 64 * 1024 {
            return Err(RespError::MissingCrlf);
        }
        return Ok(None);
    };
    if i == 0 || rest[i - 1] != b'\r' {
        return Err(RespError::MissingCrlf);
    }
    *pos += i + 1;
    Ok(Some(&rest[..i - 1]))
}

fn int(s: &[u8]) -> Result<i64, RespError> {
    let t = std::str::from_utf8(s).map_err(|_| RespError::BadInteger)?;
    t.parse::<i64>().map_err(|_| RespError::BadInteger)
}

/// A declared count or length: -1 is null, anything else negative or over `max` is refused.
fn count(s: &[u8], max: usize, over: RespError) -> Result<Option<usize>, RespError> {
    match int(s)? {
        -1 => Ok(None),
        n if n < 0 => Err(RespError::BadInteger),
        n if n as u64 > max as u64 => Err(over),
        n => Ok(Some(n as usize)),
    }
}

fn value(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Value>, RespError> {
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    if !b"+-:$*_#,(!=%~>|".contains(&kind) {
        return Err(RespError::UnknownType(kind));
    }
    let start = *pos;
    *pos += 1;
    let Some(head) = line(buf, pos)? else {
        *pos = start;
        return Ok(None);
    };
    let v = match kind {
        b'+' => Value::Simple(Bytes::copy_from_slice(head)),
        b'-' => Value::Error(Bytes::copy_from_slice(head)),
        b':' => Value::Int(int(head)?),
        b'_' => {
            if !head.is_empty() {
                return Err(RespError::BadInteger);
            }
            Value::Null
        }
        b'#' => match head {
            b"t" => Value::Bool(true),
            b"f" => Value::Bool(false),
            _ => return Err(RespError::BadInteger),
        },
        b',' | b'(' => Value::Double(Bytes::copy_from_slice(head)),
        b'$' | b'!' | b'=' => {
            let Some(n) = count(head, MAX_BULK, RespError::TooLong)? else {
                if kind != b'$' {
                    return Err(RespError::BadInteger);
                }
                return Ok(Some(Value::Null));
            };
            if buf.len() < *pos + n + 2 {
                *pos = start;
                return Ok(None);
            }
            if &buf[*pos + n..*pos + n + 2] != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            let body = Bytes::copy_from_slice(&buf[*pos..*pos + n]);
            *pos += n + 2;
            match kind {
                b'$' => Value::Bulk(body),
                b'!' => Value::Error(body),
                // `=15\r\ntxt:Some string`: a three-letter format, a colon, then the text.
                _ if body.len() >= 4 && body[3] == b':' => Value::Verbatim(body.slice(4..)),
                _ => return Err(RespError::BadInteger),
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            if depth >= MAX_DEPTH {
                return Err(RespError::TooDeep);
            }
            let Some(n) = count(head, MAX_ELEMENTS, RespError::TooManyElements)? else {
                if kind != b'*' {
                    return Err(RespError::BadInteger);
                }
                return Ok(Some(Value::Null));
            };
            let pairs = matches!(kind, b'%' | b'|');
            let items = if pairs { n.saturating_mul(2) } else { n };
            // Never reserve what the peer merely declared: it may not send it.
            let mut out = Vec::with_capacity(items.min(64));
            for _ in 0..items {
                match value(buf, pos, depth + 1)? {
                    Some(v) => out.push(v),
                    None => {
                        *pos = start;
                        return Ok(None);
                    }
                }
            }
            match kind {
                b'>' => Value::Push(out),
                b'%' => {
                    let mut it = out.into_iter();
                    let mut m = Vec::with_capacity(n.min(64));
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        m.push((k, v));
                    }
                    Value::Map(m)
                }
                // An attribute annotates the value that follows it; Beacon has no use for it.
                b'|' => match value(buf, pos, depth)? {
                    Some(v) => v,
                    None => {
                        *pos = start;
                        return Ok(None);
                    }
                },
                _ => Value::Array(out),
            }
        }
        _ => unreachable!("type byte checked above"),
    };
    Ok(Some(v))
}

/// Appends one command as a RESP array of bulk strings (the form every Redis accepts).
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// What a subscribed connection was told. Borrowed from the parsed [`Value`].
#[derive(Debug, PartialEq)]
pub enum Pushed<'a> {
    /// `message` / `smessage`: a publication on `channel`.
    Message {
        channel: &'a Bytes,
        payload: &'a Bytes,
    },
    /// `subscribe` / `ssubscribe` confirmed for `channel`; `count`: channels now subscribed.
    Subscribed { channel: &'a Bytes, count: i64 },
    /// `unsubscribe` / `sunsubscribe` confirmed.
    Unsubscribed { channel: &'a Bytes, count: i64 },
    /// The answer to a PING sent while subscribed (`["pong", ""]` in RESP2, `+PONG` in RESP3).
    Pong,
    /// An error reply (a refused command).
    Error(&'a Bytes),
}

/// Reads a value a subscribed connection received; `None` for anything else (which Beacon
/// ignores, e.g. `pmessage` it never asked for).
pub fn pushed(v: &Value) -> Option<Pushed<'_>> {
    if let Value::Error(e) = v {
        return Some(Pushed::Error(e));
    }
    if let Value::Simple(s) = v {
        return s.eq_ignore_ascii_case(b"pong").then_some(Pushed::Pong);
    }
    let items = v.as_items()?;
    let kind = items.first()?.as_bytes()?;
    match (kind.as_ref(), items.len()) {
        (b"message" | b"smessage", 3) => Some(Pushed::Message {
            channel: items[1].as_bytes()?,
            payload: items[2].as_bytes()?,
        }),
        (b"subscribe" | b"ssubscribe", 3) | (b"unsubscribe" | b"sunsubscribe", 3) => {
            let channel = items[1].as_bytes()?;
            let Value::Int(count) = items[2] else {
                return None;
            };
            Some(if kind.ends_with(b"unsubscribe") {
                Pushed::Unsubscribed { channel, count }
            } else {
                Pushed::Subscribed { channel, count }
            })
        }
        (b"pong", _) => Some(Pushed::Pong),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn resp2_replies_parse() {
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Value::Simple(b("OK")), 5))
        );
        assert_eq!(
            parse(b"-ERR unknown\r\n").unwrap(),
            Some((Value::Error(b("ERR unknown")), 14))
        );
        assert_eq!(parse(b":-3\r\n").unwrap(), Some((Value::Int(-3), 5)));
        assert_eq!(
            parse(b"$5\r\nhe\r\no\r\n").unwrap(),
            Some((Value::Bulk(b("he\r\no")), 11))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Value::Null, 5)));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some((Value::Null, 5)));
        assert_eq!(parse(b"$0\r\n\r\n").unwrap(), Some((Value::Bulk(b("")), 6)));
        let msg = b"*3\r\n$7\r\nmessage\r\n$6\r\nbeacon\r\n$2\r\nhi\r\n";
        let (v, n) = parse(msg).unwrap().unwrap();
        assert_eq!(n, msg.len());
        assert_eq!(
            pushed(&v),
            Some(Pushed::Message {
                channel: &b("beacon"),
                payload: &b("hi")
            })
        );
    }

    #[test]
    fn resp3_types_parse() {
        let cases: &[(&[u8], Value)] = &[
            (b"_\r\n", Value::Null),
            (b"#t\r\n", Value::Bool(true)),
            (b",1.5\r\n", Value::Double(b("1.5"))),
            (
                b"(12345678901234567890\r\n",
                Value::Double(b("12345678901234567890")),
            ),
            (b"!3\r\nERR\r\n", Value::Error(b("ERR"))),
            (b"=8\r\ntxt:abcd\r\n", Value::Verbatim(b("abcd"))),
            (
                b"%1\r\n+a\r\n:1\r\n",
                Value::Map(vec![(Value::Simple(b("a")), Value::Int(1))]),
            ),
            (b"~1\r\n:1\r\n", Value::Array(vec![Value::Int(1)])),
            (b"|1\r\n+k\r\n+v\r\n:7\r\n", Value::Int(7)),
        ];
        for (wire, want) in cases {
            let (v, n) = parse(wire).unwrap().unwrap();
            assert_eq!(&v, want, "{:?}", String::from_utf8_lossy(wire));
            assert_eq!(n, wire.len());
        }
        let push = b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n";
        let (v, _) = parse(push).unwrap().unwrap();
        assert_eq!(
            pushed(&v),
            Some(Pushed::Subscribed {
                channel: &b("c"),
                count: 1
            })
        );
    }

    #[test]
    fn broken_peers_are_errors_not_panics() {
        assert_eq!(parse(b"?x\r\n"), Err(RespError::UnknownType(b'?')));
        assert_eq!(parse(b":abc\r\n"), Err(RespError::BadInteger));
        assert_eq!(parse(b"$-2\r\n"), Err(RespError::BadInteger));
        assert_eq!(parse(b"+OK\n"), Err(RespError::MissingCrlf));
        assert_eq!(parse(b"$2\r\nabcd"), Err(RespError::MissingCrlf));
        assert_eq!(
            parse(format!("${}\r\n", MAX_BULK + 1).as_bytes()),
            Err(RespError::TooLong)
        );
        assert_eq!(
            parse(format!("*{}\r\n", MAX_ELEMENTS + 1).as_bytes()),
            Err(RespError::TooManyElements)
        );
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()), Err(RespError::TooDeep));
        // A huge declared array is not allocated up front: it is just incomplete.
        assert_eq!(parse(b"*1000000\r\n:1\r\n"), Ok(None));
    }

    #[test]
    fn encode_writes_bulk_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"PUBLISH", b"ch", b"a\r\nb"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n");
        let (v, _) = parse(&out).unwrap().unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Bulk(b("PUBLISH")),
                Value::Bulk(b("ch")),
                Value::Bulk(b("a\r\nb"))
            ])
        );
    }

    /// Parses a stream fed in the given chunks the way a connection does: append, take every
    /// complete value, keep the rest.
    fn parse_chunked(stream: &[u8], cuts: &[usize]) -> Result<Vec<Value>, RespError> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut last = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        for p in points {
            buf.extend_from_slice(&stream[last..p]);
            last = p;
            while let Some((v, n)) = parse(&buf)? {
                out.push(v);
                buf.drain(..n);
            }
        }
        assert!(buf.is_empty(), "a complete stream left {} bytes", buf.len());
        Ok(out)
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            "[a-zA-Z ]{0,8}".prop_map(|s| Value::Simple(Bytes::from(s))),
            "[a-zA-Z ]{0,8}".prop_map(|s| Value::Error(Bytes::from(s))),
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Value::Bulk(v.into())),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec(inner, 0..5).prop_map(Value::Push),
            ]
        })
    }

    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Simple(s) => out.extend([b"+", &s[..], b"\r\n"].concat()),
            Value::Error(s) => out.extend([b"-", &s[..], b"\r\n"].concat()),
            Value::Int(i) => out.extend(format!(":{i}\r\n").bytes()),
            Value::Bulk(b) => {
                out.extend(format!("${}\r\n", b.len()).bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::Null => out.extend_from_slice(b"_\r\n"),
            Value::Bool(t) => out.extend_from_slice(if *t { b"#t\r\n" } else { b"#f\r\n" }),
            Value::Array(items) | Value::Push(items) => {
                let k = if matches!(v, Value::Push(_)) {
                    '>'
                } else {
                    '*'
                };
                out.extend(format!("{k}{}\r\n", items.len()).bytes());
                for i in items {
                    write(i, out);
                }
            }
            _ => unreachable!(),
        }
    }

    proptest! {
        /// However a stream of replies is cut into reads, it parses to the same values.
        #[test]
        fn split_reads_parse_the_same(
            values in proptest::collection::vec(arb_value(), 1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut stream = Vec::new();
            for v in &values {
                write(v, &mut stream);
            }
            prop_assert_eq!(parse_chunked(&stream, &cuts).unwrap(), values.clone());
            prop_assert_eq!(parse_chunked(&stream, &[]).unwrap(), values);
        }

        /// Arbitrary bytes never panic, and what parses consumed no more than was there.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((_, n))) = parse(&data) {
                prop_assert!(n <= data.len());
            }
        }
    }
}
