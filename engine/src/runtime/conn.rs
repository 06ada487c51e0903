//! A connection's task on its owner shard: one hand-written poll loop that reads, runs the
//! session, flushes the outbound queue as one write per turn, and carries out what the
//! connection's [`Lifecycle`] decides (pings, idle and expiry closes, the close handshake).
//! Owned by the connection's shard.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes};
use glommio::timer::Timer;

use super::fd::{OwnedSocket, READABLE, WRITABLE};
use super::msg::Admitted;
use super::probe::Probe;
use super::router::{self, Traffic};
use super::shard::{CloseCmd, Conn, Drive, Shard};
use crate::lifecycle::{Action, Flushed, Lifecycle, Timing};
use crate::protocol::{Recipients, Rejection};
use crate::session::{Effect, Session, Turn};
use crate::ws::codec::{self, Decoder, Event, OpCode};

/// Writes are coalesced up to this many bytes per syscall.
const WRITE_CHUNK: usize = 64 * 1024;
/// Read/process rounds before yielding to other tasks, so one busy socket cannot starve the
/// shard.
const ROUNDS_PER_TURN: usize = 16;

thread_local! {
    /// One read buffer per shard, shared by its connections: tasks on a shard never poll
    /// concurrently, and an idle socket then holds no read buffer at all.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice());
    /// Where several queued frames are coalesced into one write, per shard for the same
    /// reason: a connection keeps only what the kernel did not take.
    static WSCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(WRITE_CHUNK));
}

/// Admits a socket on this (owner) shard and spawns its task.
pub fn start(shard: Rc<Shard>, sock: OwnedSocket, mut a: Admitted) {
    let (conn, session) = shard.join(&mut a);
    if let Some(resp) = a.handshake {
        conn.enqueue_control(resp.into());
    }
    let mut effects = Vec::new();
    {
        let mut turn = Turn {
            proto: &shard.shared.proto,
            verifiers: &shard.shared.verifiers,
            now_ms: super::shared::unix_ms(),
            ids: &mut shard.ids.borrow_mut(),
        };
        session.on_connect(&mut turn, &mut effects);
        session.on_join(&mut turn, &mut effects);
    }
    apply(&shard, &conn, &mut effects);
    // Never the token or the query string: only where the client is and what it opened.
    let endpoint = &shard.shared.proto.endpoints[a.endpoint].name;
    tracing::debug!(shard = shard.id, conn = conn.id, client = %a.client, endpoint = %endpoint, "admitted");
    let (client, ip_slot, user_slot) = (a.client, a.ip_slot, a.user_slot);
    // Built before the spawn: a future holds its captures and its locals side by side, so
    // moving the socket and session into a task built inside would store them twice in every
    // idle connection's task.
    let driven = Rc::new(Driven {
        task: RefCell::new(ConnTask::new(
            shard.clone(),
            sock,
            conn.clone(),
            session,
            a.leftover,
        )),
        done: Cell::new(None),
    });
    conn.set_driver(Some(driven.clone()));
    glommio::spawn_local(async move {
        let code = futures::future::poll_fn(|cx| match driven.done.get() {
            Some(code) => Poll::Ready(code),
            None => driven.task.borrow_mut().poll(cx),
        })
        .await;
        // Breaks the cycle through the `Conn`; the readiness loop holds the driver only
        // while it runs it, so this is now the task's last handle.
        conn.set_driver(None);
        let mut task = driven.task.borrow_mut();
        let farewell = task.session.on_leave(&mut Turn {
            proto: &shard.shared.proto,
            verifiers: &shard.shared.verifiers,
            now_ms: super::shared::unix_ms(),
            ids: &mut shard.ids.borrow_mut(),
        });
        // Its providers and searches go with it.
        let mut effects = Vec::new();
        task.session.on_disconnect(&mut effects);
        apply(&shard, &conn, &mut effects);
        // Dropping the task closes the socket; leave after so metrics see the final code.
        drop(task);
        drop(driven);
        drop(ip_slot);
        drop(user_slot);
        tracing::debug!(shard = shard.id, conn = conn.id, %client, code, "closed");
        shard.leave(&conn, code);
        for frame in farewell {
            shard.deliver(&conn.room, &frame, None);
        }
    })
    .detach();
}

