//! HTTP/1.1 request-head parsing on top of `httparse`.
//!
//! The parser only looks at the head; whatever follows it (a request body, or WebSocket frames a
//! client pipelined behind its upgrade request) stays in the caller's buffer from
//! [`RequestHead::head_len`] on, so nothing read from the socket is lost in the hand-off.

use thiserror::Error;

use super::http_error::{HttpError, HttpErrorKind};

/// Bounds on a request head, so a client cannot make the server buffer or scan without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head (request line + headers + blank line) accepted, in bytes.
    pub max_head_bytes: usize,
    /// Most header lines accepted.
    pub max_headers: usize,
}

impl HeadLimits {
    /// What the engine's front door accepts: room for a long token in the query string or a
    /// `Sec-WebSocket-Protocol` header, and no more.
    pub const SERVER: HeadLimits = HeadLimits {
        max_head_bytes: 16 * 1024,
        max_headers: 64,
    };
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8192,
            max_headers: 64,
        }
    }
}

/// Outcome of one parse attempt; `Partial` means "read more and call again".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadParse {
    Partial,
    Complete(RequestHead),
}

/// Request method; `Other` covers extension methods, which no Beacon route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Head,
    Options,
    Patch,
    Other,
}

impl Method {
    fn from_token(token: &str) -> Self {
        // Methods are case-sensitive (RFC 9110 §9.1): `get` is not GET.
        match token {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// A parsed request head, owned so the read buffer can be reused or handed to another shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// Raw (not percent-decoded) path, without the query.
    pub path: String,
    /// Raw query string after the first `?`, if any.
    pub query: Option<String>,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor_version: u8,
    /// Header names lowercased; values decoded as lossy UTF-8, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Bytes the head occupies at the start of the buffer; the body starts here.
    pub head_len: usize,
}

/// A request head the server refuses, classified by blame; each maps to one [`HttpErrorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HeadError {
    #[error("malformed request head")]
    Malformed,
    #[error("request head too large")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("HTTP version not supported")]
    UnsupportedVersion,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("Transfer-Encoding is not supported")]
    TransferEncodingUnsupported,
    #[error("request body too large")]
    BodyTooLarge,
}

impl HeadError {
    /// What the client has to do about it, which decides the status.
    pub fn kind(&self) -> HttpErrorKind {
        match self {
            HeadError::Malformed | HeadError::BadContentLength => HttpErrorKind::BadRequest,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => HttpErrorKind::HeadTooLarge,
            HeadError::UnsupportedVersion => HttpErrorKind::VersionNotSupported,
            HeadError::TransferEncodingUnsupported => HttpErrorKind::NotImplemented,
            HeadError::BodyTooLarge => HttpErrorKind::PayloadTooLarge,
        }
    }

    /// A short, fixed explanation fit for a response body.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::Malformed => "malformed request head",
            HeadError::HeadTooLarge => "request head too large",
            HeadError::TooManyHeaders => "too many header fields",
            HeadError::UnsupportedVersion => "HTTP version not supported",
            HeadError::BadContentLength => "invalid Content-Length",
            HeadError::TransferEncodingUnsupported => "Transfer-Encoding is not supported",
            HeadError::BodyTooLarge => "request body too large",
        }
    }
}

impl From<HeadError> for HttpError {
    fn from(e: HeadError) -> Self {
        HttpError::new(e.kind(), e.reason())
    }
}

/// Parses the request head at the start of `buf`.
///
/// Only the first `max_head_bytes` are ever scanned, so a client trickling an endless head costs
/// bounded work per call and is refused with 431 once it passes the limit.
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<HeadParse, HeadError> {
    let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut slots);
    let status = match req.parse(window) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::UnsupportedVersion),
        Err(_) => return Err(HeadError::Malformed),
    };
    let head_len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= limits.max_head_bytes => {
            return Err(HeadError::HeadTooLarge)
        }
        httparse::Status::Partial => return Ok(HeadParse::Partial),
    };
    // A complete parse always fills these three; treat absence as malformed rather than trust it.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    let minor_version = match version {
        0 => 0,
        1 => 1,
        _ => return Err(HeadError::UnsupportedVersion),
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };
    let headers = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok(HeadParse::Complete(RequestHead {
        method: Method::from_token(method),
        path,
        query,
        minor_version,
        headers,
        head_len,
    }))
}

