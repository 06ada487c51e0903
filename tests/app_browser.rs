//! The HunarMitra doc's own JavaScript client (tests/browser/hunarmitra.html) in headless
//! Chromium against the real binary serving config/protocols/hunarmitra.toml, with a real
//! HTTP server as the app's backend and another serving the page.

mod apps_support;
#[path = "browser/cdp.rs"]
mod cdp;
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use apps_support::{Backend, Binary};
use common::*;
use serde_json::json;

/// Serves one HTML page to every request on 127.0.0.1:0 (thread ends with the process).
fn serve_page(html: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    format!("http://{addr}/")
}

#[test]
fn doc_client_in_chromium_tracks_a_booking() {
    if std::env::var_os("BEACON_NO_BROWSER").is_some() {
        eprintln!("BEACON_NO_BROWSER set: skipping the Chromium test");
        return;
    }
    let backend = Backend::start(|_, req| {
        let ok = req["path"]["booking_id"] == "b-1" && req["user_id"] == 10;
        (200, json!({ "allow": ok }).to_string())
    });
    let b = Binary::start("config/protocols/hunarmitra.toml", &backend.url());
    let html = std::fs::read_to_string(root().join("tests/browser/hunarmitra.html"))
        .unwrap()
        .replace("__HOST__", &b.addr.to_string())
        .replace("__TOKEN__", &token(json!(10), json!({"role": "customer"})))
        .replace(
            "__STRANGER__",
            &token(json!(12), json!({"role": "customer"})),
        );
    let browser = cdp::Browser::open(&serve_page(html));
    let mut page = browser.page();

    // The doc's client got connection_established, and the browser saw the documented close
    // codes for a stranger (4003) and a missing token (4001).
    page.wait_for("window.seen.some(d => d.type === 'connection_established')");
    let closes = page.wait_for("window.closes.length === 2 && window.closes.slice().sort()");
    assert_eq!(closes, json!([4001, 4003]));

    publish(
        b.addr,
        json!({"room": "booking:b-1", "message": {
        "type": "booking_status", "booking_id": "b-1", "status": "on_the_way",
        "event_type": "booking_on_the_way", "actor": "Worker Name", "timestamp": "2026-01-03T11:00:00Z"}}),
    );
    let status = page.wait_for("document.getElementById('status').textContent !== 'unknown' && document.getElementById('status').textContent");
    assert_eq!(status, "on_the_way");

    // The worker posts a location to Beacon's tracking endpoint; the map marker moves.
    let worker = format!("Bearer {}", token(json!(10), json!({"role": "admin"})));
    let (st, _) = http(
        b.addr,
        "POST",
        "/api/v1/tracking/b-1/",
        &[("Authorization", &worker)],
        br#"{"lat": 28.6139, "lng": 77.209}"#,
    );
    assert_eq!(st, 200);
    let marker = page.wait_for("document.getElementById('marker').textContent !== 'none' && document.getElementById('marker').textContent");
    assert_eq!(marker, "28.6139,77.209");

    // Notifications: the doc's client reads title and message. The notifications socket has
    // no on-connect message, so publish until the page shows it.
    for _ in 0..200 {
        let (_, r) = publish(
            b.addr,
            json!({"room": "user:10", "message": {
            "type": "notification", "title": "Booking confirmed", "message": "Your plumber is on the way"}}),
        );
        if r["delivered"] == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let note = page.wait_for("document.getElementById('notification').textContent !== 'none' && document.getElementById('notification').textContent");
    assert_eq!(note, "Booking confirmed: Your plumber is on the way");
}
