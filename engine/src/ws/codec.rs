//! RFC 6455 framing, server side: a push-fed [`Decoder`] for client frames and encoders for
//! the (unmasked) frames the server sends.
//!
//! The decoder validates as bytes arrive, not when a frame is complete: a length over the limit
//! is refused from the header alone, and text is UTF-8 checked chunk by chunk, so a bad peer is
//! cut off before it makes the server buffer anything it would reject anyway.

use std::ops::Range;

use bytes::Bytes;
use thiserror::Error;

/// Size limits for one connection's inbound traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload one frame may declare.
    pub max_frame_bytes: usize,
    /// Largest data message, summed over its fragments.
    pub max_message_bytes: usize,
}

/// One inbound event; data messages are complete and (for text) valid UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Mutable so a JSON parser can work in place (simd-json) without a copy.
    Text(&'a mut [u8]),
    Binary(&'a mut [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    Close(CloseFrameIn<'a>),
}

/// A received Close frame; `code` is `None` when the peer sent an empty payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrameIn<'a> {
    pub code: Option<u16>,
    pub reason: &'a str,
}

/// Why the peer's stream was refused; the connection must close with [`WsError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{}", self.kind.reason())]
pub struct WsError {
    kind: WsErrorKind,
}

/// Each peer misbehaviour the decoder detects, with its single close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WsErrorKind {
    UnmaskedFrame,
    ReservedBits,
    ReservedOpcode,
    FragmentedControl,
    ControlTooLong,
    UnexpectedContinuation,
    ExpectedContinuation,
    LengthMsbSet,
    CloseLengthOne,
    InvalidCloseCode,
    InvalidUtf8,
    InvalidCloseReason,
    FrameTooBig,
    MessageTooBig,
}

impl WsErrorKind {
    /// Every kind, for tests that walk the table.
    pub const ALL: [WsErrorKind; 14] = [
        WsErrorKind::UnmaskedFrame,
        WsErrorKind::ReservedBits,
        WsErrorKind::ReservedOpcode,
        WsErrorKind::FragmentedControl,
        WsErrorKind::ControlTooLong,
        WsErrorKind::UnexpectedContinuation,
        WsErrorKind::ExpectedContinuation,
        WsErrorKind::LengthMsbSet,
        WsErrorKind::CloseLengthOne,
        WsErrorKind::InvalidCloseCode,
        WsErrorKind::InvalidUtf8,
        WsErrorKind::InvalidCloseReason,
        WsErrorKind::FrameTooBig,
        WsErrorKind::MessageTooBig,
    ];

    /// The close code (RFC 6455 §7.4.1) this misbehaviour is answered with.
    pub fn close_code(self) -> u16 {
        match self {
            WsErrorKind::InvalidUtf8 | WsErrorKind::InvalidCloseReason => 1007,
            WsErrorKind::FrameTooBig | WsErrorKind::MessageTooBig => 1009,
            WsErrorKind::UnmaskedFrame
            | WsErrorKind::ReservedBits
            | WsErrorKind::ReservedOpcode
            | WsErrorKind::FragmentedControl
            | WsErrorKind::ControlTooLong
            | WsErrorKind::UnexpectedContinuation
            | WsErrorKind::ExpectedContinuation
            | WsErrorKind::LengthMsbSet
            | WsErrorKind::CloseLengthOne
            | WsErrorKind::InvalidCloseCode => 1002,
        }
    }

    /// Close reason sent to the peer; each fits the 123-byte limit of a close payload.
    pub fn reason(self) -> &'static str {
        match self {
            WsErrorKind::UnmaskedFrame => "client frames must be masked",
            WsErrorKind::ReservedBits => "reserved bits set without a negotiated extension",
            WsErrorKind::ReservedOpcode => "reserved opcode",
            WsErrorKind::FragmentedControl => "fragmented control frame",
            WsErrorKind::ControlTooLong => "control frame payload over 125 bytes",
            WsErrorKind::UnexpectedContinuation => {
                "continuation frame without a message to continue"
            }
            WsErrorKind::ExpectedContinuation => "new data frame inside a fragmented message",
            WsErrorKind::LengthMsbSet => "frame length has its most significant bit set",
            WsErrorKind::CloseLengthOne => "close payload of one byte",
            WsErrorKind::InvalidCloseCode => "invalid close code",
            WsErrorKind::InvalidUtf8 => "text message is not valid UTF-8",
            WsErrorKind::InvalidCloseReason => "close reason is not valid UTF-8",
            WsErrorKind::FrameTooBig => "frame too big",
            WsErrorKind::MessageTooBig => "message too big",
        }
    }
}

impl WsError {
    fn new(kind: WsErrorKind) -> Self {
        Self { kind }
    }

    pub fn kind(&self) -> WsErrorKind {
        self.kind
    }

    pub fn close_code(&self) -> u16 {
        self.kind.close_code()
    }

    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }
}

/// Capacity the input buffer keeps across [`Decoder::shrink`]: enough for the usual small
/// message, little enough that many idle sockets cost next to nothing.
const SHRINK_KEEP_BYTES: usize = 256;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

const MAX_CONTROL_PAYLOAD: usize = 125;
const MAX_CLOSE_REASON: usize = 123;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