/// Carries out a session's effects for connection `conn` on its shard.
fn apply(shard: &Rc<Shard>, conn: &Conn, effects: &mut Vec<Effect>) {
    for e in effects.drain(..) {
        match e {
            Effect::Send(frame) => {
                if conn.enqueue(&frame, &shard.shared, &shard.probe) {
                    Probe::inc(&shard.probe.messages_out, 1);
                }
            }
            Effect::Room {
                room,
                frame,
                recipients,
            } => {
                let exclude = (recipients == Recipients::ExcludeSender).then_some(conn.id);
                match room {
                    None => {
                        shard.deliver(&conn.room, &frame, exclude);
                    }
                    Some(r) => {
                        router::deliver(shard, &r, frame, exclude, Traffic::Broadcast);
                    }
                }
            }
            Effect::SetFilter(f) => conn.set_filter(f),
            Effect::Close(r) => conn.request_close(CloseCmd::Rejection(r)),
            Effect::CloseRaw(code, reason) => conn.request_close(CloseCmd::Raw(code, reason)),
            Effect::Geo(g) => super::geo::route(shard, conn, g),
        }
    }
}

/// A connection task shared between its glommio task and the readiness loop ([`Drive`]).
struct Driven {
    task: RefCell<ConnTask>,
    /// Set when a poll from the readiness loop finished the connection; the glommio task,
    /// woken then, tears it down.
    done: Cell<Option<u16>>,
}

impl Drive for Driven {
    fn drive(&self, waker: &Waker, now: Instant) {
        if self.done.get().is_some() {
            return;
        }
        let Ok(mut task) = self.task.try_borrow_mut() else {
            return waker.wake_by_ref();
        };
        if let Poll::Ready(code) = task.turn(&mut Context::from_waker(waker), Some(now)) {
            self.done.set(Some(code));
            waker.wake_by_ref();
        }
    }
}

impl Drop for ConnTask {
    fn drop(&mut self) {
        // The socket closes right after: nothing may write to its descriptor number again, and
        // no event may name it.
        self.conn.direct.revoke();
        self.shard.poller.remove(&self.sock);
    }
}

struct ConnTask {
    shard: Rc<Shard>,
    sock: OwnedSocket,
    conn: Rc<Conn>,
    session: Session,
    decoder: Decoder,
    echo: bool,
    /// Bytes accepted for writing that the kernel has not taken yet: a queued frame itself
    /// (shared with the other members of its fan-out, no copy) or the unwritten tail of a
    /// coalesced write.
    pending: Bytes,
    life: Lifecycle,
    /// The token deadline `life` was last given, to notice an in-band refresh.
    valid_until: Option<u64>,
    /// Armed at `life.poll_timeout()`, which bytes only postpone: activity leaves it alone,
    /// and a timer that fires early finds nothing due and is re-armed.
    tick: Timer,
    /// When `tick` fires, and whether it has been polled since it was set. glommio re-files
    /// a timer in its timer tree on every poll, so it is polled only when new or due: the
    /// task's waker never changes, and the reactor wakes it when the timer fires.
    tick_due: Instant,
    tick_armed: bool,
    effects: Vec<Effect>,
    /// Bytes that arrived before the task existed (read past the request head, or behind a
    /// first-message token) sit in the decoder without a read to trigger their handling: the
    /// first turn handles them. Without it a message pipelined behind authentication waited
    /// for the client's next bytes, which a client waiting for the answer never sends.
    undecoded: bool,
}

