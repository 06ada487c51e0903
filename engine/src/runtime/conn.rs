//! A connection's task on its owner shard: one hand-written poll loop that reads, runs the
//! session, flushes the outbound queue as one write per turn, and carries out what the
//! connection's [`Lifecycle`] decides (pings, idle and expiry closes, the close handshake).
//! Owned by the connection's shard.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use glommio::timer::Timer;

use super::cluster_presence::Arrival;
use super::fd::{OwnedSocket, READABLE, WRITABLE};
use super::msg::Admitted;
use super::probe::Probe;
use super::router::{self, Traffic};
use super::shard::{CloseCmd, Conn, Shard, Task};
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

/// Admits a socket on this (owner) shard and spawns its task. When clustered and the socket
/// is its room's first member on this node, it waits (bounded) for the room's broker
/// subscription first, so its `101` still promises that a publish reaches it; when presence
/// is counted across nodes, it also counts itself in (`cluster_presence.rs`) before it joins.
pub fn start(shard: Rc<Shard>, sock: OwnedSocket, a: Admitted) {
    let subscribed = super::cluster::room_wanted(&a.room);
    let user = cluster_presence_user(&shard, &a);
    let list = shard.shared.proto.endpoints[a.endpoint].online.is_some();
    if subscribed.is_none() && user.is_none() {
        return start_now(shard, sock, a, None);
    }
    glommio::spawn_local(async move {
        if let Some(subscribed) = subscribed {
            subscribed.await;
        }
        let arrival = match &user {
            Some(u) => super::cluster_presence::arrive(&shard, &a.room, u, list).await,
            None => None,
        };
        start_now(shard, sock, a, arrival)
    })
    .detach();
}

/// The user whose presence this socket counts across nodes, if any.
fn cluster_presence_user(shard: &Shard, a: &Admitted) -> Option<String> {
    if !super::cluster_presence::enabled(shard) {
        return None;
    }
    let ep = &shard.shared.proto.endpoints[a.endpoint];
    if ep.on_join.is_empty() && ep.on_leave.is_empty() {
        return None;
    }
    a.identity.as_ref().map(|i| i.user_id.as_str().to_owned())
}