/// The parsed header of the frame starting at `Decoder::frame_start`.
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

/// Where a completed data message lives.
enum Source {
    /// Unfragmented: the payload is still in the input buffer (zero copy).
    Input(Range<usize>),
    /// Reassembled from fragments.
    Assembled,
}

/// An event located by ranges, so the decoder can finish mutating itself before lending bytes.
enum Ready {
    Data(DataKind, Source),
    Ping(Range<usize>),
    Pong(Range<usize>),
    Close(Option<u16>, Range<usize>),
}

/// Per-connection inbound frame state. Owned by the connection's shard.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    input: Vec<u8>,
    /// Start of the first unconsumed frame in `input`.
    frame_start: usize,
    head: Option<FrameHead>,
    /// Payload bytes of `head`'s frame already unmasked (and UTF-8 checked, for text).
    unmasked: usize,
    /// Some while a fragmented message is open.
    fragmented: Option<DataKind>,
    assembled: Vec<u8>,
    /// The assembled message was lent out and is dropped on the next call.
    assembled_lent: bool,
    utf8: Utf8Stream,
    finished: bool,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            input: Vec::new(),
            frame_start: 0,
            head: None,
            unmasked: 0,
            fragmented: None,
            assembled: Vec::new(),
            assembled_lent: false,
            utf8: Utf8Stream::default(),
            finished: false,
        }
    }

    /// Appends bytes read from the socket. Ignored once the decoder is finished, so a peer that
    /// keeps sending after a Close cannot grow memory.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.finished {
            return;
        }
        self.compact();
        self.input.extend_from_slice(bytes);
    }

    /// The next complete event; `Ok(None)` means more bytes are needed. After a Close event or
    /// an error the decoder is finished and only returns `Ok(None)`.
    pub fn next_event(&mut self) -> Result<Option<Event<'_>>, WsError> {
        let ready = match self.step() {
            Ok(Some(ready)) => ready,
            Ok(None) => return Ok(None),
            Err(err) => {
                self.finish();
                return Err(err);
            }
        };
        Ok(Some(match ready {
            Ready::Data(kind, source) => {
                let bytes = match source {
                    Source::Input(range) => self.input.get_mut(range).unwrap_or_default(),
                    Source::Assembled => self.assembled.as_mut_slice(),
                };
                match kind {
                    DataKind::Text => Event::Text(bytes),
                    DataKind::Binary => Event::Binary(bytes),
                }
            }
            Ready::Ping(range) => Event::Ping(self.input.get(range).unwrap_or_default()),
            Ready::Pong(range) => Event::Pong(self.input.get(range).unwrap_or_default()),
            Ready::Close(code, range) => {
                let reason = self.input.get(range).unwrap_or_default();
                Event::Close(CloseFrameIn {
                    code,
                    reason: std::str::from_utf8(reason).unwrap_or_default(),
                })
            }
        }))
    }

    /// Gives back buffer capacity when nothing is pending; call after draining events.
    pub fn shrink(&mut self) {
        self.release_lent();
        self.compact();
        if self.input.len() <= SHRINK_KEEP_BYTES {
            self.input.shrink_to(SHRINK_KEEP_BYTES);
        }
        if self.fragmented.is_none() {
            self.assembled = Vec::new();
        }
    }

    /// Bytes held for the peer: unconsumed input plus fragments of an open message.
    pub fn buffered_bytes(&self) -> usize {
        let assembled = if self.assembled_lent {
            0
        } else {
            self.assembled.len()
        };
        self.input.len().saturating_sub(self.frame_start) + assembled
    }

    /// Heap capacity held, for memory accounting.
    pub fn capacity_bytes(&self) -> usize {
        self.input.capacity() + self.assembled.capacity()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Hands back the raw bytes not yet decoded, so another decoder (on the shard that takes
    /// the connection over) can continue. Call between messages: a message open in
    /// fragments, or a frame whose payload was already unmasked, cannot be moved, and `None`
    /// says so.
    pub fn take_buffered(&mut self) -> Option<Vec<u8>> {
        if self.head.is_some() || self.fragmented.is_some() || self.finished {
            return None;
        }
        let rest = self
            .input
            .get(self.frame_start..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        self.input.clear();
        self.frame_start = 0;
        self.assembled_lent = false;
        Some(rest)
    }

    /// Nothing more will be decoded, so nothing needs to be kept.
    fn finish(&mut self) {
        self.finished = true;
        self.input = Vec::new();
        self.frame_start = 0;
        self.head = None;
        self.assembled = Vec::new();
        self.assembled_lent = false;
    }

    fn release_lent(&mut self) {
        if self.assembled_lent {
            self.assembled.clear();
            self.assembled_lent = false;
        }
    }

    /// Drops consumed frames from the front; positions are relative to `frame_start`, so this
    /// is safe even mid-frame.
    fn compact(&mut self) {
        if self.frame_start == 0 {
            return;
        }
        if self.frame_start >= self.input.len() {
            self.input.clear();
        } else {
            self.input.drain(..self.frame_start);
        }
        self.frame_start = 0;
    }

    fn step(&mut self) -> Result<Option<Ready>, WsError> {
        self.release_lent();
        if self.finished {
            // The Close event that finished us has been consumed by now.
            self.finish();
            return Ok(None);
        }
        loop {
            let head = match self.head {
                Some(head) => head,
                None => {
                    let available = self.input.get(self.frame_start..).unwrap_or_default();
                    match self.parse_header(available)? {
                        Some(head) => {
                            self.head = Some(head);
                            self.unmasked = 0;
                            head
                        }
                        None => return Ok(None),
                    }
                }
            };
            let payload_start = self.frame_start + head.header_len;
            let payload_end = payload_start.saturating_add(head.payload_len);
            let arrived_end = payload_end.min(self.input.len());
            let fresh = payload_start + self.unmasked..arrived_end;
            let is_text = self.frame_kind(head) == Some(DataKind::Text);
            if let Some(bytes) = self.input.get_mut(fresh.clone()) {
                unmask(bytes, head.mask, self.unmasked);
                if is_text {
                    self.utf8.feed(bytes)?;
                }
                self.unmasked += fresh.len();
            }
            if arrived_end < payload_end {
                return Ok(None);
            }
            self.head = None;
            self.frame_start = payload_end;
            let payload = payload_start..payload_end;
            match head.opcode {
                OP_PING => return Ok(Some(Ready::Ping(payload))),
                OP_PONG => return Ok(Some(Ready::Pong(payload))),
                OP_CLOSE => return self.close(payload).map(Some),
                _ => {
                    if let Some(ready) = self.data_frame(head, payload)? {
                        return Ok(Some(ready));
                    }
                }
            }
        }
    }

    /// Which data stream a frame's payload belongs to; `None` for control frames.
    fn frame_kind(&self, head: FrameHead) -> Option<DataKind> {
        match head.opcode {
            OP_TEXT => Some(DataKind::Text),
            OP_BINARY => Some(DataKind::Binary),
            OP_CONTINUATION => self.fragmented,
            _ => None,
        }
    }

    fn data_frame(
        &mut self,
        head: FrameHead,
        payload: Range<usize>,
    ) -> Result<Option<Ready>, WsError> {
        let Some(kind) = self.frame_kind(head) else {
            return Ok(None);
        };
        if head.opcode != OP_CONTINUATION && head.fin {
            if kind == DataKind::Text {
                self.utf8.finish()?;
            }
            return Ok(Some(Ready::Data(kind, Source::Input(payload))));
        }
        self.assembled
            .extend_from_slice(self.input.get(payload).unwrap_or_default());
        if !head.fin {
            self.fragmented = Some(kind);
            return Ok(None);
        }
        if kind == DataKind::Text {
            self.utf8.finish()?;
        }
        self.fragmented = None;
        self.assembled_lent = true;
        Ok(Some(Ready::Data(kind, Source::Assembled)))
    }

    fn close(&mut self, payload: Range<usize>) -> Result<Ready, WsError> {
        let bytes = self.input.get(payload.clone()).unwrap_or_default();
        let ready = match bytes {
            [] => Ready::Close(None, payload),
            [_] => return Err(WsError::new(WsErrorKind::CloseLengthOne)),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !is_valid_close_code(code) {
                    return Err(WsError::new(WsErrorKind::InvalidCloseCode));
                }
                if std::str::from_utf8(reason).is_err() {
                    return Err(WsError::new(WsErrorKind::InvalidCloseReason));
                }
                Ready::Close(Some(code), payload.start + 2..payload.end)
            }
        };
        self.finished = true;
        Ok(ready)
    }

    /// Parses and validates a frame header, failing as early as the bytes seen allow.
    fn parse_header(&self, buf: &[u8]) -> Result<Option<FrameHead>, WsError> {
        let fail = |kind| Err(WsError::new(kind));
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return fail(WsErrorKind::ReservedBits);
        }
        let is_control = match opcode {
            OP_CONTINUATION if self.fragmented.is_none() => {
                return fail(WsErrorKind::UnexpectedContinuation)
            }
            OP_TEXT | OP_BINARY if self.fragmented.is_some() => {
                return fail(WsErrorKind::ExpectedContinuation)
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
            OP_CLOSE | OP_PING | OP_PONG => true,
            _ => return fail(WsErrorKind::ReservedOpcode),
        };
        if is_control && !fin {
            return fail(WsErrorKind::FragmentedControl);
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        if b1 & 0x80 == 0 {
            return fail(WsErrorKind::UnmaskedFrame);
        }
        let len7 = b1 & 0x7F;
        if is_control && usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return fail(WsErrorKind::ControlTooLong);
        }
        if len7 == 127 && buf.get(2).is_some_and(|&b| b & 0x80 != 0) {
            return fail(WsErrorKind::LengthMsbSet);
        }
        let (declared, len_bytes): (u64, usize) = match len7 {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 2),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
                Some(raw) => (u64::from_be_bytes(raw), 8),
                None => return Ok(None),
            },
            short => (u64::from(short), 0),
        };
        let payload_len = match usize::try_from(declared) {
            Ok(len) if len <= self.limits.max_frame_bytes => len,
            _ => return fail(WsErrorKind::FrameTooBig),
        };
        if !is_control {
            let so_far = if opcode == OP_CONTINUATION {
                self.assembled.len()
            } else {
                0
            };
            if so_far.saturating_add(payload_len) > self.limits.max_message_bytes {
                return fail(WsErrorKind::MessageTooBig);
            }
        }
        let mask_at = 2 + len_bytes;
        let Some(mask) = buf
            .get(mask_at..mask_at + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
        else {
            return Ok(None);
        };
        Ok(Some(FrameHead {
            fin,
            opcode,
            mask,
            header_len: mask_at + 4,
            payload_len,
        }))
    }
}

