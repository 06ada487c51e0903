//! Sockets that outlive their tokens, for every shipped protocol (the default protocol.toml and
//! the five apps under config/protocols/): on the real binary, a socket opened with a 60-second
//! token and refreshed in-band every 40 seconds is still admitted and still receives its room's
//! messages after 3 minutes, while beside it:
//! - a socket that never refreshes is closed with the protocol's token-expired code;
//! - a refresh with a simplejwt refresh token (`token_type` "refresh") is refused with the
//!   token-invalid code, as is a valid access token of another user.
//!
//! The six protocols run side by side, so the test takes the 3 minutes once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use beacon::protocol::{load_protocol, Rejection};
use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

const ISSUED_SECRET: &str = "issued-secret-shared-by-the-test-at-least-32-bytes";
const CONFIG: &str = r#"
[api]
key_env = "BEACON_API_KEY"

[keys.jwt]
secret_env = "BEACON_JWT_SECRET"

[keys.issued]
secret_env = "BEACON_ISSUED_SECRET"
"#;

const LIFETIME_S: u64 = 60;
const REFRESH_EVERY: Duration = Duration::from_secs(40);
const SESSION: Duration = Duration::from_secs(180);

/// One shipped protocol: which socket to keep open and which message proves it still belongs
/// to its room.
struct Case {
    protocol: &'static str,
    /// Path for user `u` (query token appended when `header` is false).
    path: fn(u64) -> String,
    /// Token travels in `Authorization: Bearer` instead of `?token=`.
    header: bool,
    /// Claims besides user_id, exp, iat, jti, token_type.
    claims: fn(u64) -> Value,
    /// Tokens signed with the key Beacon mints with (Smart Parking's ws-token).
    issued: bool,
    room: fn(u64) -> String,
    message: fn() -> Value,
}

/// HunarMitra's notifications socket, which the default protocol.toml serves too.
const HUNARMITRA: Case = Case {
    protocol: "config/protocols/hunarmitra.toml",
    path: |_| "/ws/notifications/".into(),
    header: false,
    claims: |_| json!({}),
    issued: false,
    room: |u| format!("user:{u}"),
    message: || json!({"type": "notification", "title": "still here", "message": "m"}),
};

const CASES: &[Case] = &[
    Case {
        protocol: "protocol.toml",
        ..HUNARMITRA
    },
    HUNARMITRA,
    Case {
        protocol: "config/protocols/smartparking.toml",
        path: |_| "/ws/notifications/".into(),
        header: false,
        claims: |_| json!({"token_type": "ws"}),
        issued: true,
        room: |u| format!("user:{u}"),
        message: || {
            json!({"type": "notification", "message": "still here", "notification_type": "reservation",
                   "data": {"reservation_id": 1}})
        },
    },
    Case {
        protocol: "config/protocols/therapy.toml",
        path: |u| format!("/ws/chat/{u}/456/"),
        header: true,
        claims: |_| json!({"role": "customer"}),
        issued: false,
        room: |u| format!("chat:{u}:456"),
        message: || {
            json!({"type": "message", "message": "still here", "sender_id": "1", "message_id": "9",
                   "timestamp": "2024-01-15T10:30:00.123456Z"})
        },
    },
    Case {
        protocol: "config/protocols/umemployed.toml",
        path: |u| format!("/ws/notifications/{u}/"),
        header: false,
        claims: |_| json!({}),
        issued: false,
        room: |u| format!("user:{u}"),
        message: || json!({"type": "notification", "notification": {"title": "still here"}}),
    },
    Case {
        protocol: "config/protocols/visible.toml",
        path: |_| "/ws/work/provider/".into(),
        header: true,
        claims: |_| json!({}),
        issued: false,
        room: |u| format!("work:provider:{u}"),
        message: || {
            json!({"type": "work_assignment", "work_id": 77, "service_type": "painting",
                   "distance": "2.5km", "seeker_latitude": 12.9, "seeker_longitude": 77.6,
                   "created_at": "2025-01-15T10:30:00Z", "seeker": {"id": 5}})
        },
    },
];

impl Case {
    fn token(&self, user: u64, lifetime_s: u64, extra: Value) -> String {
        let mut claims = (self.claims)(user);
        if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
            c.extend(e);
        }
        let secret = if self.issued { ISSUED_SECRET } else { SECRET };
        token_with(
            secret,
            jsonwebtoken::Algorithm::HS256,
            json!(user),
            claims,
            now() + lifetime_s,
        )
    }

    fn open(&self, addr: SocketAddr, user: u64, token: &str) -> Ws {
        let path = (self.path)(user);
        let ws = if self.header {
            connect_with(
                &format!("ws://{addr}{path}"),
                &[("Authorization", &format!("Bearer {token}"))],
            )
        } else {
            connect_with(&format!("ws://{addr}{path}?token={token}"), &[])
        };
        ws.unwrap_or_else(|s| panic!("{}: upgrade refused with {s}", self.protocol))
    }

    fn refresh(&self, ws: &mut Ws, token: &str) {
        send(ws, json!({"type": "refresh_token", "token": token}));
    }
}