impl ConnTask {
    fn new(
        shard: Rc<Shard>,
        sock: OwnedSocket,
        conn: Rc<Conn>,
        session: Session,
        leftover: Vec<u8>,
    ) -> Self {
        let proto = &shard.shared.proto;
        let mut decoder = Decoder::new(shard.shared.ws_limits());
        let undecoded = !leftover.is_empty();
        if undecoded {
            decoder.feed(&leftover);
        }
        let echo = proto.endpoints[session.endpoint].echo;
        // Taken before the timer is made, so `tick_due` is never later than the timer's own
        // deadline.
        let now = Instant::now();
        let mut life = Lifecycle::new(Timing::from_limits(&proto.limits), now);
        let valid_until = session.valid_until();
        life.set_expiry(valid_until, now, super::shared::unix_ms());
        let tick_due = life.poll_timeout().unwrap_or(now);
        let tick = Timer::new(tick_due.saturating_duration_since(now));
        conn.direct.set(&sock);
        if let Err(e) = shard.poller.add(&sock, conn.id) {
            // Without readiness events the socket would never be read again.
            tracing::warn!(conn = conn.id, error = %e, "could not watch the socket; closing it");
            conn.request_close(CloseCmd::Raw(1011, "server out of resources"));
        }
        ConnTask {
            shard,
            sock,
            conn,
            session,
            decoder,
            echo,
            pending: Bytes::new(),
            life,
            valid_until,
            tick,
            tick_due,
            tick_armed: false,
            effects: Vec::new(),
            undecoded,
        }
    }

    /// Moves `tick` to the lifecycle's next deadline when that changed: after the timer
    /// fired, a close began or the token was refreshed; never per message.
    fn rearm(&mut self, now: Instant) {
        let Some(due) = self.life.poll_timeout() else {
            return;
        };
        if due != self.tick_due {
            // `now` precedes the timer's own clock reading, so the timer fires no earlier than
            // `due`.
            self.tick_due = due;
            self.tick = Timer::new(due.saturating_duration_since(now));
            self.tick_armed = false;
        }
    }

    /// Queues the close frame for `cmd` and stops taking data messages.
    fn begin_close(&mut self, cmd: CloseCmd) {
        let (code, reason): (u16, &str) = match cmd {
            CloseCmd::Rejection(r) => {
                let c = self.shard.shared.proto.close_for(r);
                (c.code, &c.reason)
            }
            CloseCmd::Raw(code, reason) => (code, reason),
        };
        let now = Instant::now();
        if !self.life.begin_close(code, now) {
            return;
        }
        // Frames queued before the close still go out first (answers to messages that came
        // before a protocol error, RFC 6455 7.1.6); a slow consumer's queue was already dropped
        // when it overflowed, and nothing is queued after this point.
        self.conn.request_close(cmd);
        self.conn.enqueue_control(codec::close_frame(code, reason));
        self.rearm(now);
    }

    /// An in-band refresh changed the token's deadline: the timer may now be too late.
    fn refreshed(&mut self) {
        self.valid_until = self.session.valid_until();
        let now = Instant::now();
        self.life
            .set_expiry(self.valid_until, now, super::shared::unix_ms());
        self.rearm(now);
    }