/// RFC 6455 §7.4: codes a peer may send. 1004-1006 and 1015 are reserved for local use, the
/// rest below 3000 for future standards.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `bytes` with the masking key, where `bytes` starts `offset` bytes into the payload.
fn unmask(bytes: &mut [u8], mask: [u8; 4], offset: usize) {
    let rotated: [u8; 4] = std::array::from_fn(|i| mask[(offset + i) % 4]);
    // Eight bytes at a time: the compiler vectorises this, bytewise XOR it does not.
    let wide = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2],
        rotated[3],
    ]);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        if let Ok(raw) = <[u8; 8]>::try_from(&*chunk) {
            chunk.copy_from_slice(&(u64::from_ne_bytes(raw) ^ wide).to_ne_bytes());
        }
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i % 4];
    }
}

/// Streaming UTF-8 check that carries an incomplete trailing sequence between chunks, so a
/// message is refused at the first byte that cannot start or continue valid UTF-8.
#[derive(Debug, Default)]
struct Utf8Stream {
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Stream {
    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), WsError> {
        let invalid = || WsError::new(WsErrorKind::InvalidUtf8);
        if self.pending_len > 0 {
            let width: usize = match self.pending[0] {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = width.saturating_sub(self.pending_len).min(chunk.len());
            let total = self.pending_len + take;
            let (head, rest) = chunk.split_at(take);
            if let Some(slot) = self.pending.get_mut(self.pending_len..total) {
                slot.copy_from_slice(head);
            }
            match std::str::from_utf8(self.pending.get(..total).unwrap_or_default()) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() => {
                    self.pending_len = total;
                    return Ok(());
                }
                Err(_) => return Err(invalid()),
            }
            chunk = rest;
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            // `error_len() == None` means the chunk ends inside a sequence that is valid so far.
            Err(e) if e.error_len().is_none() => {
                let tail = chunk.get(e.valid_up_to()..).unwrap_or_default();
                self.pending_len = tail.len();
                if let Some(slot) = self.pending.get_mut(..tail.len()) {
                    slot.copy_from_slice(tail);
                }
                Ok(())
            }
            Err(_) => Err(invalid()),
        }
    }