/// Reads (answering pings) until `deadline`; panics if the server closes the socket.
fn stay_open_until(ws: &mut Ws, deadline: Instant, who: &str) {
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        ws.get_mut()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match ws.read() {
            Ok(Message::Close(f)) => panic!("{who}: closed by the server: {f:?}"),
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            Err(e) => panic!("{who}: {e}"),
        }
    }
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
}

/// The close a socket gets within `within`, skipping any messages before it.
fn close_within(ws: &mut Ws, within: Duration) -> u16 {
    ws.get_mut().set_read_timeout(Some(within)).unwrap();
    expect_close(ws).0
}

fn run(case: &Case) {
    let src = std::fs::read_to_string(root().join(case.protocol)).unwrap();
    let proto = load_protocol(&src).unwrap_or_else(|_| panic!("{} validates", case.protocol));
    let code = |r: Rejection| proto.close_for(r).code;
    let config = std::env::temp_dir().join(format!(
        "beacon-refresh-{}-{}.toml",
        std::process::id(),
        case.protocol.replace('/', "_")
    ));
    std::fs::write(&config, CONFIG).unwrap();
    let b = BinServer::start_with(
        case.protocol,
        config.to_str().unwrap(),
        &[],
        &[("BEACON_ISSUED_SECRET", ISSUED_SECRET)],
    );
    let who = case.protocol;
    let (user, lazy, other) = (31, 32, 33);
    let started = Instant::now();

    // Refused refreshes close at once, with the token-invalid code.
    let mut ws = case.open(b.addr, other, &case.token(other, LIFETIME_S, json!({})));
    let refresh_type = case.token(other, 86400, json!({"token_type": "refresh"}));
    case.refresh(&mut ws, &refresh_type);
    let refused = close_within(&mut ws, Duration::from_secs(20));
    assert_eq!(
        refused,
        code(Rejection::TokenInvalid),
        "{who}: refresh token"
    );
    let mut ws = case.open(b.addr, other, &case.token(other, LIFETIME_S, json!({})));
    case.refresh(&mut ws, &case.token(user, LIFETIME_S, json!({})));
    let refused = close_within(&mut ws, Duration::from_secs(20));
    assert_eq!(refused, code(Rejection::TokenInvalid), "{who}: other user");

    let mut kept = case.open(b.addr, user, &case.token(user, LIFETIME_S, json!({})));
    let mut unrefreshed = case.open(b.addr, lazy, &case.token(lazy, LIFETIME_S, json!({})));

    let mut next = started + REFRESH_EVERY;
    let mut lazy_closed = None;
    while next < started + SESSION {
        stay_open_until(&mut kept, next, who);
        case.refresh(&mut kept, &case.token(user, LIFETIME_S, json!({})));
        // The socket without refresh has outlived its token by now (60 s, no leeway declared).
        if lazy_closed.is_none() && Instant::now() > started + Duration::from_secs(LIFETIME_S) {
            lazy_closed = Some(close_within(&mut unrefreshed, Duration::from_secs(30)));
        }
        next += REFRESH_EVERY;
    }
    stay_open_until(&mut kept, started + SESSION, who);
    assert_eq!(
        lazy_closed,
        Some(code(Rejection::TokenExpired)),
        "{who}: a socket that never refreshes is closed when its token expires"
    );

    // Three minutes on, three tokens later: still in its room.
    let message = (case.message)();
    let (status, body) = publish(
        b.addr,
        json!({"room": (case.room)(user), "message": message}),
    );
    assert_eq!(
        (status, body["delivered"].as_u64()),
        (200, Some(1)),
        "{who}: {body}"
    );
    // Messages that enter their room's history carry a position: not this test's subject.
    let got = recv(&mut kept);
    let got = match got.get("offset") {
        Some(_) => unpositioned(got),
        None => got,
    };
    assert_eq!(got, message, "{who}");
    let _ = std::fs::remove_file(config);
}

#[test]
fn every_shipped_protocol_keeps_a_refreshed_socket_past_its_tokens() {
    std::thread::scope(|s| {
        let runs: Vec<_> = CASES.iter().map(|c| s.spawn(move || run(c))).collect();
        let failed: Vec<&str> = runs
            .into_iter()
            .zip(CASES)
            .filter_map(|(r, c)| r.join().is_err().then_some(c.protocol))
            .collect();
        assert!(failed.is_empty(), "failed: {failed:?}");
    });
}