impl RequestHead {
    /// First value of a header; `name_lowercase` must already be lowercase.
    pub fn header(&self, name_lowercase: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(name, _)| name == name_lowercase)
            .map(|(_, value)| value.trim())
    }

    /// Every value of a header, in arrival order (repeated headers are legal, e.g. protocols).
    pub fn header_all<'a>(&'a self, name_lowercase: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(name, _)| name == name_lowercase)
            .map(|(_, value)| value.trim())
    }

    /// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1); the scheme is
    /// case-insensitive (RFC 9110 §11.1). `None` for another scheme or an empty token, so a
    /// caller never has to tell "no token" from "blank token".
    pub fn bearer_token(&self) -> Option<&str> {
        let (scheme, token) = self.header("authorization")?.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    /// The declared body length; `None` when the request carries no body framing at all.
    ///
    /// Conflicting or non-numeric lengths, and any Transfer-Encoding (which Beacon does not
    /// decode), are refused: accepting them is how request smuggling starts.
    pub fn content_length(&self) -> Result<Option<usize>, HeadError> {
        if self.header("transfer-encoding").is_some() {
            return Err(HeadError::TransferEncodingUnsupported);
        }
        let mut found: Option<usize> = None;
        for value in self.header_all("content-length") {
            for item in value.split(',') {
                let item = item.trim();
                if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HeadError::BadContentLength);
                }
                let len: usize = item.parse().map_err(|_| HeadError::BadContentLength)?;
                match found {
                    Some(prev) if prev != len => return Err(HeadError::BadContentLength),
                    _ => found = Some(len),
                }
            }
        }
        Ok(found)
    }

    /// The percent-decoded value of the first query parameter named `name`
    /// (form encoding: `+` is a space); `Some("")` for a bare `?name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .find_map(|pair| {
                let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(raw_name) == name).then(|| percent_decode(raw_value))
            })
    }
}