/// Starts a connection on this shard at once: its room's owner, or a shard the owner has
/// counted it on as a spread member (`spread.rs`, which never spreads a socket with presence).
/// `arrival`: what the cluster-wide count said (`None`: not counted across nodes, or Redis did
/// not answer; the per-shard count decides).
pub fn start_now(shard: Rc<Shard>, sock: OwnedSocket, mut a: Admitted, arrival: Option<Arrival>) {
    let session = Session::new(
        &shard.shared.proto,
        a.endpoint,
        std::mem::take(&mut a.params),
        a.identity.take(),
        super::shared::unix_ms(),
    );
    let (id, room) = shard.new_conn(&a.room);
    let task = ConnTask::new(shard.clone(), sock, session, a.leftover);
    // One allocation, two views: the shard's (`Conn<dyn Task>`) and the glommio task's, which
    // knows the task state's type. Built before the spawn: a future holds its captures and its
    // locals side by side, so building it inside would store the state twice.
    let this: Rc<Conn<ConnTask>> = Rc::new(Conn::new(id, room, task));
    let conn: Rc<Conn> = this.clone();
    {
        let task = this.task();
        conn.direct.set(&task.sock);
        if let Err(e) = shard.poller.add(&task.sock, id) {
            // Without readiness events the socket would never be read again.
            tracing::warn!(conn = id, error = %e, "could not watch the socket; closing it");
            conn.request_close(CloseCmd::Raw(1011, "server out of resources"));
        }
    }
    shard.join(conn.clone());
    // A spread member's room is joined to its group by the room's owner.
    let owner = shard.owns(&conn.room);
    if owner {
        super::channel_layer::room_joined(&shard, &conn.room);
    }
    if let Some(resp) = a.handshake {
        conn.enqueue_control(resp.into());
    }
    let mut effects = Vec::new();
    let presence = Presence::of(&shard, &conn.room, a.endpoint, &this.task().session);
    with_turn(&shard, |turn| {
        let task = this.task();
        task.session.on_connect(turn, &mut effects);
        if let Some(p) = &presence {
            let others = match &arrival {
                Some(ar) => ar.others.clone(),
                None => p.others(),
            };
            task.session.online(turn, &others, &mut effects);
        }
    });
    apply(&shard, &conn, &mut effects);
    // In the turn of the join: nothing reaches the room between the history read and the
    // socket's place in the fan-out, so what it missed and what comes next meet exactly.
    match super::cluster::history::rule(&shard, &conn.room) {
        // Read from Redis: the answer lands in a later turn (`Shard::caught_up`).
        Some(rule) => super::cluster::history::catch_up(&shard, &conn, rule, a.since),
        None => shard.catch_up(&conn, a.since),
    }
    let first_here = presence.as_ref().is_none_or(Presence::arrive);
    with_turn(&shard, |turn| {
        if arrival.as_ref().map_or(first_here, |a| a.first) {
            this.task().session.on_join(turn, &mut effects);
        }
    });
    apply(&shard, &conn, &mut effects);
    // Never the token or the query string: only where the client is and what it opened.
    let endpoint = &shard.shared.proto.endpoints[a.endpoint].name;
    tracing::debug!(shard = shard.id, conn = id, client = %a.client, endpoint = %endpoint, "admitted");
    let (client, ip_slot, user_slot, cluster_slot) =
        (a.client, a.ip_slot, a.user_slot, a.cluster_slot);
    glommio::spawn_local(async move {
        let code = futures::future::poll_fn(|cx| conn.poll_task(cx)).await;
        let mut effects = Vec::new();
        let last_here = presence.as_ref().is_none_or(Presence::depart);
        let farewell = {
            let mut task = this.task();
            // Counted across nodes: rendered now (the session is about to go), sent if Redis
            // says this was the user's last socket anywhere.
            let farewell = if last_here || arrival.is_some() {
                with_turn(&shard, |turn| task.session.on_leave(turn))
            } else {
                Vec::new()
            };
            // Its providers and searches go with it.
            task.session.on_disconnect(&mut effects);
            // The socket closes now, not when the last handle to the connection goes.
            task.close_socket(&conn);
            farewell
        };
        apply(&shard, &conn, &mut effects);
        drop(ip_slot);
        drop(user_slot);
        drop(cluster_slot);
        tracing::debug!(shard = shard.id, conn = conn.id, %client, code, "closed");
        // After the socket closed, so metrics see the final code.
        shard.leave(&conn, code);
        if owner {
            super::cluster::room_left(&shard, &conn.room);
            super::channel_layer::room_left(&shard, &conn.room);
        } else {
            super::spread::left(&shard, &conn.room);
        }
        // Counted across nodes: Redis publishes the farewell itself when this was the user's
        // last socket anywhere; only when it does not answer does the shard's count decide.
        let send_here = match (&arrival, &presence) {
            (Some(_), Some(p)) => {
                super::cluster_presence::depart(&shard, &conn.room, &p.user, &farewell)
                    .await
                    .is_none()
                    && last_here
            }
            _ => last_here,
        };
        for frame in farewell.into_iter().filter(|_| send_here) {
            router::deliver_home(&shard, &conn.room, &frame, None);
        }
    })
    .detach();
}

thread_local! {
    /// Open sockets per (home room, user) on this shard, for endpoints that announce presence.
    /// Such sockets always live on their room's owner shard (they are never spread,
    /// `spread.rs`), so this count is the user's whole presence in the room.
    static PRESENT: std::cell::RefCell<std::collections::HashMap<Rc<str>, RoomPresence>> =
        Default::default();
}

/// Open sockets per user id in one room.
type RoomPresence = std::collections::HashMap<Box<str>, u32>;

/// One socket's share of its user's presence in its home room: the room hears `on_join` when
/// the user's first socket arrives and `on_leave` when the last one goes, so a second tab
/// closing does not announce the user offline. Owned by the connection's shard.
struct Presence {
    room: Rc<str>,
    user: Box<str>,
}

impl Presence {
    /// `None` when the endpoint announces no presence, or the socket has no user.
    fn of(shard: &Shard, room: &Rc<str>, endpoint: usize, session: &Session) -> Option<Presence> {
        let ep = &shard.shared.proto.endpoints[endpoint];
        if ep.on_join.is_empty() && ep.on_leave.is_empty() {
            return None;
        }
        Some(Presence {
            room: room.clone(),
            user: session.user_id()?.into(),
        })
    }

