//! Dev-only blocking echo server exercising `beacon::ws` before the engine's network layer
//! exists; the Autobahn harness (`tests/autobahn/run.sh`) drives it.
//!
//! `cargo run --release -p beacon --example codec_echo -- 127.0.0.1:9002`

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use beacon::ws::codec::{self, Decoder, Event, Limits, OpCode};
use beacon::ws::handshake::{self, UpgradeCheck};
use beacon::ws::http::{self, HeadLimits, HeadParse};
use beacon::ws::http_error::HttpError;

/// Autobahn 9.* sends messages up to 16 MiB; leave headroom.
const ECHO_LIMITS: Limits = Limits {
    max_frame_bytes: 20 << 20,
    max_message_bytes: 20 << 20,
};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("codec_echo listening on ws://{}", listener.local_addr()?);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            if let Err(err) = serve(stream) {
                eprintln!("connection error: {err}");
            }
        });
    }
    Ok(())
}

fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let limits = HeadLimits::default();
    let mut head_buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head_buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        match http::parse_head(&head_buf, &limits) {
            Ok(HeadParse::Partial) => continue,
            Ok(HeadParse::Complete(head)) => break head,
            Err(err) => {
                let response = HttpError::from(err).response();
                return stream.write_all(&response);
            }
        }
    };
    let upgrade = match handshake::check_upgrade(&head) {
        Ok(UpgradeCheck::Upgrade(upgrade)) => upgrade,
        Ok(UpgradeCheck::NotUpgrade) => {
            let response = handshake::http_response(200, "text/plain", b"echo\n", &[], true);
            return stream.write_all(&response);
        }
        Err(err) => return stream.write_all(&HttpError::from(err).response()),
    };
    stream.write_all(&handshake::accept_response(&upgrade.key, None))?;

    let mut decoder = Decoder::new(ECHO_LIMITS);
    // Frames the client pipelined behind its upgrade request.
    decoder.feed(head_buf.get(head.head_len..).unwrap_or_default());
    let mut out = Vec::new();
    loop {
        let closing = drain(&mut decoder, &mut out);
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        if closing {
            return linger_close(stream);
        }
        decoder.shrink();
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        decoder.feed(chunk.get(..n).unwrap_or_default());
    }
}

/// Encodes replies for every ready event into `out`; true once the connection must close.
fn drain(decoder: &mut Decoder, out: &mut Vec<u8>) -> bool {
    loop {
        match decoder.next_event() {
            Ok(None) => return false,
            Ok(Some(Event::Text(text))) => codec::encode_frame(OpCode::Text, text, out),
            Ok(Some(Event::Binary(data))) => codec::encode_frame(OpCode::Binary, data, out),
            Ok(Some(Event::Ping(payload))) => codec::encode_frame(OpCode::Pong, payload, out),
            Ok(Some(Event::Pong(_))) => {}
            Ok(Some(Event::Close(close))) => {
                match close.code {
                    Some(code) => out.extend_from_slice(&codec::close_frame(code, "")),
                    None => codec::encode_frame(OpCode::Close, &[], out),
                }
                return true;
            }
            Err(err) => {
                out.extend_from_slice(&codec::close_frame(err.close_code(), err.reason()));
                return true;
            }
        }
    }
}

/// Half-closes and drains until the peer closes, so unread input does not turn our final
/// close frame into a TCP reset the peer may never see.
fn linger_close(mut stream: TcpStream) -> std::io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(())
            }
            Err(err) => return Err(err),
        }
    }
}