/// Form-style percent decoding; malformed escapes are kept literally, never rejected.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                bytes.get(i + 1).and_then(|&h| hex_value(h)),
                bytes.get(i + 2).and_then(|&l| hex_value(l)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> RequestHead {
        match parse_head(raw, &HeadLimits::default()) {
            Ok(HeadParse::Complete(head)) => head,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_full_head_and_keeps_trailing_bytes() {
        let raw = b"GET /ws/booking/42?token=a%20b&x=1 HTTP/1.1\r\nHost: h\r\nX-Multi: a\r\nx-multi: b\r\n\r\n\x81\x80";
        let head = complete(raw);
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.path, "/ws/booking/42");
        assert_eq!(head.query.as_deref(), Some("token=a%20b&x=1"));
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.header("host"), Some("h"));
        assert_eq!(head.header_all("x-multi").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(raw.get(head.head_len..), Some(&b"\x81\x80"[..]));
    }

    #[test]
    fn methods_map_case_sensitively() {
        let table: &[(&str, Method)] = &[
            ("GET", Method::Get),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("HEAD", Method::Head),
            ("OPTIONS", Method::Options),
            ("PATCH", Method::Patch),
            ("BREW", Method::Other),
            ("get", Method::Other),
        ];
        for (token, method) in table {
            let raw = format!("{token} / HTTP/1.1\r\n\r\n");
            assert_eq!(complete(raw.as_bytes()).method, *method, "{token}");
        }
    }

    #[test]
    fn partial_and_error_table() {
        let small = HeadLimits {
            max_head_bytes: 64,
            max_headers: 2,
        };
        let long_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        let cases: &[(&[u8], Result<(), HeadError>)] = &[
            (b"", Ok(())),
            (b"GET / HT", Ok(())),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", Ok(())),
            (
                b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
                Err(HeadError::TooManyHeaders),
            ),
            (long_header.as_bytes(), Err(HeadError::HeadTooLarge)),
            (b"GET /\x7f HTTP/1.1\r\n\r\n", Err(HeadError::Malformed)),
            (
                b"GET / HTTP/2.0\r\n\r\n",
                Err(HeadError::UnsupportedVersion),
            ),
            (
                b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
                Err(HeadError::Malformed),
            ),
            (
                b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
                Err(HeadError::Malformed),
            ),
        ];
        for (raw, want) in cases {
            let got = parse_head(raw, &small);
            match want {
                Ok(()) => assert_eq!(got, Ok(HeadParse::Partial), "{raw:?}"),
                Err(e) => assert_eq!(got, Err(*e), "{raw:?}"),
            }
        }
    }

    #[test]
    fn partial_beyond_the_limit_is_431() {
        let small = HeadLimits {
            max_head_bytes: 32,
            max_headers: 8,
        };
        let raw = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(40));
        assert_eq!(
            parse_head(raw.as_bytes(), &small),
            Err(HeadError::HeadTooLarge)
        );
    }

    #[test]
    fn http_1_0_is_parsed() {
        assert_eq!(complete(b"GET / HTTP/1.0\r\n\r\n").minor_version, 0);
    }

    #[test]
    fn every_error_has_one_status_and_text() {
        let table = [
            (HeadError::Malformed, 400),
            (HeadError::HeadTooLarge, 431),
            (HeadError::TooManyHeaders, 431),
            (HeadError::UnsupportedVersion, 505),
            (HeadError::BadContentLength, 400),
            (HeadError::TransferEncodingUnsupported, 501),
            (HeadError::BodyTooLarge, 413),
        ];
        for (err, status) in table {
            assert_eq!(HttpError::from(err).status(), status);
            assert!(!err.reason().is_empty());
            assert_eq!(err.to_string(), err.reason());
        }
    }

    #[test]
    fn content_length_table() {
        let cases: &[(&str, Result<Option<usize>, HeadError>)] = &[
            ("", Ok(None)),
            ("Content-Length: 12\r\n", Ok(Some(12))),
            ("Content-Length: 12\r\nContent-Length: 12\r\n", Ok(Some(12))),
            ("Content-Length: 12, 12\r\n", Ok(Some(12))),
            (
                "Content-Length: 12\r\nContent-Length: 13\r\n",
                Err(HeadError::BadContentLength),
            ),
            ("Content-Length: -1\r\n", Err(HeadError::BadContentLength)),
            ("Content-Length: +1\r\n", Err(HeadError::BadContentLength)),
            ("Content-Length: \r\n", Err(HeadError::BadContentLength)),
            (
                "Content-Length: 99999999999999999999999999\r\n",
                Err(HeadError::BadContentLength),
            ),
            (
                "Transfer-Encoding: chunked\r\n",
                Err(HeadError::TransferEncodingUnsupported),
            ),
        ];
        for (headers, want) in cases {
            let raw = format!("POST /x HTTP/1.1\r\n{headers}\r\n");
            assert_eq!(
                complete(raw.as_bytes()).content_length(),
                *want,
                "{headers}"
            );
        }
    }

    #[test]
    fn bearer_token_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Authorization: Bearer abc.def\r\n", Some("abc.def")),
            ("Authorization: bearer abc\r\n", Some("abc")),
            ("Authorization: BEARER abc\r\n", Some("abc")),
            ("Authorization:    Bearer    abc   \r\n", Some("abc")),
            ("Authorization: Bearer\r\n", None),
            ("Authorization: Bearer    \r\n", None),
            ("Authorization: Basic YTpi\r\n", None),
            ("Authorization: Bearerabc\r\n", None),
            ("Authorization: Token abc\r\n", None),
            ("", None),
            // The first header is the one read, as for every other single-valued header.
            (
                "Authorization: Basic YTpi\r\nAuthorization: Bearer abc\r\n",
                None,
            ),
        ];
        for (headers, want) in cases {
            let raw = format!("GET / HTTP/1.1\r\n{headers}\r\n");
            assert_eq!(
                complete(raw.as_bytes()).bearer_token(),
                *want,
                "{headers:?}"
            );
        }
    }

    #[test]
    fn query_param_table() {
        let head = complete(b"GET /p?token=a%2Bb%20c&plus=x+y&empty&bad=%zz%4&n%61me=v&token=second HTTP/1.1\r\n\r\n");
        let cases: &[(&str, Option<&str>)] = &[
            ("token", Some("a+b c")),
            ("plus", Some("x y")),
            ("empty", Some("")),
            ("bad", Some("%zz%4")),
            ("name", Some("v")),
            ("missing", None),
        ];
        for (name, want) in cases {
            assert_eq!(head.query_param(name).as_deref(), *want, "{name}");
        }
        assert_eq!(complete(b"GET /p HTTP/1.1\r\n\r\n").query_param("x"), None);
    }
}