    /// The other users present in the room, in no particular order.
    fn others(&self) -> Vec<Box<str>> {
        PRESENT.with(|p| {
            p.borrow()
                .get(&self.room)
                .map(|users| users.keys().filter(|u| **u != self.user).cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Counts the socket in; `true` when it is the user's first in the room.
    fn arrive(&self) -> bool {
        PRESENT.with(|p| {
            let mut p = p.borrow_mut();
            let n = p
                .entry(self.room.clone())
                .or_default()
                .entry(self.user.clone())
                .or_insert(0);
            *n += 1;
            *n == 1
        })
    }

    /// Counts the socket out; `true` when it was the user's last in the room.
    fn depart(&self) -> bool {
        PRESENT.with(|p| {
            let mut p = p.borrow_mut();
            let Some(users) = p.get_mut(&self.room) else {
                return true;
            };
            match users.get_mut(&self.user) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    users.remove(&self.user);
                    if users.is_empty() {
                        p.remove(&self.room);
                    }
                    true
                }
            }
        })
    }
}

/// Runs `f` with a session turn on `shard` at the current time (admission, join and leave;
/// reads build theirs in place, inside the fault guard).
fn with_turn<R>(shard: &Shard, f: impl FnOnce(&mut Turn<'_>) -> R) -> R {
    f(&mut Turn {
        proto: &shard.shared.proto,
        verifiers: &shard.shared.verifiers,
        now_ms: super::shared::unix_ms(),
        ids: &mut shard.ids.borrow_mut(),
    })
}

/// Carries out a session's effects for connection `conn` on its shard.
pub fn apply(shard: &Rc<Shard>, conn: &Conn, effects: &mut Vec<Effect>) {
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
                        router::deliver_home(shard, &conn.room, &frame, exclude);
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
            Effect::Forward(call) => super::forward::submit(shard, conn, *call, apply),
        }
    }
}

/// A connection's own state on its owner shard, inside its [`Conn`]. Owned by the
/// connection's shard.
pub struct ConnTask {
    shard: Rc<Shard>,
    sock: OwnedSocket,
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
    fn new(shard: Rc<Shard>, sock: OwnedSocket, session: Session, leftover: Vec<u8>) -> Self {
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
        ConnTask {
            shard,
            sock,
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
    fn begin_close(&mut self, conn: &Conn, cmd: CloseCmd) {
        let (code, reason): (u16, &str) = match cmd {
            CloseCmd::Rejection(r) => {
                let c = self.shard.shared.proto.close_for(r);
                (c.code, &c.reason)
            }
            CloseCmd::Raw(code, reason) => (code, reason),
            CloseCmd::Declared(id) => {
                let c = &self.shard.shared.proto.closes[id];
                (c.code, &c.reason)
            }
        };
        let now = Instant::now();
        if !self.life.begin_close(code, now) {
            return;
        }
        // Frames queued before the close still go out first (answers to messages that came
        // before a protocol error, RFC 6455 7.1.6); a slow consumer's queue was already dropped
        // when it overflowed, and nothing is queued after this point.
        conn.request_close(cmd);
        conn.enqueue_control(codec::close_frame(code, reason));
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

    fn handle_events(&mut self, conn: &Conn) {
        // The shard (`Rc`), not the protocol (`Arc`): a locked increment per read otherwise.
        let shard = self.shard.clone();
        let proto = &shard.shared.proto;
        loop {
            let ev = match self.decoder.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    let (code, reason) = (e.close_code(), e.reason());
                    self.begin_close(conn, CloseCmd::Raw(code, reason));
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
                    if self.life.is_open() && !conn.enqueue_pong(out.into(), &self.shard.shared) {
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
                        conn.request_close(CloseCmd::Raw(code, ""));
                        conn.enqueue_control(frame);
                        self.rearm(now);
                    }
                    break;
                }
            }
            if !self.effects.is_empty() {
                let mut effects = std::mem::take(&mut self.effects);
                apply(&self.shard, conn, &mut effects);
                self.effects = effects;
            }
            // A client that pipelines many messages whose answers or room echoes come back to
            // it must not fill its own queue to the bound within one read: past half of it,
            // what is queued is written before the next message (a socket error is met by the
            // turn's own flush).
            if conn.queued() >= proto.limits.queue_max_messages / 2 {
                let _ = self.flush(conn);
            }
        }
        self.decoder.shrink();
    }

    /// The timer fired: carries out what the lifecycle finds due. `Some(code)`: the
    /// connection is over.
    fn on_tick(&mut self, conn: &Conn) -> Option<u16> {
        let now = Instant::now();
        match self.life.handle_timeout(now) {
            Some(Action::Ping) => {
                let mut out = Vec::with_capacity(2);
                codec::encode_frame(OpCode::Ping, &[], &mut out);
                conn.enqueue_control(out.into());
            }
            Some(Action::Close(r)) => self.begin_close(conn, CloseCmd::Rejection(r)),
            Some(Action::Finish(code)) => return Some(code),
            None => {}
        }
        self.rearm(now);
        None
    }

    /// Stops the socket's readiness events and the fan-out's direct writes: the connection is
    /// over. The descriptor itself closes with the connection, right after.
    fn close_socket(&mut self, conn: &Conn) {
        conn.direct.revoke();
        self.shard.poller.remove(&self.sock);
    }

    /// Writes queued frames until the kernel pushes back. `Err(())` when the socket failed.
    fn flush(&mut self, conn: &Conn) -> Result<bool, ()> {
        let mut progress = false;
        while conn.is_ready(WRITABLE) {
            let r = if !self.pending.is_empty() {
                let r = self.sock.send(&self.pending);
                if let Some(Ok(n)) = r {
                    self.pending.advance(n);
                }
                r
            } else {
                match conn.queued() {
                    0 => return Ok(progress),
                    1 => {
                        self.pending = conn.pop().unwrap_or_default();
                        continue;
                    }
                    _ => self.write_coalesced(conn),
                }
            };
            match r {
                Some(Ok(n)) if n > 0 => {
                    Probe::inc(&self.shard.probe.bytes_out, n as u64);
                    progress = true;
                }
                Some(_) => return Err(()),
                // Full: the poller reports the socket when the peer has taken some.
                None => conn.not_ready(WRITABLE),
            }
        }
        Ok(progress)
    }

    /// Several queued frames as one write from the shard's scratch buffer; only what the
    /// kernel does not take is copied into `pending`.
    fn write_coalesced(&mut self, conn: &Conn) -> Option<std::io::Result<usize>> {
        WSCRATCH.with(|b| {
            let mut b = b.borrow_mut();
            b.clear();
            conn.drain_into(&mut b, WRITE_CHUNK);
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
    fn poll_turn(
        &mut self,
        conn: &Conn,
        cx: &mut Context<'_>,
        inline: Option<Instant>,
    ) -> Poll<u16> {
        for round in 0..ROUNDS_PER_TURN {
            let mut progress = false;
            if self.life.is_open() {
                if let Some(cmd) = conn.close_cmd() {
                    self.begin_close(conn, cmd);
                    progress = true;
                }
            }

            if self.undecoded {
                self.undecoded = false;
                self.handle_events(conn);
                progress = true;
            }

            if !self.life.peer_closed() && conn.is_ready(READABLE) {
                let read = SCRATCH.with(|b| {
                    let mut b = b.borrow_mut();
                    let r = self.sock.recv(&mut b[..]);
                    match r {
                        Some(Ok(n)) if n > 0 => {
                            self.decoder.feed(&b[..n]);
                            // A short read emptied the socket's queue; whatever arrives later
                            // is a new edge for the poller.
                            if n < b.len() {
                                conn.not_ready(READABLE);
                            }
                        }
                        None => conn.not_ready(READABLE),
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
                        self.handle_events(conn);
                        progress = true;
                    }
                    None => {}
                }
            }

            match self.flush(conn) {
                Ok(p) => progress |= p,
                Err(()) => return Poll::Ready(self.life.on_socket_end()),
            }
            let flushed = self.pending.is_empty() && !conn.has_output();
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
                if let Some(code) = self.on_tick(conn) {
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

impl Task for ConnTask {
    fn turn(&mut self, conn: &Conn, cx: &mut Context<'_>, inline: Option<Instant>) -> Poll<u16> {
        conn.task_polling();
        let r = self.poll_turn(conn, cx, inline);
        // A finished task stays "polling": nothing writes to its socket or wakes it again,
        // and `close_socket` revokes the descriptor before the socket closes.
        if r.is_pending() {
            conn.task_parked(self.pending.is_empty());
        }
        r
    }
}