    /// The message ended: a sequence still open is a truncated character.
    fn finish(&mut self) -> Result<(), WsError> {
        let truncated = self.pending_len != 0;
        self.pending_len = 0;
        if truncated {
            Err(WsError::new(WsErrorKind::InvalidUtf8))
        } else {
            Ok(())
        }
    }
}

/// Frame types the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Text,
    Binary,
    Ping,
    Pong,
    Close,
}

impl OpCode {
    fn bits(self) -> u8 {
        match self {
            OpCode::Text => OP_TEXT,
            OpCode::Binary => OP_BINARY,
            OpCode::Ping => OP_PING,
            OpCode::Pong => OP_PONG,
            OpCode::Close => OP_CLOSE,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Ping | OpCode::Pong | OpCode::Close)
    }
}

/// Appends one unmasked, final frame. Control payloads are cut to the 125 bytes RFC 6455
/// allows, so a caller echoing a ping cannot produce a frame the peer must reject.
pub fn encode_frame(op: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let payload = if op.is_control() {
        payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload)
    } else {
        payload
    };
    out.reserve(header_len(payload.len()) + payload.len());
    out.push(0x80 | op.bits());
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// A text frame encoded once, to be queued to many sockets. `payload` must be UTF-8.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame_bytes(OpCode::Text, payload)
}

/// A binary frame encoded once, to be queued to many sockets.
pub fn binary_frame(payload: &[u8]) -> Bytes {
    frame_bytes(OpCode::Binary, payload)
}

/// A Close frame; `reason` is cut at a character boundary to the 123 bytes that fit.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.get(..cut).unwrap_or_default().as_bytes());
    frame_bytes(OpCode::Close, &payload)
}

/// The header of an unmasked frame carrying `len` payload bytes.
fn header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