    fn handle_events(&mut self) {
        // The shard (`Rc`), not the protocol (`Arc`): a locked increment per read otherwise.
        let shard = self.shard.clone();
        let proto = &shard.shared.proto;
        loop {
            let ev = match self.decoder.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    let (code, reason) = (e.close_code(), e.reason());
                    self.begin_close(CloseCmd::Raw(code, reason));
                    break;
                }
            };
            match ev {
                Event::Text(text) => {
                    if !self.life.is_open() {
                        continue;
                    }
                    Probe::inc(&self.shard.probe.messages_in, 1);
                    Probe::inc(&self.shard.probe.bytes_in, text.len() as u64);
                    if self.echo {
                        self.effects.push(Effect::Send(codec::text_frame(text)));
                    } else {
                        let session = &mut self.session;
                        let effects = &mut self.effects;
                        let mut ids = self.shard.ids.borrow_mut();
                        let now = super::shared::unix_ms();
                        let fault = super::fault::injected(text);
                        if fault == Some(super::fault::Fault::KillShard) {
                            panic!("injected fault: kill shard");
                        }
                        // A bug in message handling must cost one connection, not the shard.
                        let r = super::fault::guarded(|| {
                            if fault == Some(super::fault::Fault::PanicInHandler) {
                                panic!("injected fault: panic in handler");
                            }
                            session.handle_text(
                                &mut Turn {
                                    proto,
                                    verifiers: &self.shard.shared.verifiers,
                                    now_ms: now,
                                    ids: &mut ids,
                                },
                                text,
                                effects,
                            )
                        });
                        if r.is_none() {
                            effects.push(Effect::Close(Rejection::Internal));
                        }
                        drop(ids);
                        if self.session.valid_until() != self.valid_until {
                            self.refreshed();
                        }
                    }
                }
                Event::Binary(data) => {
                    if !self.life.is_open() {
                        continue;
                    }
                    Probe::inc(&self.shard.probe.messages_in, 1);
                    Probe::inc(&self.shard.probe.bytes_in, data.len() as u64);
                    if self.echo {
                        let mut out = Vec::with_capacity(data.len() + 10);
                        codec::encode_frame(OpCode::Binary, data, &mut out);
                        self.effects.push(Effect::Send(out.into()));
                    } else {
                        self.session.handle_binary(&mut self.effects);
                    }
                }
                Event::Ping(payload) => {
                    let mut out = Vec::with_capacity(payload.len() + 2);
                    codec::encode_frame(OpCode::Pong, payload, &mut out);
                    if self.life.is_open()
                        && !self.conn.enqueue_pong(out.into(), &self.shard.shared)
                    {
                        Probe::inc(&self.shard.probe.queue_drops, 1);
                    }
                }
                Event::Pong(_) => {}
                Event::Close(c) => {
                    let now = Instant::now();
                    if self.life.on_peer_close(c.code, now) {
                        // Echo the peer's code, as RFC 6455 5.5.1 asks.
                        let frame = match c.code {
                            Some(code) => codec::close_frame(code, ""),
                            None => {
                                let mut out = Vec::with_capacity(2);
                                codec::encode_frame(OpCode::Close, &[], &mut out);
                                out.into()
                            }
                        };
                        let code = self.life.close_code().unwrap_or(1000);
                        self.conn.request_close(CloseCmd::Raw(code, ""));
                        self.conn.enqueue_control(frame);
                        self.rearm(now);
                    }
                    break;
                }
            }
            if !self.effects.is_empty() {
                let mut effects = std::mem::take(&mut self.effects);
                apply(&self.shard, &self.conn, &mut effects);
                self.effects = effects;
            }
        }
        self.decoder.shrink();
    }

    /// The timer fired: carries out what the lifecycle finds due. `Some(code)`: the
    /// connection is over.
    fn on_tick(&mut self) -> Option<u16> {
        let now = Instant::now();
        match self.life.handle_timeout(now) {
            Some(Action::Ping) => {
                let mut out = Vec::with_capacity(2);
                codec::encode_frame(OpCode::Ping, &[], &mut out);
                self.conn.enqueue_control(out.into());
            }
            Some(Action::Close(r)) => self.begin_close(CloseCmd::Rejection(r)),
            Some(Action::Finish(code)) => return Some(code),
            None => {}
        }
        self.rearm(now);
        None
    }

    /// Returns the close code the connection ended with.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<u16> {
        self.conn.set_waker(cx.waker());
        self.turn(cx, None)
    }

    /// One poll. `inline`: run by the readiness loop with the task's own waker, which the
    /// loop holds, and the loop's clock reading.
    fn turn(&mut self, cx: &mut Context<'_>, inline: Option<Instant>) -> Poll<u16> {
        self.conn.task_polling();
        let r = self.poll_turn(cx, inline);
        // A finished task stays "polling": nothing writes to its socket or wakes it again,
        // and `Drop` revokes the descriptor before the socket closes.
        if r.is_pending() {
            self.conn.task_parked(self.pending.is_empty());
        }
        r
    }

    /// Writes queued frames until the kernel pushes back. `Err(())` when the socket failed.
    fn flush(&mut self) -> Result<bool, ()> {
        let mut progress = false;
        while self.conn.is_ready(WRITABLE) {
            let r = if !self.pending.is_empty() {
                let r = self.sock.send(&self.pending);
                if let Some(Ok(n)) = r {
                    self.pending.advance(n);
                }
                r
            } else {
                match self.conn.queued() {
                    0 => return Ok(progress),
                    1 => {
                        self.pending = self.conn.pop().unwrap_or_default();
                        continue;
                    }
                    _ => self.write_coalesced(),
                }
            };
            match r {
                Some(Ok(n)) if n > 0 => {
                    Probe::inc(&self.shard.probe.bytes_out, n as u64);
                    progress = true;
                }
                Some(_) => return Err(()),
                // Full: the poller reports the socket when the peer has taken some.
                None => self.conn.not_ready(WRITABLE),
            }
        }
        Ok(progress)
    }

    /// Several queued frames as one write from the shard's scratch buffer; only what the
    /// kernel does not take is copied into `pending`.
    fn write_coalesced(&mut self) -> Option<std::io::Result<usize>> {
        WSCRATCH.with(|b| {
            let mut b = b.borrow_mut();
            b.clear();
            self.conn.drain_into(&mut b, WRITE_CHUNK);
            let r = self.sock.send(&b);
            let taken = match r {
                Some(Ok(n)) => n,
                _ => 0,
            };
            if taken < b.len() {
                self.pending = Bytes::copy_from_slice(&b[taken..]);
            }
            r
        })
    }

    /// `inline`: run by the readiness loop, whose clock reading (taken for the batch) stands
    /// in for the time of the read.
    fn poll_turn(&mut self, cx: &mut Context<'_>, inline: Option<Instant>) -> Poll<u16> {
        for round in 0..ROUNDS_PER_TURN {
            let mut progress = false;
            if self.life.is_open() {
                if let Some(cmd) = self.conn.close_cmd() {
                    self.begin_close(cmd);
                    progress = true;
                }
            }

            if self.undecoded {
                self.undecoded = false;
                self.handle_events();
                progress = true;
            }

            if !self.life.peer_closed() && self.conn.is_ready(READABLE) {
                let read = SCRATCH.with(|b| {
                    let mut b = b.borrow_mut();
                    let r = self.sock.recv(&mut b[..]);
                    match r {
                        Some(Ok(n)) if n > 0 => {
                            self.decoder.feed(&b[..n]);
                            // A short read emptied the socket's queue; whatever arrives later
                            // is a new edge for the poller.
                            if n < b.len() {
                                self.conn.not_ready(READABLE);
                            }
                        }
                        None => self.conn.not_ready(READABLE),
                        _ => {}
                    }
                    r
                });
                match read {
                    Some(Ok(0)) | Some(Err(_)) => {
                        return Poll::Ready(self.life.on_socket_end());
                    }
                    Some(Ok(_)) => {
                        self.life.on_bytes(inline.unwrap_or_else(Instant::now));
                        self.handle_events();
                        progress = true;
                    }
                    None => {}
                }
            }

            match self.flush() {
                Ok(p) => progress |= p,
                Err(()) => return Poll::Ready(self.life.on_socket_end()),
            }
            let flushed = self.pending.is_empty() && !self.conn.has_output();
            match self.life.after_flush(flushed) {
                Some(Flushed::Finish(code)) => return Poll::Ready(code),
                Some(Flushed::ShutdownWrite) => self.sock.shutdown_write(),
                None => {}
            }

            // Only a round with nothing else to do, or a turn's last, looks at the clock: a busy
            // round is followed by another, and a client that never lets up still meets its
            // token expiry and close deadline. An inline turn only arms a new timer: a fired
            // one has woken the glommio task, whose own turn handles it.
            let check = if inline.is_some() {
                !self.tick_armed
            } else {
                !progress || round + 1 == ROUNDS_PER_TURN
            };
            let tick_ready = check
                && if !self.tick_armed || Instant::now() >= self.tick_due {
                    self.tick_armed = true;
                    Pin::new(&mut self.tick).poll(cx).is_ready()
                } else {
                    false
                };
            if tick_ready {
                if let Some(code) = self.on_tick() {
                    return Poll::Ready(code);
                }
                progress = true;
            }

            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
