//! Booking protocol on a plain tokio-tungstenite server, written the way a Rust team would
//! without an engine: a multi-threaded tokio runtime, one task per socket, rooms in a mutexed
//! map of unbounded channels, a broadcast serialised once and cloned (reference-counted) per
//! member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Rooms = Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Message>)>>>;

struct App {
    rooms: Rooms,
    key: jsonwebtoken::DecodingKey,
    api_key: String,
    next: AtomicU64,
}

#[tokio::main]
async fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let secret = std::env::var("BEACON_JWT_SECRET").expect("BEACON_JWT_SECRET");
    let app = Arc::new(App {
        rooms: Mutex::new(HashMap::new()),
        key: jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        api_key: std::env::var("BEACON_API_KEY").unwrap_or_default(),
        next: AtomicU64::new(1),
    });
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(app.clone(), stream));
    }
}

/// Peeks the request head: upgrades go to tungstenite, anything else is the HTTP API.
async fn serve(app: Arc<App>, stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let n = match stream.peek(&mut buf).await {
        Ok(n) if n > 0 => n,
        _ => return,
    };
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    if head.contains("upgrade: websocket") {
        websocket(app, stream).await;
    } else {
        http(app, stream).await;
    }
}

fn verify(app: &App, token: &str) -> bool {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_required_spec_claims(&["exp"]);
    match jsonwebtoken::decode::<Value>(token, &app.key, &v) {
        Ok(d) => d.claims["token_type"] == "access" && !d.claims["user_id"].is_null(),
        Err(_) => false,
    }
}

async fn websocket(app: Arc<App>, stream: TcpStream) {
    let mut target = String::new();
    let cb = |req: &Request, resp: Response| {
        target = req.uri().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else { return };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let booking = path
        .strip_prefix("/ws/bookings/")
        .and_then(|p| p.strip_suffix('/'))
        .filter(|b| !b.is_empty() && b.len() <= 64 && !b.contains('/'))
        .map(str::to_owned);
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .unwrap_or("");
    let (mut tx, mut rx) = ws.split();
    let Some(booking) = booking.filter(|_| verify(&app, token)) else {
        let _ = tx
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(4001),
                reason: "Unauthenticated".into(),
            })))
            .await;
        return;
    };
    let room = format!("booking:{booking}");
    let id = app.next.fetch_add(1, Ordering::Relaxed);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    app.rooms
        .lock()
        .unwrap()
        .entry(room.clone())
        .or_default()
        .push((id, out_tx.clone()));
    let hello = json!({"type": "connection_established", "booking_id": booking, "message": "Connected to booking updates"});
    let _ = out_tx.send(Message::Text(hello.to_string().into()));
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if tx.feed(m).await.is_err() {
                return;
            }
            // Batch whatever else is already queued into the same flush.
            while let Ok(m) = out_rx.try_recv() {
                if tx.feed(m).await.is_err() {
                    return;
                }
            }
            if tx.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(m)) = rx.next().await {
        if let Message::Text(text) = m {
            match serde_json::from_str::<Value>(&text) {
                Ok(v) if v["type"] == "ping" => {
                    let pong = json!({"type": "pong", "t": v["t"]});
                    let _ = out_tx.send(Message::Text(pong.to_string().into()));
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = out_tx.send(Message::Text(
                        r#"{"type":"error","code":"invalid_json","message":"message is not valid JSON"}"#.into(),
                    ));
                }
            }
        }
    }
    {
        let mut rooms = app.rooms.lock().unwrap();
        if let Some(members) = rooms.get_mut(&room) {
            members.retain(|(m, _)| *m != id);
            if members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
    writer.abort();
}

fn publish(app: &App, room: &str, message: &Value) -> usize {
    let text: Utf8Bytes = message.to_string().into();
    let rooms = app.rooms.lock().unwrap();
    let Some(members) = rooms.get(room) else { return 0 };
    members
        .iter()
        .filter(|(_, tx)| tx.send(Message::Text(text.clone())).is_ok())
        .count()
}

/// HTTP/1.1 keep-alive: `POST /api/publish` only.
async fn http(app: Arc<App>, mut stream: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let (status, body) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let lower = head.to_ascii_lowercase();
                let len: usize = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() < end + 4 + len {
                    // Need more of the body.
                } else {
                    let body: Vec<u8> = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    break handle(&app, &head, &lower, &body);
                }
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let resp = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            if status == 200 { "OK" } else { "Error" },
            body.len()
        );
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn handle(app: &App, head: &str, lower: &str, body: &[u8]) -> (u16, String) {
    if !head.starts_with("POST /api/publish ") {
        return (404, r#"{"error":"not found","status":404}"#.into());
    }
    let auth = format!("authorization: bearer {}", app.api_key.to_ascii_lowercase());
    if app.api_key.is_empty() || !lower.lines().any(|l| l.trim() == auth) {
        return (401, r#"{"error":"unauthorized","status":401}"#.into());
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (400, r#"{"error":"invalid json","status":400}"#.into());
    };
    let one = |it: &Value| {
        let room = it["room"].as_str().unwrap_or("");
        json!({"room": room, "delivered": publish(app, room, &it["message"])})
    };
    let out = match &v {
        Value::Array(items) => {
            let results: Vec<Value> = items.iter().map(one).collect();
            let total: u64 = results.iter().filter_map(|r| r["delivered"].as_u64()).sum();
            json!({"delivered": total, "results": results})
        }
        _ => one(&v),
    };
    (200, out.to_string())
}