fn frame_bytes(op: OpCode, payload: &[u8]) -> Bytes {
    // Exactly sized: `Bytes::from` a vector with spare capacity allocates a second block for
    // its shared header.
    let payload = if op.is_control() {
        payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload)
    } else {
        payload
    };
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    encode_frame(op, payload, &mut out);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    const BIG: Limits = Limits {
        max_frame_bytes: 1 << 20,
        max_message_bytes: 1 << 20,
    };

    /// A client frame: `b0` is FIN|RSV|opcode verbatim so tests can build illegal headers.
    fn raw_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![b0];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        raw_frame(if fin { 0x80 } else { 0 } | opcode, payload, Some(MASK))
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    fn own(event: Event<'_>) -> Owned {
        match event {
            Event::Text(b) => Owned::Text(b.to_vec()),
            Event::Binary(b) => Owned::Binary(b.to_vec()),
            Event::Ping(b) => Owned::Ping(b.to_vec()),
            Event::Pong(b) => Owned::Pong(b.to_vec()),
            Event::Close(c) => Owned::Close(c.code, c.reason.to_owned()),
        }
    }

    /// Feeds `input` in `chunk`-sized pieces, draining events after each, as the network
    /// layer does.
    fn run(limits: Limits, input: &[u8], chunk: usize) -> (Vec<Owned>, Option<WsErrorKind>) {
        let mut decoder = Decoder::new(limits);
        let mut events = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            decoder.feed(piece);
            loop {
                match decoder.next_event() {
                    Ok(Some(event)) => events.push(own(event)),
                    Ok(None) => break,
                    Err(err) => return (events, Some(err.kind())),
                }
            }
        }
        (events, None)
    }

    fn run_all(input: &[u8]) -> (Vec<Owned>, Option<WsErrorKind>) {
        run(BIG, input, usize::MAX)
    }

    #[test]
    fn error_kinds_have_one_code_and_short_reason() {
        for kind in WsErrorKind::ALL {
            let err = WsError::new(kind);
            assert!(matches!(err.close_code(), 1002 | 1007 | 1009), "{kind:?}");
            assert!(
                !err.reason().is_empty() && err.reason().len() <= 123,
                "{kind:?}"
            );
            assert_eq!(err.to_string(), err.reason());
        }
    }

    #[test]
    fn decodes_each_frame_type() {
        let mut input = frame(true, OP_TEXT, "héllo".as_bytes());
        input.extend(frame(true, OP_BINARY, &[0, 1, 2, 255]));
        input.extend(frame(true, OP_PING, b"p"));
        input.extend(frame(true, OP_PONG, b""));
        input.extend(frame(true, OP_TEXT, &[b'a'; 300]));
        input.extend(frame(true, OP_BINARY, &vec![7u8; 70_000]));
        input.extend(frame(true, OP_CLOSE, &close_payload(1000, b"bye")));
        input.extend(frame(true, OP_TEXT, b"after close is ignored"));
        let (events, err) = run_all(&input);
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![
                Owned::Text("héllo".into()),
                Owned::Binary(vec![0, 1, 2, 255]),
                Owned::Ping(b"p".to_vec()),
                Owned::Pong(vec![]),
                Owned::Text(vec![b'a'; 300]),
                Owned::Binary(vec![7u8; 70_000]),
                Owned::Close(Some(1000), "bye".into()),
            ]
        );
    }

    #[test]
    fn fragmented_messages_with_interleaved_control_frames() {
        let mut input = frame(false, OP_TEXT, "frag".as_bytes());
        input.extend(frame(true, OP_PING, b"1"));
        input.extend(frame(false, OP_CONTINUATION, &[0xE2, 0x82]));
        input.extend(frame(true, OP_PONG, b"2"));
        input.extend(frame(false, OP_CONTINUATION, b""));
        input.extend(frame(true, OP_CONTINUATION, &[0xAC, b'!']));
        input.extend(frame(false, OP_BINARY, &[1]));
        input.extend(frame(true, OP_CONTINUATION, &[2]));
        input.extend(frame(true, OP_CLOSE, b""));
        let (events, err) = run_all(&input);
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![
                Owned::Ping(b"1".to_vec()),
                Owned::Pong(b"2".to_vec()),
                Owned::Text("frag€!".into()),
                Owned::Binary(vec![1, 2]),
                Owned::Close(None, String::new()),
            ]
        );
    }

    #[test]
    fn error_table() {
        let long_len_msb = {
            let mut f = vec![0x82, 0x80 | 127];
            f.extend_from_slice(&(1u64 << 63).to_be_bytes());
            f
        };
        let cat = |frames: &[Vec<u8>]| frames.concat();
        let cases: Vec<(&str, Vec<u8>, WsErrorKind)> = vec![
            (
                "unmasked",
                raw_frame(0x81, b"hi", None),
                WsErrorKind::UnmaskedFrame,
            ),
            (
                "rsv1",
                raw_frame(0xC1, b"hi", Some(MASK)),
                WsErrorKind::ReservedBits,
            ),
            (
                "rsv2",
                raw_frame(0xA1, b"hi", Some(MASK)),
                WsErrorKind::ReservedBits,
            ),
            (
                "rsv3",
                raw_frame(0x91, b"hi", Some(MASK)),
                WsErrorKind::ReservedBits,
            ),
            ("opcode 3", frame(true, 3, b""), WsErrorKind::ReservedOpcode),
            ("opcode 7", frame(true, 7, b""), WsErrorKind::ReservedOpcode),
            (
                "opcode 0xB",
                frame(true, 0xB, b""),
                WsErrorKind::ReservedOpcode,
            ),
            (
                "opcode 0xF",
                frame(true, 0xF, b""),
                WsErrorKind::ReservedOpcode,
            ),
            (
                "fragmented ping",
                frame(false, OP_PING, b""),
                WsErrorKind::FragmentedControl,
            ),
            (
                "fragmented close",
                frame(false, OP_CLOSE, b""),
                WsErrorKind::FragmentedControl,
            ),
            (
                "ping 126",
                frame(true, OP_PING, &[0; 126]),
                WsErrorKind::ControlTooLong,
            ),
            (
                "close 126",
                frame(true, OP_CLOSE, &[0; 126]),
                WsErrorKind::ControlTooLong,
            ),
            (
                "lone continuation",
                frame(true, OP_CONTINUATION, b"x"),
                WsErrorKind::UnexpectedContinuation,
            ),
            (
                "continuation after finished message",
                cat(&[
                    frame(false, OP_TEXT, b"a"),
                    frame(true, OP_CONTINUATION, b"b"),
                    frame(true, OP_CONTINUATION, b"c"),
                ]),
                WsErrorKind::UnexpectedContinuation,
            ),
            (
                "text inside fragmented",
                cat(&[frame(false, OP_TEXT, b"a"), frame(true, OP_TEXT, b"b")]),
                WsErrorKind::ExpectedContinuation,
            ),
            (
                "binary inside fragmented",
                cat(&[frame(false, OP_BINARY, b"a"), frame(false, OP_BINARY, b"b")]),
                WsErrorKind::ExpectedContinuation,
            ),
            ("length msb", long_len_msb, WsErrorKind::LengthMsbSet),
            (
                "close length 1",
                frame(true, OP_CLOSE, &[3]),
                WsErrorKind::CloseLengthOne,
            ),
            (
                "close reason utf8",
                frame(true, OP_CLOSE, &close_payload(1000, &[0xff])),
                WsErrorKind::InvalidCloseReason,
            ),
            (
                "bad utf8",
                frame(true, OP_TEXT, &[b'a', 0xC0, 0x80]),
                WsErrorKind::InvalidUtf8,
            ),
            (
                "truncated utf8",
                frame(true, OP_TEXT, &[0xE2, 0x82]),
                WsErrorKind::InvalidUtf8,
            ),
            (
                "truncated utf8 across fragments",
                cat(&[
                    frame(false, OP_TEXT, b"ok"),
                    frame(true, OP_CONTINUATION, &[0xF0, 0x9F]),
                ]),
                WsErrorKind::InvalidUtf8,
            ),
            (
                "surrogate",
                frame(true, OP_TEXT, &[0xED, 0xA0, 0x80]),
                WsErrorKind::InvalidUtf8,
            ),
            (
                "above U+10FFFF",
                frame(true, OP_TEXT, &[0xF4, 0x90, 0x80, 0x80]),
                WsErrorKind::InvalidUtf8,
            ),
        ];
        for (name, input, want) in cases {
            for chunk in [usize::MAX, 1] {
                let (_, err) = run(BIG, &input, chunk);
                assert_eq!(err, Some(want), "{name}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn close_code_table() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999,
        ];
        let invalid = [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for code in valid {
            let (events, err) = run_all(&frame(true, OP_CLOSE, &close_payload(code, b"r")));
            assert_eq!(
                (events, err),
                (vec![Owned::Close(Some(code), "r".into())], None),
                "{code}"
            );
        }
        for code in invalid {
            let (_, err) = run_all(&frame(true, OP_CLOSE, &close_payload(code, b"")));
            assert_eq!(err, Some(WsErrorKind::InvalidCloseCode), "{code}");
        }
    }

    #[test]
    fn oversized_frames_fail_from_the_header_alone() {
        let limits = Limits {
            max_frame_bytes: 1000,
            max_message_bytes: 1500,
        };
        let header_only = |len: u64| {
            let mut f = vec![0x82, 0x80 | 127];
            f.extend_from_slice(&len.to_be_bytes());
            f
        };
        for len in [1001, u64::from(u32::MAX) + 1, (1 << 63) - 1] {
            let mut decoder = Decoder::new(limits);
            decoder.feed(&header_only(len));
            assert_eq!(
                decoder.next_event().map(|e| e.map(own)),
                Err(WsError::new(WsErrorKind::FrameTooBig)),
                "{len}"
            );
            assert!(
                decoder.capacity_bytes() < 64,
                "nothing reserved for the payload"
            );
        }
        let mut decoder = Decoder::new(limits);
        decoder.feed(&header_only(1 << 63));
        assert_eq!(
            decoder.next_event().map(|e| e.map(own)),
            Err(WsError::new(WsErrorKind::LengthMsbSet))
        );
        // 16-bit form too.
        let (_, err) = run(
            limits,
            frame(true, OP_BINARY, &[0; 1001])
                .get(..4)
                .unwrap_or_default(),
            1,
        );
        assert_eq!(err, Some(WsErrorKind::FrameTooBig));
    }

    #[test]
    fn header_errors_need_only_the_bytes_that_show_them() {
        let cases: &[(&[u8], WsErrorKind)] = &[
            (&[0xC1], WsErrorKind::ReservedBits),
            (&[0x83], WsErrorKind::ReservedOpcode),
            (&[0x80], WsErrorKind::UnexpectedContinuation),
            (&[0x09], WsErrorKind::FragmentedControl),
            (&[0x81, 0x05], WsErrorKind::UnmaskedFrame),
            (&[0x89, 0xFE], WsErrorKind::ControlTooLong),
            (&[0x82, 0xFF, 0x80], WsErrorKind::LengthMsbSet),
        ];
        for (bytes, want) in cases {
            let mut decoder = Decoder::new(BIG);
            decoder.feed(bytes);
            assert_eq!(
                decoder.next_event().map(|e| e.map(own)),
                Err(WsError::new(*want)),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn huge_declared_length_with_unbounded_limits_waits_without_allocating() {
        let unbounded = Limits {
            max_frame_bytes: usize::MAX,
            max_message_bytes: usize::MAX,
        };
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&((1u64 << 63) - 1).to_be_bytes());
        header.extend_from_slice(&MASK);
        header.extend_from_slice(b"some payload");
        let mut decoder = Decoder::new(unbounded);
        decoder.feed(&header);
        assert_eq!(decoder.next_event(), Ok(None));
        assert!(decoder.capacity_bytes() < 1024);
    }

    #[test]
    fn decoder_state_stays_small() {
        assert!(
            std::mem::size_of::<Decoder>() <= 160,
            "{}",
            std::mem::size_of::<Decoder>()
        );
        assert_eq!(Decoder::new(BIG).capacity_bytes(), 0);
    }

    #[test]
    fn oversized_messages_fail_as_soon_as_exceeded() {
        let limits = Limits {
            max_frame_bytes: 1000,
            max_message_bytes: 1500,
        };
        let mut input = frame(false, OP_BINARY, &[0; 1000]);
        // Only the header of the continuation that crosses the limit.
        input.extend(
            frame(true, OP_CONTINUATION, &[0; 501])
                .get(..4)
                .unwrap_or_default(),
        );
        let (events, err) = run(limits, &input, usize::MAX);
        assert_eq!((events, err), (vec![], Some(WsErrorKind::MessageTooBig)));
        let at_limit = [
            frame(false, OP_BINARY, &[0; 1000]),
            frame(true, OP_CONTINUATION, &[0; 500]),
        ]
        .concat();
        let (events, err) = run(limits, &at_limit, usize::MAX);
        assert_eq!((events, err), (vec![Owned::Binary(vec![0; 1500])], None));
        let small = Limits {
            max_frame_bytes: 1000,
            max_message_bytes: 10,
        };
        let (_, err) = run(small, &frame(true, OP_TEXT, &[b'a'; 11]), usize::MAX);
        assert_eq!(err, Some(WsErrorKind::MessageTooBig));
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_completes() {
        let mut input = frame(true, OP_TEXT, &[b'a', b'b', 0xFF, b'c', b'd', b'e']);
        // Drop the last payload bytes: the frame is incomplete but already invalid.
        input.truncate(input.len() - 3);
        let mut decoder = Decoder::new(BIG);
        decoder.feed(&input);
        assert_eq!(
            decoder.next_event().map(|e| e.map(own)),
            Err(WsError::new(WsErrorKind::InvalidUtf8))
        );
        // And across fragments, before the message's final frame.
        let input = [
            frame(false, OP_TEXT, "κόσμε".as_bytes()),
            frame(false, OP_CONTINUATION, &[0xCE, 0xFF]),
        ]
        .concat();
        let (_, err) = run_all(&input);
        assert_eq!(err, Some(WsErrorKind::InvalidUtf8));
    }

    #[test]
    fn finished_decoder_stays_quiet() {
        let mut decoder = Decoder::new(BIG);
        decoder.feed(&frame(true, OP_TEXT, &[0xFF]));
        assert!(decoder.next_event().is_err());
        assert!(decoder.is_finished());
        decoder.feed(&frame(true, OP_TEXT, b"ok"));
        assert_eq!(decoder.next_event(), Ok(None));
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn text_is_mutable_in_place() {
        let mut decoder = Decoder::new(BIG);
        decoder.feed(&frame(true, OP_TEXT, b"abc"));
        if let Ok(Some(Event::Text(bytes))) = decoder.next_event() {
            bytes.make_ascii_uppercase();
            assert_eq!(bytes, b"ABC");
        } else {
            panic!("expected text");
        }
    }

    #[test]
    fn shrink_releases_capacity_when_idle() {
        let mut decoder = Decoder::new(BIG);
        let big = frame(true, OP_BINARY, &vec![1u8; 100_000]);
        decoder.feed(&big);
        assert!(matches!(decoder.next_event(), Ok(Some(Event::Binary(_)))));
        assert_eq!(decoder.next_event(), Ok(None));
        decoder.shrink();
        assert_eq!(decoder.buffered_bytes(), 0);
        assert!(
            decoder.capacity_bytes() <= SHRINK_KEEP_BYTES,
            "{}",
            decoder.capacity_bytes()
        );

        // Fragments: the assembled buffer is released too.
        let input = [
            frame(false, OP_TEXT, &[b'a'; 5000]),
            frame(true, OP_CONTINUATION, &[b'b'; 5000]),
        ]
        .concat();
        decoder.feed(&input);
        assert!(matches!(decoder.next_event(), Ok(Some(Event::Text(t))) if t.len() == 10_000));
        decoder.shrink();
        assert!(
            decoder.capacity_bytes() <= SHRINK_KEEP_BYTES,
            "{}",
            decoder.capacity_bytes()
        );

        // A partial frame survives shrink and completes afterwards.
        let f = frame(true, OP_TEXT, b"partial frame");
        let (first, second) = f.split_at(5);
        decoder.feed(first);
        assert_eq!(decoder.next_event(), Ok(None));
        decoder.shrink();
        assert_eq!(decoder.buffered_bytes(), 5);
        decoder.feed(second);
        assert_eq!(
            decoder.next_event().map(|e| e.map(own)),
            Ok(Some(Owned::Text(b"partial frame".to_vec())))
        );
    }

    #[test]
    fn buffered_bytes_counts_input_and_open_fragments() {
        let mut decoder = Decoder::new(BIG);
        decoder.feed(&frame(false, OP_BINARY, &[1; 10]));
        decoder.feed(&[0x80]);
        assert_eq!(decoder.next_event(), Ok(None));
        assert_eq!(decoder.buffered_bytes(), 11);
    }

    #[test]
    fn encoder_table() {
        let cases: Vec<(OpCode, Vec<u8>, Vec<u8>)> = vec![
            (OpCode::Text, b"hi".to_vec(), vec![0x81, 2, b'h', b'i']),
            (OpCode::Binary, vec![], vec![0x82, 0]),
            (OpCode::Ping, vec![], vec![0x89, 0]),
            (OpCode::Pong, b"x".to_vec(), vec![0x8A, 1, b'x']),
            (OpCode::Close, vec![3, 232], vec![0x88, 2, 3, 232]),
        ];
        for (op, payload, want) in cases {
            let mut out = Vec::new();
            encode_frame(op, &payload, &mut out);
            assert_eq!(out, want, "{op:?}");
        }
        for (len, header) in [
            (125usize, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (65535, vec![0x82, 126, 255, 255]),
            (65536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let out = binary_frame(&vec![0; len]);
            assert_eq!(out.get(..header.len()), Some(&header[..]), "{len}");
            assert_eq!(out.len(), header.len() + len);
        }
        let mut out = Vec::new();
        encode_frame(OpCode::Ping, &[0; 200], &mut out);
        assert_eq!(out.len(), 2 + 125, "control payload clamped");
        assert_eq!(&text_frame(b"ok")[..], &[0x81, 2, b'o', b'k']);
    }

    #[test]
    fn close_frame_truncates_at_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let frame = close_frame(1001, &reason);
        assert_eq!(frame.get(..2), Some(&[0x88, 2 + 122][..]));
        assert_eq!(frame.get(2..4), Some(&1001u16.to_be_bytes()[..]));
        assert!(std::str::from_utf8(frame.get(4..).unwrap_or_default()).is_ok());
        assert_eq!(&close_frame(1000, "")[..], &[0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn unmask_matches_bytewise_at_every_offset() {
        let data: Vec<u8> = (0..=255).collect();
        for offset in 0..8 {
            for len in [0, 1, 7, 8, 9, 31, 200] {
                let mut fast = data[..len].to_vec();
                unmask(&mut fast, MASK, offset);
                let slow: Vec<u8> = data[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ MASK[(offset + i) % 4])
                    .collect();
                assert_eq!(fast, slow, "offset {offset} len {len}");
            }
        }
    }

    /// A frame description the proptests turn into bytes; illegal ones are allowed on purpose.
    fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
        let opcode = prop_oneof![
            4 => Just(OP_CONTINUATION),
            4 => Just(OP_TEXT),
            4 => Just(OP_BINARY),
            2 => Just(OP_PING),
            1 => Just(OP_PONG),
            1 => Just(OP_CLOSE),
            1 => 0u8..16,
        ];
        let payload = prop_oneof![
            3 => "[a-zé€😀]{0,20}".prop_map(String::into_bytes),
            1 => proptest::collection::vec(any::<u8>(), 0..300),
            1 => Just(close_payload(1000, b"ok")),
        ];
        (
            any::<bool>(),
            opcode,
            payload,
            any::<[u8; 4]>(),
            prop::bool::weighted(0.02),
        )
            .prop_map(|(fin, op, payload, mask, unmasked)| {
                let b0 = if fin || op >= 8 { 0x80 } else { 0 } | op;
                raw_frame(b0, &payload, if unmasked { None } else { Some(mask) })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn chunking_never_changes_the_outcome(
            frames in proptest::collection::vec(arb_frame(), 0..12),
            chunk in 1usize..40,
        ) {
            let input = frames.concat();
            let whole = run_all(&input);
            prop_assert_eq!(&run(BIG, &input, 1), &whole);
            prop_assert_eq!(&run(BIG, &input, chunk), &whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
            let tiny = Limits { max_frame_bytes: 64, max_message_bytes: 128 };
            let whole = run(tiny, &input, usize::MAX);
            prop_assert_eq!(run(tiny, &input, chunk), whole);
        }

        #[test]
        fn utf8_stream_agrees_with_std(bytes in proptest::collection::vec(any::<u8>(), 0..64), cuts in proptest::collection::vec(0usize..64, 0..6)) {
            let mut stream = Utf8Stream::default();
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
            cuts.sort_unstable();
            let mut last = 0;
            let mut ok = true;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                if stream.feed(&bytes[last..cut]).is_err() { ok = false; break; }
                last = cut;
            }
            let ok = ok && stream.finish().is_ok();
            prop_assert_eq!(ok, std::str::from_utf8(&bytes).is_ok());
        }
    }
}
