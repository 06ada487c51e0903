//! RFC 6455 §4.2 opening-handshake validation and the server's response bytes.

use base64::Engine as _;
use thiserror::Error;

use super::http::{Method, RequestHead};
use super::http_error::{HttpError, HttpErrorKind};

/// Whether a request asks to become a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeCheck {
    /// Plain HTTP: route it to the HTTP API.
    NotUpgrade,
    Upgrade(UpgradeRequest),
}

/// The parts of a valid upgrade request the engine still has to decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `Sec-WebSocket-Key` as sent (trimmed); feed it to [`accept_response`].
    pub key: String,
    /// `Sec-WebSocket-Protocol` tokens in the client's order of preference.
    pub protocols: Vec<String>,
    pub origin: Option<String>,
}

/// Why an upgrade request was refused, classified by blame; each maps to one [`HttpErrorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("WebSocket upgrade requires GET")]
    MethodNotGet,
    #[error("WebSocket upgrade requires HTTP/1.1")]
    NotHttp11,
    #[error("missing Host header")]
    MissingHost,
    #[error("Connection header lacks the upgrade token")]
    ConnectionNotUpgrade,
    #[error("unsupported Sec-WebSocket-Version; use 13")]
    UnsupportedVersion,
    #[error("missing or invalid Sec-WebSocket-Key")]
    BadKey,
}

impl HandshakeError {
    /// What the client has to do about it, which decides the status and its headers.
    pub fn kind(&self) -> HttpErrorKind {
        match self {
            HandshakeError::MethodNotGet => HttpErrorKind::MethodNotAllowed { allow: "GET" },
            HandshakeError::UnsupportedVersion => HttpErrorKind::UpgradeRequired,
            HandshakeError::NotHttp11
            | HandshakeError::MissingHost
            | HandshakeError::ConnectionNotUpgrade
            | HandshakeError::BadKey => HttpErrorKind::BadRequest,
        }
    }

    /// A short, fixed explanation fit for a response body.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::MethodNotGet => "WebSocket upgrade requires GET",
            HandshakeError::NotHttp11 => "WebSocket upgrade requires HTTP/1.1",
            HandshakeError::MissingHost => "missing Host header",
            HandshakeError::ConnectionNotUpgrade => "Connection header lacks the upgrade token",
            HandshakeError::UnsupportedVersion => "unsupported Sec-WebSocket-Version; use 13",
            HandshakeError::BadKey => "missing or invalid Sec-WebSocket-Key",
        }
    }
}

impl From<HandshakeError> for HttpError {
    fn from(e: HandshakeError) -> Self {
        HttpError::new(e.kind(), e.reason())
    }
}

/// Decides whether `head` is a WebSocket upgrade and validates it.
///
/// A request whose `Upgrade` header does not name `websocket` (no header, or e.g. `h2c` from
/// `curl --http2`) is plain HTTP: RFC 9110 §7.8 lets a server ignore an Upgrade it does not
/// offer, so health checks and the HTTP API keep working for such clients.
pub fn check_upgrade(head: &RequestHead) -> Result<UpgradeCheck, HandshakeError> {
    let wants_websocket = head
        .header_all("upgrade")
        .any(|v| has_token(v, "websocket"));
    if !wants_websocket {
        return Ok(UpgradeCheck::NotUpgrade);
    }
    if head.method != Method::Get {
        return Err(HandshakeError::MethodNotGet);
    }
    if head.minor_version != 1 {
        return Err(HandshakeError::NotHttp11);
    }
    if head.header("host").is_none() {
        return Err(HandshakeError::MissingHost);
    }
    if !head
        .header_all("connection")
        .any(|v| has_token(v, "upgrade"))
    {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    let mut versions = head.header_all("sec-websocket-version");
    if versions.next() != Some("13") || versions.next().is_some() {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let mut keys = head.header_all("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) if is_valid_key(key) => key.to_owned(),
        _ => return Err(HandshakeError::BadKey),
    };
    let protocols = head
        .header_all("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(UpgradeCheck::Upgrade(UpgradeRequest {
        key,
        protocols,
        origin: head.header("origin").map(str::to_owned),
    }))
}

