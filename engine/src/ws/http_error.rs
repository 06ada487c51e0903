//! Every HTTP error answer Beacon sends, sans-IO: one type classified by what the client has to
//! do about it, and one table from that to the status and the header the status obliges. The
//! body is always `{"error": "<message>", "status": <status>}`, plus `"retry_after": <s>` when
//! the answer carries `Retry-After`, so a client reads one shape from every route.
//!
//! Parsers keep their own blame-classified errors ([`super::http::HeadError`],
//! [`super::handshake::HandshakeError`]) and convert into [`HttpError`] at the edge.

use std::borrow::Cow;

use super::handshake::http_response;

/// What the client has to do, which decides the status. Plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpErrorKind {
    /// The request or its body breaks a rule: fix it before sending it again.
    BadRequest,
    /// No credentials, or ones that do not verify: authenticate (`WWW-Authenticate: Bearer`).
    Unauthorized,
    /// Authenticated, or not needing to be, but refused.
    Forbidden,
    NotFound,
    /// The path serves another method, named in `Allow`.
    MethodNotAllowed {
        allow: &'static str,
    },
    /// The head or body did not arrive within its deadline.
    Timeout,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// A WebSocket version other than 13: RFC 6455 §4.4 names the one we speak.
    UpgradeRequired,
    /// This caller is over its limit; the same request succeeds after `retry_after_s`.
    TooManyRequests {
        retry_after_s: u64,
    },
    HeadTooLarge,
    /// The server's fault: retrying will not help until it is fixed.
    Internal,
    /// HTTP the server does not implement (Transfer-Encoding).
    NotImplemented,
    /// The server is busy or shutting down; the same request may succeed after
    /// `retry_after_s`, here or on another node.
    Overloaded {
        retry_after_s: u64,
    },
    /// Switched off or not answering; no time to retry after can be promised.
    Unavailable,
    VersionNotSupported,
}

/// The header a status obliges, if any.
enum Obliged {
    None,
    Fixed(&'static str, &'static str),
    RetryAfter(u64),
}

impl HttpErrorKind {
    /// The one table: status, and the header RFC 9110 (or RFC 6455) says goes with it.
    fn table(self) -> (u16, Obliged) {
        use HttpErrorKind::*;
        match self {
            BadRequest => (400, Obliged::None),
            Unauthorized => (401, Obliged::Fixed("WWW-Authenticate", "Bearer")),
            Forbidden => (403, Obliged::None),
            NotFound => (404, Obliged::None),
            MethodNotAllowed { allow } => (405, Obliged::Fixed("Allow", allow)),
            Timeout => (408, Obliged::None),
            PayloadTooLarge => (413, Obliged::None),
            UnsupportedMediaType => (415, Obliged::None),
            UpgradeRequired => (426, Obliged::Fixed("Sec-WebSocket-Version", "13")),
            TooManyRequests { retry_after_s } => (429, Obliged::RetryAfter(retry_after_s)),
            HeadTooLarge => (431, Obliged::None),
            Internal => (500, Obliged::None),
            NotImplemented => (501, Obliged::None),
            Overloaded { retry_after_s } => (503, Obliged::RetryAfter(retry_after_s)),
            Unavailable => (503, Obliged::None),
            VersionNotSupported => (505, Obliged::None),
        }
    }

    pub fn status(self) -> u16 {
        self.table().0
    }
}

/// An HTTP error answer: its kind and the message for the body. Plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub kind: HttpErrorKind,
    pub message: Cow<'static, str>,
}

