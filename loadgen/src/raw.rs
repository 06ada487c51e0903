//! The load generator's own WebSocket client: a hand-written upgrade, then frames read and
//! written straight on the tokio socket. A general client library (tokio-tungstenite) costs
//! tens of microseconds per message on this kind of machine; with 10k subscribers on one core
//! that, not the server, set the measured latency. Owned by the load generator's one thread.

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// One client socket after its upgrade. Writes never wait (the schedule is open loop): what
/// the kernel does not take is kept in `pending` and flushed by the socket's reader task.
pub struct Conn {
    stream: TcpStream,
    pending: RefCell<Vec<u8>>,
    wake: Notify,
    mask: Cell<u32>,
    /// Set once the socket failed or closed; later sends are refused.
    dead: Cell<bool>,
}

/// Opens a socket, upgrades it on `path` and returns it with any bytes read past the 101.
pub async fn connect(addr: &str, path: &str, seed: u32) -> Result<(Rc<Conn>, Vec<u8>), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    // A fixed key is allowed: the server only has to answer its accept hash, and the load
    // generator does not check it (it measures the server, it does not validate it).
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("handshake write: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err("handshake: response head too large".into());
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("handshake read: {e}"))?;
        if n == 0 {
            return Err("handshake: closed before the response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status = buf.get(9..12).unwrap_or_default();
    if status != b"101" {
        let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
        return Err(format!(
            "handshake: {}",
            String::from_utf8_lossy(line).into_owned()
        ));
    }
    let rest = buf.split_off(end);
    let conn = Conn {
        stream,
        pending: RefCell::new(Vec::new()),
        wake: Notify::new(),
        mask: Cell::new(seed | 1),
        dead: Cell::new(false),
    };
    Ok((Rc::new(conn), rest))
}

impl Conn {
    /// Sends one masked client frame now, or queues it behind what is already waiting.
    /// `false` when the socket is gone.
    pub fn send(&self, opcode: u8, payload: &[u8]) -> bool {
        if self.dead.get() {
            return false;
        }
        let mut frame = [0u8; 14 + 256];
        let n = self.encode(opcode, payload, &mut frame);
        let mut pending = self.pending.borrow_mut();
        if !pending.is_empty() {
            pending.extend_from_slice(&frame[..n]);
            return true;
        }
        match self.stream.try_write(&frame[..n]) {
            Ok(w) if w == n => {}
            Ok(w) => {
                pending.extend_from_slice(&frame[w..n]);
                self.wake.notify_one();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                pending.extend_from_slice(&frame[..n]);
                self.wake.notify_one();
            }
            Err(_) => {
                self.dead.set(true);
                return false;
            }
        }
        true
    }

    /// Client frames must be masked (RFC 6455 5.3); the key comes from a cheap xorshift.
    fn encode(&self, opcode: u8, payload: &[u8], out: &mut [u8; 270]) -> usize {
        assert!(payload.len() <= 256, "load generator frames are small");
        let mut x = self.mask.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask.set(x);
        let key = x.to_be_bytes();
        out[0] = 0x80 | opcode;
        let mut at = if payload.len() < 126 {
            out[1] = 0x80 | payload.len() as u8;
            2
        } else {
            out[1] = 0x80 | 126;
            out[2..4].copy_from_slice(&(payload.len() as u16).to_be_bytes());
            4
        };
        out[at..at + 4].copy_from_slice(&key);
        at += 4;
        for (i, b) in payload.iter().enumerate() {
            out[at + i] = b ^ key[i & 3];
        }
        at + payload.len()
    }

    fn flush(&self) -> Result<(), String> {
        let mut pending = self.pending.borrow_mut();
        while !pending.is_empty() {
            match self.stream.try_write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        Ok(())
    }

    /// Reads frames until the socket closes, calling `on_text` with each text payload and
    /// answering pings. Also flushes what [`Conn::send`] could not write at once.
    pub async fn read_loop(
        &self,
        mut buf: Vec<u8>,
        mut on_text: impl FnMut(&[u8]),
    ) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        let result = loop {
            let mut at = 0;
            let mut closed = false;
            while let Some(f) = parse_frame(&buf[at..]) {
                let payload = &buf[at + f.payload_start..at + f.len];
                match f.opcode {
                    0x1 => on_text(payload),
                    0x8 => {
                        closed = true;
                        break;
                    }
                    0x9 => {
                        self.send(0xA, payload);
                    }
                    _ => {}
                }
                at += f.len;
            }
            if closed {
                break Err("closed by the server".to_string());
            }
            buf.drain(..at);
            let waiting = !self.pending.borrow().is_empty();
            tokio::select! {
                r = self.stream.readable() => {
                    if let Err(e) = r {
                        break Err(format!("read: {e}"));
                    }
                    match self.stream.try_read(&mut chunk) {
                        Ok(0) => break Err("closed".to_string()),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => break Err(format!("read: {e}")),
                    }
                }
                r = self.stream.writable(), if waiting => {
                    if let Err(e) = r.map_err(|e| format!("write: {e}")).and_then(|_| self.flush()) {
                        break Err(e);
                    }
                }
                _ = self.wake.notified(), if !waiting => {}
            }
        };
        self.dead.set(true);
        result
    }
}

/// A complete server frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload_start: usize,
    /// Header plus payload.
    pub len: usize,
}

/// The first frame of `buf` if it is complete. Server frames are unmasked.
pub fn parse_frame(buf: &[u8]) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (payload_len, header) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let masked = buf[1] & 0x80 != 0;
    let header: usize = header + if masked { 4 } else { 0 };
    let len = header.checked_add(payload_len)?;
    (buf.len() >= len).then_some(Frame {
        opcode,
        payload_start: header,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_frame;

    #[test]
    fn frames_parse_only_when_complete() {
        let mut f = vec![0x81, 3, b'a', b'b', b'c'];
        assert_eq!(parse_frame(&f[..4]), None);
        let fr = parse_frame(&f).unwrap();
        assert_eq!((fr.opcode, fr.payload_start, fr.len), (1, 2, 5));
        f = vec![0x81, 126, 0, 200];
        f.extend(std::iter::repeat_n(b'x', 200));
        let fr = parse_frame(&f).unwrap();
        assert_eq!((fr.payload_start, fr.len), (4, 204));
        assert_eq!(parse_frame(&f[..203]), None);
    }
}