fn has_token(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn is_valid_key(key: &str) -> bool {
    // 16 bytes encode to exactly 24 characters; checking first bounds the decode work.
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|raw| raw.len() == 16)
}

/// The `101 Switching Protocols` response completing the handshake.
///
/// `protocol` should be one of the client's offered tokens; it is echoed in
/// `Sec-WebSocket-Protocol`.
pub fn accept_response(key: &str, protocol: Option<&str>) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    push_header(&mut out, "Sec-WebSocket-Accept", &accept);
    if let Some(protocol) = protocol {
        push_header(&mut out, "Sec-WebSocket-Protocol", protocol);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A complete HTTP/1.1 response with `Content-Length` framing.
///
/// 1xx, 204 and 304 responses never carry a body or `Content-Length` (RFC 9110 §8.6), so `body`
/// and `content_type` are ignored for them.
pub fn http_response(
    status: u16,
    content_type: &str,
    body: &[u8],
    extra_headers: &[(&str, &str)],
    connection_close: bool,
) -> Vec<u8> {
    let bodyless = matches!(status, 100..=199 | 204 | 304);
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !bodyless {
        push_header(&mut out, "Content-Type", content_type);
        push_header(&mut out, "Content-Length", &body.len().to_string());
    }
    if connection_close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    for (name, value) in extra_headers {
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    if !bodyless {
        out.extend_from_slice(body);
    }
    out
}

/// Standard reason phrases for the statuses Beacon sends; others get an empty phrase, which
/// RFC 9112 §4 allows.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Writes `name: value\r\n`, dropping CR, LF and NUL so no caller-supplied text can split the
/// response (header injection).
fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let clean = |s: &str, out: &mut Vec<u8>| {
        out.extend(s.bytes().filter(|b| !matches!(b, b'\r' | b'\n' | 0)));
    };
    clean(name, out);
    out.extend_from_slice(b": ");
    clean(value, out);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::http::{parse_head, HeadLimits, HeadParse};

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn head(raw: &str) -> RequestHead {
        match parse_head(raw.as_bytes(), &HeadLimits::default()) {
            Ok(HeadParse::Complete(head)) => head,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn upgrade_request(method: &str, version: &str, headers: &str) -> String {
        format!("{method} /ws HTTP/{version}\r\nHost: beacon\r\n{headers}\r\n")
    }

    const GOOD: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn accepts_a_valid_upgrade_with_protocols_and_origin() {
        let raw = upgrade_request(
            "GET",
            "1.1",
            &format!("{GOOD}Sec-WebSocket-Protocol: beacon.v1, json \r\nSec-WebSocket-Protocol: x\r\nOrigin: https://app\r\n"),
        );
        let want = UpgradeRequest {
            key: KEY.to_owned(),
            protocols: vec!["beacon.v1".into(), "json".into(), "x".into()],
            origin: Some("https://app".into()),
        };
        assert_eq!(check_upgrade(&head(&raw)), Ok(UpgradeCheck::Upgrade(want)));
    }

    #[test]
    fn header_tokens_are_case_insensitive_lists() {
        let headers = "Upgrade: WebSocket\r\nConnection: keep-alive, UPGRADE\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let got = check_upgrade(&head(&upgrade_request("GET", "1.1", headers)));
        assert!(matches!(got, Ok(UpgradeCheck::Upgrade(_))), "{got:?}");
    }

    #[test]
    fn not_upgrade_table() {
        let cases = [
            upgrade_request("GET", "1.1", ""),
            upgrade_request("POST", "1.1", "Content-Length: 0\r\n"),
            upgrade_request(
                "GET",
                "1.1",
                "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n",
            ),
        ];
        for raw in cases {
            assert_eq!(
                check_upgrade(&head(&raw)),
                Ok(UpgradeCheck::NotUpgrade),
                "{raw}"
            );
        }
    }

    #[test]
    fn error_table() {
        let without = |name: &str| {
            GOOD.lines()
                .filter(|l| !l.starts_with(name))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        };
        let cases: Vec<(String, HandshakeError)> = vec![
            (
                upgrade_request("POST", "1.1", GOOD),
                HandshakeError::MethodNotGet,
            ),
            (
                upgrade_request("GET", "1.0", GOOD),
                HandshakeError::NotHttp11,
            ),
            (
                format!("GET /ws HTTP/1.1\r\n{GOOD}\r\n"),
                HandshakeError::MissingHost,
            ),
            (
                upgrade_request("GET", "1.1", &without("Connection")),
                HandshakeError::ConnectionNotUpgrade,
            ),
            (
                upgrade_request(
                    "GET",
                    "1.1",
                    &format!("{}Connection: keep-alive\r\n", without("Connection")),
                ),
                HandshakeError::ConnectionNotUpgrade,
            ),
            (
                upgrade_request("GET", "1.1", &without("Sec-WebSocket-Version")),
                HandshakeError::UnsupportedVersion,
            ),
            (
                upgrade_request("GET", "1.1", &GOOD.replace("Version: 13", "Version: 8")),
                HandshakeError::UnsupportedVersion,
            ),
            (
                upgrade_request("GET", "1.1", &format!("{GOOD}Sec-WebSocket-Version: 8\r\n")),
                HandshakeError::UnsupportedVersion,
            ),
            (
                upgrade_request("GET", "1.1", &without("Sec-WebSocket-Key")),
                HandshakeError::BadKey,
            ),
            (
                upgrade_request("GET", "1.1", &GOOD.replace(KEY, "dGhlIHNhbXBsZQ==")),
                HandshakeError::BadKey,
            ),
            (
                upgrade_request("GET", "1.1", &GOOD.replace(KEY, "!!!!!!!!!!!!!!!!!!!!!!==")),
                HandshakeError::BadKey,
            ),
            (
                upgrade_request("GET", "1.1", &format!("{GOOD}Sec-WebSocket-Key: {KEY}\r\n")),
                HandshakeError::BadKey,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(check_upgrade(&head(&raw)), Err(want), "{raw}");
        }
    }

    #[test]
    fn every_error_has_one_status_and_required_headers() {
        let table = [
            (HandshakeError::MethodNotGet, 405, Some("Allow: GET")),
            (HandshakeError::NotHttp11, 400, None),
            (HandshakeError::MissingHost, 400, None),
            (HandshakeError::ConnectionNotUpgrade, 400, None),
            (
                HandshakeError::UnsupportedVersion,
                426,
                Some("Sec-WebSocket-Version: 13"),
            ),
            (HandshakeError::BadKey, 400, None),
        ];
        for (err, status, header) in table {
            assert_eq!(err.to_string(), err.reason());
            let err = HttpError::from(err);
            assert_eq!(err.status(), status);
            let response = String::from_utf8(err.response()).expect("ascii response");
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status} ")),
                "{response}"
            );
            if let Some(header) = header {
                assert!(
                    response.contains(&format!("\r\n{header}\r\n")),
                    "{response}"
                );
            }
        }
    }

    #[test]
    fn accept_response_matches_rfc_example() {
        let got = String::from_utf8(accept_response(KEY, None)).expect("ascii");
        assert_eq!(
            got,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        let got = String::from_utf8(accept_response(KEY, Some("beacon.v1"))).expect("ascii");
        assert!(
            got.ends_with("Sec-WebSocket-Protocol: beacon.v1\r\n\r\n"),
            "{got}"
        );
    }

    #[test]
    fn http_response_frames_the_body() {
        let got = http_response(
            200,
            "text/plain",
            b"ok",
            &[("X-A", "1\r\nInjected: y")],
            false,
        );
        assert_eq!(
            String::from_utf8(got).expect("ascii"),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nX-A: 1Injected: y\r\n\r\nok"
        );
        let got = http_response(204, "text/plain", b"ignored", &[], true);
        assert_eq!(
            String::from_utf8(got).expect("ascii"),
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn reason_phrases_cover_every_status_used() {
        for status in [
            101, 200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 413, 415, 426, 429, 431, 500,
            501, 503, 505,
        ] {
            assert!(!reason_phrase(status).is_empty(), "{status}");
        }
        assert_eq!(reason_phrase(299), "");
    }
}