impl HttpError {
    pub fn new(kind: HttpErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        HttpError {
            kind,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The header the status obliges, e.g. `("Retry-After", "1")`.
    pub fn header(&self) -> Option<(&'static str, Cow<'static, str>)> {
        match self.kind.table().1 {
            Obliged::None => None,
            Obliged::Fixed(name, value) => Some((name, Cow::Borrowed(value))),
            Obliged::RetryAfter(s) => Some(("Retry-After", Cow::Owned(s.to_string()))),
        }
    }

    /// The JSON body, `application/json`.
    pub fn body(&self) -> Vec<u8> {
        let mut body = String::with_capacity(self.message.len() + 48);
        body.push_str("{\"error\": \"");
        json_escape_into(&mut body, &self.message);
        body.push_str("\", \"status\": ");
        body.push_str(&self.status().to_string());
        if let Obliged::RetryAfter(s) = self.kind.table().1 {
            body.push_str(", \"retry_after\": ");
            body.push_str(&s.to_string());
        }
        body.push('}');
        body.into_bytes()
    }

    /// The complete response; the connection closes after it, since the server may not have
    /// read the whole request.
    pub fn response(&self) -> Vec<u8> {
        let header = self.header();
        let extra: Vec<(&str, &str)> = header.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        http_response(
            self.status(),
            "application/json",
            &self.body(),
            &extra,
            true,
        )
    }
}

/// Whole seconds for `Retry-After` from a wait in milliseconds: rounded up, and never 0, which
/// a client would read as "retry at once".
pub fn retry_after_s(wait_ms: u64) -> u64 {
    wait_ms.div_ceil(1000).max(1)
}

fn json_escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let n = u32::from(c) as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[n >> 4]));
                out.push(char::from(HEX[n & 0xf]));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use HttpErrorKind::*;

    #[test]
    fn every_kind_has_one_status_and_its_obliged_header() {
        type Header = Option<(&'static str, &'static str)>;
        let table: &[(HttpErrorKind, u16, Header)] = &[
            (BadRequest, 400, None),
            (Unauthorized, 401, Some(("WWW-Authenticate", "Bearer"))),
            (Forbidden, 403, None),
            (NotFound, 404, None),
            (
                MethodNotAllowed { allow: "POST" },
                405,
                Some(("Allow", "POST")),
            ),
            (Timeout, 408, None),
            (PayloadTooLarge, 413, None),
            (UnsupportedMediaType, 415, None),
            (UpgradeRequired, 426, Some(("Sec-WebSocket-Version", "13"))),
            (
                TooManyRequests { retry_after_s: 5 },
                429,
                Some(("Retry-After", "5")),
            ),
            (HeadTooLarge, 431, None),
            (Internal, 500, None),
            (NotImplemented, 501, None),
            (
                Overloaded { retry_after_s: 1 },
                503,
                Some(("Retry-After", "1")),
            ),
            (Unavailable, 503, None),
            (VersionNotSupported, 505, None),
        ];
        for &(kind, status, header) in table {
            let e = HttpError::new(kind, "m");
            assert_eq!(e.status(), status, "{kind:?}");
            let got = e.header();
            assert_eq!(
                got.as_ref().map(|(n, v)| (*n, v.as_ref())),
                header,
                "{kind:?}"
            );
            let text = String::from_utf8(e.response()).expect("utf8");
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
            assert!(
                !super::super::handshake::reason_phrase(status).is_empty(),
                "{status}"
            );
            if let Some((n, v)) = header {
                assert!(text.contains(&format!("\r\n{n}: {v}\r\n")), "{text}");
            }
        }
    }

    #[test]
    fn body_shape_is_error_and_status_plus_retry_after_when_it_is_sent() {
        let body = |e: HttpError| serde_json::from_slice::<Value>(&e.body()).expect("json");
        assert_eq!(
            body(HttpError::new(NotFound, "not found")),
            json!({"error": "not found", "status": 404})
        );
        assert_eq!(
            body(HttpError::new(
                TooManyRequests { retry_after_s: 2 },
                "rate limit exceeded"
            )),
            json!({"error": "rate limit exceeded", "status": 429, "retry_after": 2})
        );
        // Field order is part of what humans and snapshot tests read.
        assert_eq!(
            HttpError::new(Overloaded { retry_after_s: 1 }, "x").body(),
            br#"{"error": "x", "status": 503, "retry_after": 1}"#
        );
    }

    #[test]
    fn message_is_escaped_and_the_response_is_framed() {
        let message = "bad \"thing\" \\ here\n\u{1}é";
        let text = String::from_utf8(HttpError::new(BadRequest, message).response()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("head/body split");
        assert!(head.contains("Content-Type: application/json"));
        assert!(head.contains("Connection: close"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let value: Value = serde_json::from_str(body).expect("valid json");
        assert_eq!(value["error"], message);
        assert_eq!(value["status"], 400);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_never_zero() {
        for (ms, s) in [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (1500, 2)] {
            assert_eq!(retry_after_s(ms), s, "{ms}");
        }
    }
}
