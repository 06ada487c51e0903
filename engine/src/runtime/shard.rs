//! One shard's core: the rooms it owns, a slab of its connections, its probe, its poller and
//! its id generator. Owned by its shard: nothing here is shared with another thread except
//! through [`Shared`]'s inboxes and probes. The parts of the runtime that keep state of their
//! own per shard (geo pools and jobs, hook answers, HTTP rate buckets) keep it in their own
//! module, one instance per shard thread, and reach the shard only through `&Shard`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes};

use super::fd::{DirectFd, Poller};
use super::probe::Probe;
use super::shared::{unix_ms, Shared};
use super::traffic::Traffic;
use crate::history::store::{self, Since, Stamped, Store};
use crate::history::{CaughtUp, Cursor, Live, Position, Recovery, SeamError, Unrecoverable};
use crate::protocol::{CloseId, Rejection};
use crate::session::{frame_object, Filter, IdGen};

/// What a fan-out did with a frame for one member.
enum Fanned {
    /// Not queued: the member is closing, or was just closed as a slow consumer.
    Dropped,
    Queued,
    /// Queued, and the member is to be listed for the end-of-turn write.
    Batch,
}

thread_local! {
    /// Where a member's frames of one turn are joined for its one `send`, per shard: tasks on
    /// a shard never run concurrently.
    static FANOUT_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The frames a member of a latest-value room was last queued, by key: what a newer value
/// for the key replaces if it is still unsent. Keys come from messages (SipHash, not
/// foldhash). Owned by the connection's shard.
type Unsent = HashMap<Rc<str>, Bytes>;

/// How a socket whose catch-up could not keep the seam is closed: it resumes from what it was
/// given.
pub fn seam_close(e: SeamError) -> CloseCmd {
    match e {
        SeamError::Overflow => CloseCmd::Rejection(Rejection::SlowConsumer),
        SeamError::Gap { .. } | SeamError::OutOfTurn => CloseCmd::Rejection(Rejection::Internal),
    }
}

/// The members of one room waiting for (or just past) a history read from Redis: connection id
/// and cursor. Owned by the room's owner shard.
type Catching = Vec<(u64, Cursor)>;

/// Why a connection is being closed by the engine. Owned by the connection's shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCmd {
    Rejection(Rejection),
    Raw(u16, &'static str),
    /// A close the protocol declares, named by the protocol itself (a forward's
    /// `unavailable_close`).
    Declared(CloseId),
}

/// A connection's own task state (socket, decoder, session, lifecycle; `conn.rs`), which
/// lives inside its [`Conn`]. Polled by the connection's glommio task and, when that task is
/// parked, inline by the shard's readiness loop ([`Conn::drive`]).
pub trait Task {
    /// One poll of the connection. `inline`: run by the readiness loop, with the task's own
    /// waker (lent, so whatever it waits on next wakes the glommio task) and the loop's recent
    /// clock reading. `Ready(code)`: the connection is over, with that close code.
    fn turn(&mut self, conn: &Conn, cx: &mut Context<'_>, inline: Option<Instant>) -> Poll<u16>;
}

/// One connection: what its shard's fan-out and readiness loop use (outbound queue, the
/// socket for direct writes, readiness, filter, waker) and, last, its task's own state. One
/// allocation per connection, held by the shard's slab and room and by the connection's
/// glommio task; the task state holds the shard, and the shard lets go of the connection
/// when it leaves ([`Shard::leave`]). Owned by the connection's shard.
pub struct Conn<T: ?Sized = dyn Task> {
    pub id: u64,
    pub room: Rc<str>,
    /// Index in its room's member list, so leaving a 10k-member room is O(1), not a scan.
    slot: Cell<usize>,
    out: RefCell<VecDeque<Bytes>>,
    out_bytes: Cell<usize>,
    close: Cell<Option<CloseCmd>>,
    waker: Cell<Option<Waker>>,
    /// Set by a client message that narrows what this socket receives.
    filter: RefCell<Option<Filter>>,
    /// The socket, so a fan-out can write a frame itself instead of waking the task.
    pub direct: DirectFd,
    /// True between the task's polls while it has nothing unwritten and is not closing: only
    /// then may [`Conn::enqueue`] write to the socket directly, because nothing is ahead of the
    /// frame. Saves a task wake-up and poll per delivery, the bulk of a broadcast's user time.
    idle_writer: Cell<bool>,
    /// Listed in the shard's end-of-turn batch: fan-outs queue behind it instead of writing,
    /// and [`Shard::write_batch`] writes everything queued this turn with one `send`.
    batched: Cell<bool>,
    /// True while the task is being polled: it writes what it queues before it returns, so
    /// waking it again would only cost an empty poll.
    polling: Cell<bool>,
    /// What the shard's [`Poller`] last said of the socket (`fd::READABLE | fd::WRITABLE`),
    /// until the task finds the socket drained or full.
    ready: Cell<u8>,
    /// Set when an inline poll finished the connection; the glommio task, woken then, tears
    /// it down.
    done: Cell<Option<u16>>,
    /// Members of latest-value rooms only: the frame last queued for each key, so a newer
    /// value replaces it while it is unsent ([`Conn::enqueue_latest`]). Boxed and absent
    /// elsewhere: one word per connection.
    unsent: Cell<Option<Box<Unsent>>>,
    /// Unsized in the shard's view (`Conn<dyn Task>`), so it comes last.
    task: RefCell<T>,
}

impl<T: Task> Conn<T> {
    pub fn new(id: u64, room: Rc<str>, task: T) -> Self {
        Conn {
            filter: RefCell::new(None),
            id,
            room,
            slot: Cell::new(0),
            out: RefCell::new(VecDeque::new()),
            out_bytes: Cell::new(0),
            close: Cell::new(None),
            waker: Cell::new(None),
            direct: DirectFd::none(),
            idle_writer: Cell::new(false),
            batched: Cell::new(false),
            polling: Cell::new(false),
            // Both until the socket says otherwise: the first read or write finds out.
            ready: Cell::new(super::fd::READABLE | super::fd::WRITABLE),
            done: Cell::new(None),
            unsent: Cell::new(None),
            task: RefCell::new(task),
        }
    }

    /// The task state, for the connection's own glommio task (which knows its type).
    pub fn task(&self) -> std::cell::RefMut<'_, T> {
        self.task.borrow_mut()
    }
}

impl Conn {
    /// The glommio task's poll: `Ready(code)` once the connection is over, whether this poll
    /// or an inline one finished it.
    pub fn poll_task(&self, cx: &mut Context<'_>) -> Poll<u16> {
        if let Some(code) = self.done.get() {
            return Poll::Ready(code);
        }
        self.set_waker(cx.waker());
        self.task.borrow_mut().turn(self, cx, None)
    }

    /// The poller reported the socket: a parked task runs now, inline; a task already woken
    /// or being polled finds the flag when it runs.
    fn mark_ready(&self, what: u8, now: Instant) {
        self.ready.set(self.ready.get() | what);
        if self.polling.get() {
            return;
        }
        let Some(waker) = self.waker.take() else {
            return;
        };
        // Lent, not cloned: a clone and drop per event was ~8 % of an echo's user time.
        self.drive(&waker, now);
        self.waker.set(Some(waker));
    }

    /// Polls a parked task inline with its own `waker`. An inline poll that finishes the
    /// connection wakes the glommio task to tear it down.
    fn drive(&self, waker: &Waker, now: Instant) {
        if self.done.get().is_some() {
            return;
        }
        let Ok(mut task) = self.task.try_borrow_mut() else {
            return waker.wake_by_ref();
        };
        if let Poll::Ready(code) = task.turn(self, &mut Context::from_waker(waker), Some(now)) {
            self.done.set(Some(code));
            waker.wake_by_ref();
        }
    }
}

impl<T: ?Sized> Conn<T> {
    pub fn is_ready(&self, what: u8) -> bool {
        self.ready.get() & what != 0
    }

    /// The task found the socket drained (`READABLE`) or full (`WRITABLE`): it waits for the
    /// poller's next edge.
    pub fn not_ready(&self, what: u8) {
        self.ready.set(self.ready.get() & !what);
    }

    /// The task starts a poll: it writes whatever is queued before it returns.
    pub fn task_polling(&self) {
        self.polling.set(true);
        self.idle_writer.set(false);
    }

    /// The task returned `Pending`; `flushed`: it has nothing of its own left to write.
    pub fn task_parked(&self, flushed: bool) {
        self.polling.set(false);
        self.idle_writer
            .set(flushed && !self.has_output() && self.close.get().is_none());
    }

    pub fn set_waker(&self, w: &Waker) {
        let old = self.waker.take();
        match old {
            Some(o) if o.will_wake(w) => self.waker.set(Some(o)),
            _ => self.waker.set(Some(w.clone())),
        }
    }

    fn wake(&self) {
        if self.polling.get() {
            return;
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The connection's queue, when `frame` fits within the protocol's per-connection bounds.
    /// A connection over its bound is a slow consumer: its queue is dropped (memory back at
    /// once) and it is closed.
    fn admit(
        &self,
        frame: &Bytes,
        shared: &Shared,
        probe: &Probe,
    ) -> Option<std::cell::RefMut<'_, VecDeque<Bytes>>> {
        if self.close_requested() {
            return None;
        }
        let limits = &shared.proto.limits;
        let mut q = self.out.borrow_mut();
        if q.len() >= limits.queue_max_messages
            || self.out_bytes.get() + frame.len() > limits.queue_max_bytes
        {
            Probe::inc(&probe.queue_drops, q.len() as u64 + 1);
            Probe::inc(&probe.slow_consumers, 1);
            q.clear();
            self.out_bytes.set(0);
            drop(q);
            self.close
                .set(Some(CloseCmd::Rejection(Rejection::SlowConsumer)));
            self.wake();
            return None;
        }
        Some(q)
    }

    /// Queues a frame for the connection's own task to write (a reply to its own message, sent
    /// while the task runs). The caller counts `messages_out`.
    pub fn enqueue(&self, frame: &Bytes, shared: &Shared, probe: &Probe) -> bool {
        let Some(mut q) = self.admit(frame, shared, probe) else {
            return false;
        };
        let was_empty = q.is_empty();
        self.idle_writer.set(false);
        self.out_bytes.set(self.out_bytes.get() + frame.len());
        q.push_back(frame.clone());
        drop(q);
        if was_empty {
            self.wake();
        }
        true
    }

    /// Queues a fan-out's frame. A member whose task is parked with nothing of its own to write
    /// is written at the end of the turn, all its frames of the turn in one `send`
    /// ([`Shard::write_batch`]): `Batch` asks the caller to list it. Anything else wakes the
    /// task, which writes its queue in order.
    fn enqueue_fanout(&self, frame: &Bytes, shared: &Shared, probe: &Probe) -> Fanned {
        let Some(mut q) = self.admit(frame, shared, probe) else {
            return Fanned::Dropped;
        };
        let was_empty = q.is_empty();
        self.out_bytes.set(self.out_bytes.get() + frame.len());
        q.push_back(frame.clone());
        let queued = q.len();
        drop(q);
        if self.idle_writer.get() {
            // Parked and idle: nothing is ahead of the queue but this turn's frames, which the
            // end-of-turn write sends in order.
            if !self.batched.replace(true) {
                return Fanned::Batch;
            }
            // A long turn (an inbox batch of a busy room's messages) must not fill a healthy
            // member's queue to its bound: past half of it, the member is written now.
            let limits = &shared.proto.limits;
            if queued >= limits.queue_max_messages / 2
                || self.out_bytes.get() >= limits.queue_max_bytes / 2
            {
                self.write_batch(probe);
            }
            return Fanned::Queued;
        }
        if was_empty {
            self.wake();
        }
        Fanned::Queued
    }

    /// Queues a fan-out's frame of a latest-value room, whose key is `key`: a frame for the
    /// same key still unsent in the queue is taken out first (conflation), so a member too
    /// slow for every update gets the newest value instead of a queue of stale ones, and its
    /// queue holds at most one frame per key. The rest keep their order, which is offset
    /// order, and the new frame has the room's newest offset: the member sees the skip as a
    /// jump in offsets. A frame whose first bytes were written (the front of the queue after
    /// a short write) starts elsewhere and is never taken out.
    fn enqueue_latest(
        &self,
        frame: &Bytes,
        key: &Rc<str>,
        shared: &Shared,
        probe: &Probe,
    ) -> Fanned {
        if self.close_requested() {
            return Fanned::Dropped;
        }
        let mut unsent = self.unsent.take();
        if let Some(noted) = unsent.as_mut() {
            if self.out.borrow().is_empty() {
                // Everything noted was sent: nothing to replace.
                noted.clear();
                if noted.capacity() > 64 {
                    noted.shrink_to(16);
                }
            } else if let Some(old) = noted.get(key) {
                if self.take_unsent(old) {
                    Probe::inc(&probe.conflated, 1);
                }
            }
        }
        let fanned = self.enqueue_fanout(frame, shared, probe);
        if !matches!(fanned, Fanned::Dropped) {
            let noted = unsent.get_or_insert_with(Default::default);
            let queued = self.out.borrow();
            if noted.len() > 2 * queued.len() + 16 {
                // Keys whose frames went out long ago: keep what is still queued.
                let held: std::collections::HashSet<(usize, usize)> = queued
                    .iter()
                    .map(|f| (f.as_ptr() as usize, f.len()))
                    .collect();
                noted.retain(|_, f| held.contains(&(f.as_ptr() as usize, f.len())));
            }
            drop(queued);
            noted.insert(key.clone(), frame.clone());
        } else {
            unsent = None;
        }
        self.unsent.set(unsent);
        fanned
    }

    /// Notes `frame`, queued for this member, as `key`'s unsent value (see
    /// [`Conn::enqueue_latest`]).
    fn note_unsent(&self, key: &Rc<str>, frame: &Bytes) {
        let mut unsent = self.unsent.take();
        unsent
            .get_or_insert_with(Default::default)
            .insert(key.clone(), frame.clone());
        self.unsent.set(unsent);
    }

    /// Takes `old` out of the queue if it is there whole. `noted` holds a handle to it, so its
    /// bytes cannot have been freed and reused by another frame.
    fn take_unsent(&self, old: &Bytes) -> bool {
        let mut q = self.out.borrow_mut();
        let Some(i) = q
            .iter()
            .rposition(|f| f.as_ptr() == old.as_ptr() && f.len() == old.len())
        else {
            return false;
        };
        q.remove(i);
        self.out_bytes.set(self.out_bytes.get() - old.len());
        true
    }

    /// The end-of-turn write: everything queued since the connection was listed, as one
    /// `send`. What the kernel does not take stays queued for the task, which is woken.
    fn write_batch(&self, probe: &Probe) {
        self.batched.set(false);
        if !self.idle_writer.get() {
            // The task ran since (and wrote the queue), or is closing: the queue is its own.
            return;
        }
        let mut q = self.out.borrow_mut();
        let sent = match q.len() {
            0 => return,
            // One frame: straight from its shared bytes, no copy.
            1 => self.direct.try_send(&q[0]),
            _ => FANOUT_SCRATCH.with(|b| {
                let mut b = b.borrow_mut();
                b.clear();
                for f in q.iter() {
                    b.extend_from_slice(f);
                }
                self.direct.try_send(&b)
            }),
        };
        Probe::inc(&probe.fanout_writes, 1);
        let mut n = match sent {
            Some(Ok(n)) => n,
            // Full or failed: the task waits for writability or meets the error.
            _ => 0,
        };
        Probe::inc(&probe.bytes_out, n as u64);
        self.out_bytes.set(self.out_bytes.get() - n);
        while let Some(f) = q.front_mut() {
            if n >= f.len() {
                n -= f.len();
                q.pop_front();
            } else {
                f.advance(n);
                break;
            }
        }
        if q.is_empty() {
            // Give the buffer back: most members of a large room get a frame now and then,
            // and a queue kept per member would cost every idle socket its capacity.
            *q = VecDeque::new();
        } else {
            drop(q);
            self.idle_writer.set(false);
            self.wake();
        }
    }

    /// Queues a control frame (ping, close) outside the bounds: it is tiny and must go out.
    pub fn enqueue_control(&self, frame: Bytes) {
        self.idle_writer.set(false);
        self.out_bytes.set(self.out_bytes.get() + frame.len());
        self.out.borrow_mut().push_back(frame);
    }

    /// Queues a pong unless the queue is already at its bound. A client that floods pings and
    /// never reads would otherwise grow the queue forever; RFC 6455 5.5.3 lets a server answer
    /// only the most recent ping, so dropping pongs under pressure is allowed.
    pub fn enqueue_pong(&self, frame: Bytes, shared: &Shared) -> bool {
        let limits = &shared.proto.limits;
        let q = self.out.borrow();
        if q.len() >= limits.queue_max_messages
            || self.out_bytes.get() + frame.len() > limits.queue_max_bytes
        {
            return false;
        }
        drop(q);
        self.enqueue_control(frame);
        true
    }

    /// The number of queued frames.
    pub fn queued(&self) -> usize {
        self.out.borrow().len()
    }

    /// Takes the oldest queued frame.
    pub fn pop(&self) -> Option<Bytes> {
        let f = self.out.borrow_mut().pop_front()?;
        self.out_bytes.set(self.out_bytes.get() - f.len());
        Some(f)
    }

    /// Moves queued frames into `buf` until it holds about `max` bytes.
    pub fn drain_into(&self, buf: &mut Vec<u8>, max: usize) -> usize {
        let mut q = self.out.borrow_mut();
        let mut n = 0;
        while let Some(f) = q.front() {
            if !buf.is_empty() && buf.len() + f.len() > max {
                break;
            }
            buf.extend_from_slice(f);
            self.out_bytes.set(self.out_bytes.get() - f.len());
            q.pop_front();
            n += 1;
        }
        n
    }

    pub fn has_output(&self) -> bool {
        !self.out.borrow().is_empty()
    }

    /// A client message narrowed what this socket receives.
    pub fn set_filter(&self, f: Filter) {
        *self.filter.borrow_mut() = Some(f);
    }

    pub fn request_close(&self, cmd: CloseCmd) {
        if self.close.get().is_none() {
            self.close.set(Some(cmd));
        }
        self.wake();
    }

    pub fn close_requested(&self) -> bool {
        self.close.get().is_some()
    }

    /// The close command, if any. It stays set once set, so nothing is queued after the
    /// close frame.
    pub fn close_cmd(&self) -> Option<CloseCmd> {
        self.close.get()
    }
}

/// A shard's state. Owned by its shard.
pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub probe: Arc<Probe>,
    rooms: RefCell<HashMap<Rc<str>, Vec<Rc<Conn>>>>,
    /// Keyed by ids the shard hands out, never by client input: foldhash, not SipHash, for
    /// the lookup every readiness event does.
    conns: RefCell<foldhash::HashMap<u64, Rc<Conn>>>,
    next_conn: Cell<u64>,
    pub ids: RefCell<IdGen>,
    pub active_requests: Cell<usize>,
    pub draining: Cell<bool>,
    pub drained: RefCell<Option<futures::channel::oneshot::Sender<()>>>,
    /// Readiness of this shard's connection sockets.
    pub poller: Poller,
    /// Members with frames queued by this turn's fan-outs, written once each when the turn
    /// ends ([`Shard::write_batch`]).
    batch: RefCell<Vec<Rc<Conn>>>,
    /// The shard's batch task, parked while the batch is empty.
    batch_waker: Cell<Option<Waker>>,
    /// `write_delay_ms`: end-of-turn writes at most once per this long (zero: every turn).
    write_delay: std::time::Duration,
    /// When the last end-of-turn write went out, with `write_delay`.
    last_write: Cell<Option<Instant>>,
    /// The histories of the rooms this shard owns whose kind keeps history.
    history: RefCell<Store>,
    /// Rooms this shard owns with members on other shards: how many on each shard
    /// (`spread.rs`). A delivery into such a room is also handed to each of those shards.
    spread: RefCell<HashMap<Rc<str>, Vec<u32>>>,
    /// Rooms this shard owns that it has announced hot in `Shared::hot`.
    hot: RefCell<std::collections::HashSet<Rc<str>>>,
    /// Members whose history is being read from Redis, by room (so a delivery looks only at
    /// its own room's): positioned frames for them are buffered in their cursor until the read
    /// lands (`cluster/history.rs`). Empty unless the cluster keeps history in Redis.
    catching: RefCell<HashMap<Rc<str>, Catching>>,
    /// The last position fanned out in each Redis-history room with members here: a frame
    /// that does not follow it (the subscription was rebuilt while others published, or Redis
    /// lost the history) means the members missed something.
    seen: RefCell<HashMap<Rc<str>, Position>>,
}

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>) -> std::io::Result<Self> {
        let probe = shared.probes[id].clone();
        let write_delay = std::time::Duration::from_millis(shared.config.write_delay_ms);
        Ok(Shard {
            id,
            shared,
            probe,
            rooms: RefCell::new(HashMap::new()),
            conns: RefCell::new(foldhash::HashMap::default()),
            next_conn: Cell::new(1),
            ids: RefCell::new(IdGen::new(id, unix_ms())),
            active_requests: Cell::new(0),
            draining: Cell::new(false),
            drained: RefCell::new(None),
            poller: Poller::new()?,
            batch: RefCell::new(Vec::new()),
            batch_waker: Cell::new(None),
            write_delay,
            last_write: Cell::new(None),
            // Epochs must differ across restarts and shards: time, randomness and the id.
            history: RefCell::new(Store::in_memory(
                rand::random::<u64>() ^ unix_ms().rotate_left(20) ^ id as u64,
            )),
            spread: RefCell::new(HashMap::new()),
            hot: RefCell::new(Default::default()),
            catching: RefCell::new(HashMap::new()),
            seen: RefCell::new(HashMap::new()),
        })
    }

    /// The poller says the connection keyed `id` is `what` (`fd::READABLE | fd::WRITABLE`).
    /// A key whose connection has left is ignored: ids are never reused.
    /// `now`: read by the readiness loop for its batch, so an inline turn reads no clock.
    pub fn on_ready(&self, id: u64, what: u8, now: Instant) {
        let conn = self.conns.borrow().get(&id).cloned();
        if let Some(c) = conn {
            c.mark_ready(what, now);
        }
    }

    /// The open connection with this id, if it is still on this shard.
    pub fn conn(&self, id: u64) -> Option<Rc<Conn>> {
        self.conns.borrow().get(&id).cloned()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// A new connection's id (never reused on this shard) and its home room's name, shared
    /// with the room's other members.
    pub fn new_conn(&self, room: &str) -> (u64, Rc<str>) {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        let room = self
            .rooms
            .borrow()
            .get_key_value(room)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Rc::from(room));
        (id, room)
    }

    /// Members of `room`: on this shard, and, when this shard owns it, on the shards it
    /// spreads over.
    pub fn members(&self, room: &str) -> usize {
        let here = self.rooms.borrow().get(room).map_or(0, Vec::len);
        let there = self
            .spread
            .borrow()
            .get(room)
            .map_or(0, |n| n.iter().sum::<u32>() as usize);
        here + there
    }

    /// Whether this shard owns `room`.
    pub fn owns(&self, room: &str) -> bool {
        super::shared::owner_of(room, self.shared.nr_shards) == self.id
    }

    /// On `room`'s owner: shard `from` has one more member of it (`joined`) or one fewer.
    /// Returns whether `from` still has members.
    pub fn spread_member(&self, room: &str, from: usize, joined: bool) -> bool {
        let mut spread = self.spread.borrow_mut();
        let key = match spread.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None if !joined => return false,
            None => self
                .rooms
                .borrow()
                .get_key_value(room)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Rc::from(room)),
        };
        let counts = spread
            .entry(key.clone())
            .or_insert_with(|| vec![0; self.shared.nr_shards]);
        let n = &mut counts[from];
        *n = if joined { *n + 1 } else { n.saturating_sub(1) };
        let left = *n > 0;
        if counts.iter().all(|n| *n == 0) {
            spread.remove(room);
        }
        drop(spread);
        let delta = if joined { 1 } else { -1 };
        self.probe
            .spread_members
            .fetch_add(delta, Ordering::Relaxed);
        self.resized(&key);
        left
    }

    /// On `room`'s owner, after its membership changed: announces it hot from
    /// `spread_rooms_at` members, and cool again below half of that (so a room near the
    /// threshold does not flap).
    fn resized(&self, room: &Rc<str>) {
        let at = self.shared.config.spread_rooms_at;
        if at <= 1 || self.shared.nr_shards < 2 || !self.owns(room) {
            // Never, or always (`spread.rs` does not ask); a spread member's shard does not
            // see the whole room.
            return;
        }
        let n = self.members(room);
        let mut hot = self.hot.borrow_mut();
        if n >= at {
            if hot.insert(room.clone()) {
                self.shared.set_hot(room, true);
            }
        } else if n < at / 2 && hot.remove(&**room) {
            self.shared.set_hot(room, false);
        }
    }

    /// Registers a connection in its home room and this shard's slab.
    pub fn join(&self, conn: Rc<Conn>) {
        {
            let mut rooms = self.rooms.borrow_mut();
            let members = rooms.entry(conn.room.clone()).or_default();
            if members.is_empty() {
                self.probe.rooms.fetch_add(1, Ordering::Relaxed);
            }
            conn.slot.set(members.len());
            members.push(conn.clone());
        }
        let room = conn.room.clone();
        self.conns.borrow_mut().insert(conn.id, conn);
        self.probe.connections.fetch_add(1, Ordering::Relaxed);
        Probe::inc(&self.probe.opened, 1);
        self.resized(&room);
    }

    pub fn leave(&self, conn: &Conn, code: u16) {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(members) = rooms.get_mut(&*conn.room) {
            let i = conn.slot.get();
            if members.get(i).is_some_and(|c| c.id == conn.id) {
                members.swap_remove(i);
                if let Some(moved) = members.get(i) {
                    moved.slot.set(i);
                }
            }
            if members.is_empty() {
                rooms.remove(&*conn.room);
                self.seen.borrow_mut().remove(&*conn.room);
                self.probe.rooms.fetch_sub(1, Ordering::Relaxed);
            }
        }
        drop(rooms);
        self.resized(&conn.room);
        self.stop_catching(conn);
        self.conns.borrow_mut().remove(&conn.id);
        self.probe.connections.fetch_sub(1, Ordering::Relaxed);
        self.probe.closed(code);
        if self.draining.get() && self.conns.borrow().is_empty() {
            if let Some(tx) = self.drained.borrow_mut().take() {
                let _ = tx.send(());
            }
        }
    }

    /// Fans a frame out to a room this shard owns. The frame was encoded once; each member
    /// gets a reference-counted handle to the same bytes. In a room whose kind keeps history,
    /// a message that enters it is stamped with its position first (once, for every member)
    /// and kept; every way into a room comes through here, on the room's owner.
    pub fn deliver(&self, room: &str, frame: &Bytes, exclude: Option<u64>) -> usize {
        self.deliver_from(room, frame, exclude.map(|c| (self.id, c)))
    }

    /// [`Shard::deliver`] with the connection to leave out named by (shard, id): a spread
    /// room's sender may live on another shard. The room's members on other shards get the
    /// same (stamped) bytes through their shard's inbox, after this shard's own members and
    /// in the order this shard delivers: the owner is the room's one sequencer.
    pub fn deliver_from(
        &self,
        room: &str,
        frame: &Bytes,
        exclude: Option<super::msg::ConnRef>,
    ) -> usize {
        let (shared, probe) = (&*self.shared, &*self.probe);
        let here = exclude.filter(|(s, _)| *s == self.id).map(|(_, c)| c);
        let (n, frame) = match self.record(room, frame) {
            None => (
                self.fan_out(room, frame, here, |c| {
                    c.enqueue_fanout(frame, shared, probe)
                }),
                frame.clone(),
            ),
            Some(Stamped { frame, key: None }) => (
                self.fan_out(room, &frame, here, |c| {
                    c.enqueue_fanout(&frame, shared, probe)
                }),
                frame,
            ),
            // A latest-value room: members keep one unsent frame per key.
            Some(Stamped {
                frame,
                key: Some(key),
            }) => (
                self.fan_out(room, &frame, here, |c| {
                    c.enqueue_latest(&frame, &key, shared, probe)
                }),
                frame,
            ),
        };
        n + self.fan_across(room, &frame, exclude)
    }

    /// Hands a delivery into a room this shard owns to every other shard with members of
    /// it. Returns those members, counted as reached: their shard fans it out when it reads
    /// its inbox.
    fn fan_across(&self, room: &str, frame: &Bytes, exclude: Option<super::msg::ConnRef>) -> usize {
        let spread = self.spread.borrow();
        let Some(counts) = spread.get(room) else {
            return 0;
        };
        let mut n = 0;
        // One copy of the name for every shard's message, not one each.
        let name: std::sync::Arc<str> = std::sync::Arc::from(room);
        for (to, members) in counts.iter().enumerate() {
            if *members == 0 {
                continue;
            }
            let msg = super::msg::ShardMsg::Fan {
                room: name.clone(),
                frame: frame.clone(),
                exclude,
            };
            // A full inbox drops it, counted under `traffic="fan"`.
            if self.push_now(to, msg, Traffic::Fan) {
                n += *members as usize;
            }
        }
        n
    }

    /// Pushes `msg` to shard `to`'s inbox without waiting; a full inbox drops it, counted
    /// under `traffic`. The primitive under `router::send_now`, which everything else uses.
    pub fn push_now(&self, to: usize, msg: super::msg::ShardMsg, traffic: Traffic) -> bool {
        debug_assert_eq!(traffic.policy(), super::traffic::Policy::Drop);
        match self.shared.inboxes[to].push(msg) {
            Ok(()) => true,
            Err(_) => {
                self.probe.inbox_full(traffic);
                false
            }
        }
    }

    /// A spread room's delivery, sequenced by its owner, for this shard's members of it.
    pub fn fan_in(&self, room: &str, frame: &Bytes, exclude: Option<super::msg::ConnRef>) {
        let (shared, probe) = (&*self.shared, &*self.probe);
        let here = exclude.filter(|(s, _)| *s == self.id).map(|(_, c)| c);
        self.fan_out(room, frame, here, |c| {
            c.enqueue_fanout(frame, shared, probe)
        });
    }

    /// The frame stamped with its position (and, in a latest-value room, its key), when `room`
    /// keeps history and `frame` enters it.
    fn record(&self, room: &str, frame: &Bytes) -> Option<Stamped> {
        let proto = &self.shared.proto;
        let rule = proto.history_for(room)?;
        if self.history_in_redis(room).is_some() {
            // Redis decides this room's positions: what arrives here unpositioned (a `?local=1`
            // publish, a Django channel-layer copy) stays out of history.
            return None;
        }
        let mut store = self.history.borrow_mut();
        let stamped = store.append(proto, rule, room, frame, unix_ms())?;
        Probe::inc(&self.probe.history_appends, 1);
        self.probe.history_held(store.held());
        Some(stamped)
    }

    /// Right after `conn` joined its home room, in the same turn: what it missed since
    /// `since` (or the room's latest values), then the answer it is told, queued behind
    /// whatever it was sent already. Nothing to do in a room without history.
    pub fn catch_up(&self, conn: &Conn, since: Since) {
        let proto = &self.shared.proto;
        let Some(rule) = proto.history_for(&conn.room) else {
            return;
        };
        if since == Since::Fresh && proto.history[rule].latest_by.is_none() {
            // A client that does not resume, in a room with nothing to hand it at once.
            return;
        }
        if self.history_in_redis(&conn.room).is_some() {
            // Read from Redis by the caller (`cluster::history::catch_up`), not here.
            debug_assert!(
                false,
                "a Redis-history room's catch-up reached the memory store"
            );
            return;
        }
        let caught = {
            let mut store = self.history.borrow_mut();
            let caught = store.catch_up(proto, rule, &conn.room, since, unix_ms());
            self.probe.history_held(store.held());
            caught
        };
        self.caught_up(conn, since, Ok(caught));
    }

    /// Sends `conn` its catch-up (the missed frames, then the answer it is told), or closes it
    /// when its cursor could not keep the seam.
    pub fn caught_up(&self, conn: &Conn, since: Since, caught: Result<CaughtUp, SeamError>) {
        let proto = &self.shared.proto;
        let mut caught = match caught {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(shard = self.id, conn = conn.id, error = ?e, "catch-up seam broken; closing");
                conn.request_close(seam_close(e));
                return;
            }
        };
        // Validation keeps the count within the queue; the bytes depend on the messages. A
        // catch-up the queue cannot hold would close the socket as a slow consumer on every
        // resume, so the client is told to reload instead.
        let bytes: usize = caught.deliver.iter().map(|(_, f)| f.len()).sum();
        if bytes > proto.limits.queue_max_bytes / 2 {
            let top = caught.deliver.last().map_or(caught.start, |(p, _)| *p);
            caught = CaughtUp {
                recovery: Recovery::NotRecovered(Unrecoverable::TooFarBehind),
                start: top,
                deliver: Vec::new(),
            };
        }
        self.probe.resumed(match (since, caught.recovery) {
            (Since::Fresh | Since::Start, _) => None,
            (_, Recovery::NotRecovered(r)) => Some(Some(r)),
            _ => Some(None),
        });
        let mut n = 0;
        // A latest-value room's snapshot is noted by key, so that a newer value for a key
        // still replaces it in the queue, as it would a live one.
        let latest = proto
            .history_for(&conn.room)
            .and_then(|r| proto.history[r].latest_by.as_deref());
        for (_, frame) in &caught.deliver {
            let queued = conn.enqueue(frame, &self.shared, &self.probe);
            if let Some(key) = latest
                .filter(|_| queued)
                .and_then(|f| store::latest_key(frame, f))
            {
                conn.note_unsent(&key, frame);
            }
            n += u64::from(queued);
        }
        if let Some(frame) = since
            .wants_answer()
            .then(|| store::notice(proto, &caught))
            .flatten()
        {
            n += u64::from(conn.enqueue(&frame, &self.shared, &self.probe));
        }
        Probe::inc(&self.probe.messages_out, n);
    }

    /// The history rule of `room` when its history lives in the cluster's Redis
    /// (`runtime/cluster/history.rs`), not in this shard's memory.
    pub fn history_in_redis(&self, room: &str) -> Option<usize> {
        let redis = self
            .shared
            .config
            .cluster
            .as_ref()
            .is_some_and(|c| c.broker == crate::config::BrokerKind::Redis);
        store::rule_in_redis(&self.shared.proto, redis, room)
    }

    /// `conn` waits for a history read: positioned frames for its room go to `cursor`.
    pub fn start_catching(&self, conn: &Conn, cursor: Cursor) {
        self.catching
            .borrow_mut()
            .entry(conn.room.clone())
            .or_default()
            .push((conn.id, cursor));
    }

    /// The read for `conn` landed (or it left): its cursor, unless it broke (and closed the
    /// socket) meanwhile.
    pub fn stop_catching(&self, conn: &Conn) -> Option<Cursor> {
        let mut catching = self.catching.borrow_mut();
        let list = catching.get_mut(&conn.room)?;
        let i = list.iter().position(|(id, _)| *id == conn.id)?;
        let (_, cursor) = list.swap_remove(i);
        if list.is_empty() {
            catching.remove(&conn.room);
        }
        Some(cursor)
    }

    /// Fans out a frame whose position Redis decided (it is already written in): members
    /// waiting for a history read buffer it in their cursor, members whose read landed drop
    /// what it already held (the subscription may still bring frames published before the
    /// read), the others get it at once. A member's cursor goes with its first new frame:
    /// the channel delivers in offset order, so nothing after that can be a duplicate.
    pub fn deliver_positioned(
        &self,
        room: &str,
        frame: &Bytes,
        at: Position,
        exclude: Option<u64>,
    ) -> usize {
        let (shared, probe) = (&*self.shared, &*self.probe);
        let gap = self.note_seen(room, at);
        // A latest-value room's members keep one unsent frame per key (conflation).
        let proto = &self.shared.proto;
        let key = proto
            .history_for(room)
            .and_then(|r| proto.history[r].latest_by.as_deref())
            .and_then(|field| store::latest_key(frame, field));
        let enqueue = |c: &Conn| match &key {
            None => c.enqueue_fanout(frame, shared, probe),
            Some(k) => c.enqueue_latest(frame, k, shared, probe),
        };
        let Some(mut list) = self.catching.borrow_mut().remove(room) else {
            if let Some(last) = gap {
                return self.close_behind(room, last, at, &[]);
            }
            return self.fan_out(room, frame, exclude, enqueue);
        };
        let mut held = Vec::new();
        list.retain_mut(|(id, cursor)| {
            // Buffered even for an excluded sender and past filters: the cursor must see every
            // offset, as the catch-up batch ignores filters too.
            match cursor.on_live(at, frame.clone()) {
                Ok(Live::Buffered | Live::Duplicate) => {
                    held.push(*id);
                    true
                }
                // The first frame past the catch-up: the subscription has caught up with the
                // read, so nothing it brings later can be a duplicate. Fanned out below.
                Ok(Live::Deliver(_)) => false,
                Err(e) => {
                    held.push(*id);
                    if let Some(c) = self.conn(*id) {
                        tracing::debug!(shard = self.id, conn = *id, error = ?e, "catch-up seam broke; closing");
                        c.request_close(seam_close(e));
                    }
                    false
                }
            }
        });
        if !list.is_empty() {
            if let Some((key, _)) = self.rooms.borrow().get_key_value(room) {
                self.catching.borrow_mut().insert(key.clone(), list);
            }
        }
        if let Some(last) = gap {
            return self.close_behind(room, last, at, &held);
        }
        self.fan_out(room, frame, exclude, |c| {
            if held.contains(&c.id) {
                Fanned::Dropped
            } else {
                enqueue(c)
            }
        })
    }

    /// Records `at` as the room's newest position here; the one before it when `at` does not
    /// follow it.
    fn note_seen(&self, room: &str, at: Position) -> Option<Position> {
        let mut seen = self.seen.borrow_mut();
        if let Some(last) = seen.get_mut(room) {
            let prev = std::mem::replace(last, at);
            let follows = prev.epoch == at.epoch && at.offset <= prev.offset + 1;
            return (!follows).then_some(prev);
        }
        if let Some((key, _)) = self.rooms.borrow().get_key_value(room) {
            seen.insert(key.clone(), at);
        }
        None
    }

    /// Members of `room` (but those in `catching_up`, whose cursors judge for themselves) missed
    /// what lies between `last` and `at`: they are closed (`internal`, a reconnect class) so
    /// that they resume from what they have and are told whether they recovered, rather than
    /// carrying on as if nothing was missing. Returns 0: nothing was delivered.
    fn close_behind(&self, room: &str, last: Position, at: Position, catching_up: &[u64]) -> usize {
        let rooms = self.rooms.borrow();
        let members = rooms.get(room).map_or(&[][..], Vec::as_slice);
        let behind: Vec<&Rc<Conn>> = members
            .iter()
            .filter(|c| !catching_up.contains(&c.id))
            .collect();
        tracing::warn!(
            shard = self.id,
            room,
            last = last.offset,
            got = at.offset,
            epoch_changed = last.epoch != at.epoch,
            members = behind.len(),
            "a room's history moved on without this node (offset gap); closing its members so they resume"
        );
        for c in behind {
            c.request_close(CloseCmd::Rejection(Rejection::Internal));
        }
        0
    }

    /// Releases histories that expired in rooms nobody is in; a timer calls it.
    pub fn sweep_history(&self) {
        let proto = &self.shared.proto;
        if proto.history.is_empty() {
            return;
        }
        let rooms = self.rooms.borrow();
        let mut store = self.history.borrow_mut();
        let spread = self.spread.borrow();
        store.sweep(proto, unix_ms(), |r| {
            rooms.contains_key(r) || spread.contains_key(r)
        });
        self.probe.history_held(store.held());
    }

    /// `enqueue` queues the frame for one member: monomorphised per caller, so rooms without
    /// keys run the plain queueing with nothing added per member.
    fn fan_out(
        &self,
        room: &str,
        frame: &Bytes,
        exclude: Option<u64>,
        enqueue: impl Fn(&Conn) -> Fanned,
    ) -> usize {
        // The room map stays borrowed through the fan-out: `enqueue` writes to sockets and wakes
        // tasks but never joins or leaves a room, and woken tasks run only after this returns.
        let rooms = self.rooms.borrow();
        let Some(members) = rooms.get(room) else {
            return 0;
        };
        let mut n = 0;
        // Parsed at most once per delivery, and only when a member has a filter.
        let mut parsed = None;
        for c in members {
            if Some(c.id) == exclude {
                continue;
            }
            if let Some(f) = c.filter.borrow().as_ref() {
                let obj = parsed.get_or_insert_with(|| frame_object(frame));
                if !f.admits(obj.as_ref()) {
                    continue;
                }
            }
            match enqueue(c) {
                Fanned::Dropped => continue,
                Fanned::Queued => {}
                Fanned::Batch => {
                    let mut batch = self.batch.borrow_mut();
                    if batch.is_empty() {
                        if let Some(w) = self.batch_waker.take() {
                            w.wake();
                        }
                    }
                    batch.push(c.clone());
                }
            }
            n += 1;
        }
        Probe::inc(&self.probe.messages_out, n as u64);
        n
    }

    /// Writes what this turn's fan-outs queued: one `send` per listed member. Called where a
    /// turn ends (a readiness batch, an inbox batch) and by the shard's batch task, which runs
    /// as soon as the task that delivered yields, so a lone message waits for no later event.
    /// With `write_delay_ms`, a write within that long of the last one is left to the batch
    /// task, which waits out the rest ([`Shard::batch_due`]).
    pub fn write_batch(&self) {
        if self.batch.borrow().is_empty() || self.batch_due().is_some() {
            return;
        }
        if !self.write_delay.is_zero() {
            self.last_write.set(Some(Instant::now()));
        }
        let mut list = std::mem::take(&mut *self.batch.borrow_mut());
        for c in &list {
            c.write_batch(&self.probe);
        }
        list.clear();
        // Keep the allocation for the next turn, unless a write refilled the batch meanwhile.
        let mut batch = self.batch.borrow_mut();
        if batch.is_empty() {
            *batch = list;
        }
    }

    /// With `write_delay_ms`: when the next end-of-turn write may go, if not now. A stream of
    /// messages faster than one per delay then leaves in one write per member per delay
    /// instead of one per message; a message after a quiet spell goes at once.
    pub fn batch_due(&self) -> Option<Instant> {
        if self.write_delay.is_zero() {
            return None;
        }
        let due = self.last_write.get()? + self.write_delay;
        (Instant::now() < due).then_some(due)
    }

    /// Ready when a fan-out has listed members; parks the batch task otherwise.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.batch.borrow().is_empty() {
            self.batch_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Asks up to `n` connections not yet closing (in no particular order) to close with the
    /// shutdown code. Returns how many it asked.
    pub fn close_batch(&self, n: usize) -> usize {
        let conns = self.conns.borrow();
        let mut done = 0;
        for c in conns.values() {
            if done == n {
                break;
            }
            if !c.close_requested() {
                c.request_close(CloseCmd::Rejection(Rejection::Shutdown));
                done += 1;
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    //! Conflation in members' queues, on a shard without sockets: members that never write
    //! keep what the fan-out queued.
    use serde_json::{json, Value};

    use super::*;
    use crate::ws::codec::text_frame;

    struct Stalled;

    impl Task for Stalled {
        fn turn(&mut self, _: &Conn, _: &mut Context<'_>, _: Option<Instant>) -> Poll<u16> {
            Poll::Pending
        }
    }

    fn shard() -> Shard {
        let src = include_str!("../../../tests/fixtures/history.toml");
        let proto = crate::protocol::load_protocol(src).expect("fixture");
        let config = crate::config::Config::default();
        let shared = Shared::new(Arc::new(proto), config, Vec::new(), None, 1);
        Shard::new(0, Arc::new(shared)).expect("epoll set")
    }

    fn member(shard: &Shard, room: &str) -> Rc<Conn> {
        let (id, room) = shard.new_conn(room);
        let conn: Rc<Conn> = Rc::new(Conn::new(id, room, Stalled));
        shard.join(conn.clone());
        conn
    }

    fn location(worker: &str, n: u32) -> Bytes {
        let v = json!({"type": "location", "worker_id": worker, "lat": n, "lng": 0});
        text_frame(v.to_string().as_bytes())
    }

    /// (worker, lat, offset) of each queued frame, emptying the queue.
    fn drain(c: &Conn) -> Vec<(String, u64, u64)> {
        std::iter::from_fn(|| c.pop())
            .map(|f| {
                let v = Value::Object(frame_object(&f).expect("JSON"));
                let worker = v["worker_id"].as_str().unwrap_or("").to_owned();
                (
                    worker,
                    v["lat"].as_u64().unwrap_or(0),
                    v["offset"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    fn conflated(shard: &Shard) -> u64 {
        shard.probe.conflated.load(Ordering::Relaxed)
    }

    #[test]
    fn an_unsent_value_is_replaced_by_the_newer_one_for_its_key() {
        let shard = shard();
        let slow = member(&shard, "track:b1");
        let other = member(&shard, "track:b1");
        for (w, n) in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)] {
            assert_eq!(shard.deliver("track:b1", &location(w, n), None), 2);
        }
        let want = |v: &[(&str, u64)]| -> Vec<(String, u64, u64)> {
            v.iter().map(|(w, n)| (w.to_string(), *n, *n)).collect()
        };
        // One frame per key, the newest, in offset order: the skips show as offset jumps.
        assert_eq!(drain(&slow), want(&[("a", 3), ("c", 4), ("b", 5)]));
        assert_eq!(conflated(&shard), 4, "two per member");

        // `other` still holds c@4 behind the replaced ones; `slow` starts from an empty queue.
        for (w, n) in [("a", 6), ("b", 7)] {
            shard.deliver("track:b1", &location(w, n), None);
        }
        assert_eq!(conflated(&shard), 6, "a@3 and b@5 for `other`");
        // A frame the task took (to write it, or half-written) is not in the queue any more:
        // the newer value is queued behind what is left.
        let taken = slow.pop().expect("a@6");
        for (w, n) in [("a", 8), ("b", 9)] {
            shard.deliver("track:b1", &location(w, n), None);
        }
        drop(taken);
        assert_eq!(drain(&slow), want(&[("a", 8), ("b", 9)]));
        assert_eq!(drain(&other), want(&[("c", 4), ("a", 8), ("b", 9)]));
        assert_eq!(
            conflated(&shard),
            9,
            "b@7 for `slow`, a@6 and b@7 for `other`"
        );
        // Sent means forgotten: a value after an empty queue is simply queued.
        shard.deliver("track:b1", &location("a", 10), None);
        assert_eq!(drain(&slow), want(&[("a", 10)]));
    }

    #[test]
    fn a_joining_members_snapshot_is_conflated_like_live_values() {
        let shard = shard();
        for (w, n) in [("a", 1), ("b", 2)] {
            shard.deliver("track:b2", &location(w, n), None);
        }
        let joining = member(&shard, "track:b2");
        shard.catch_up(&joining, Since::Fresh);
        // Still unsent when a newer value for `a` comes: the snapshot's a@1 is replaced.
        shard.deliver("track:b2", &location("a", 3), None);
        let want = |v: &[(&str, u64)]| -> Vec<(String, u64, u64)> {
            v.iter().map(|(w, n)| (w.to_string(), *n, *n)).collect()
        };
        assert_eq!(drain(&joining), want(&[("b", 2), ("a", 3)]));
        assert_eq!(conflated(&shard), 1);
    }

    #[test]
    fn rooms_without_keys_keep_every_frame() {
        let shard = shard();
        let slow = member(&shard, "room:r1");
        for t in ["x", "x", "x"] {
            let f = text_frame(json!({"type": "said", "text": t}).to_string().as_bytes());
            shard.deliver("room:r1", &f, None);
        }
        assert_eq!(slow.queued(), 3);
        assert!(
            slow.unsent.take().is_none(),
            "nothing noted outside latest-value rooms"
        );
        assert_eq!(conflated(&shard), 0);
    }

    #[test]
    fn other_messages_in_a_latest_value_room_are_never_conflated() {
        let shard = shard();
        let slow = member(&shard, "track:b1");
        let note = text_frame(br#"{"type":"note","text":"n"}"#);
        shard.deliver("track:b1", &location("a", 1), None);
        shard.deliver("track:b1", &note, None);
        shard.deliver("track:b1", &note, None);
        shard.deliver("track:b1", &location("a", 2), None);
        assert_eq!(slow.queued(), 3, "two notes and the newest location");
        assert_eq!(conflated(&shard), 1);
    }

    mod against_a_model {
        //! Any interleaving of keyed updates, other messages and the task taking frames off
        //! the queue: the queue never holds two unsent frames for one key, nothing but
        //! superseded values is dropped (and each is counted), and what the member gets is
        //! in offset order, ending with the newest value of every key.
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Update(u8),
            Note,
            /// The task takes this many frames (to write them).
            Take(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0u8..4).prop_map(Op::Update),
                1 => Just(Op::Note),
                2 => (0u8..4).prop_map(Op::Take),
            ]
        }

        proptest! {
            #[test]
            fn a_member_gets_the_newest_value_of_each_key_in_offset_order(
                ops in proptest::collection::vec(op(), 1..200)
            ) {
                let shard = shard();
                let member = member(&shard, "track:p");
                let note = text_frame(br#"{"type":"note","text":"n"}"#);
                let (mut updates, mut notes) = (0u64, 0u64);
                let mut newest: HashMap<String, u64> = HashMap::new();
                let mut got: Vec<Value> = Vec::new();
                let take = |got: &mut Vec<Value>, n: usize| {
                    for f in std::iter::from_fn(|| member.pop()).take(n) {
                        got.push(Value::Object(frame_object(&f).expect("JSON")));
                    }
                };
                for o in ops {
                    match o {
                        Op::Update(k) => {
                            updates += 1;
                            let w = format!("w{k}");
                            newest.insert(w.clone(), updates);
                            shard.deliver("track:p", &location(&w, updates as u32), None);
                        }
                        Op::Note => {
                            notes += 1;
                            shard.deliver("track:p", &note, None);
                        }
                        Op::Take(n) => take(&mut got, n as usize),
                    }
                    let queued: Vec<Value> = member
                        .out
                        .borrow()
                        .iter()
                        .map(|f| Value::Object(frame_object(f).expect("JSON")))
                        .collect();
                    let mut keys: Vec<&str> =
                        queued.iter().filter_map(|v| v["worker_id"].as_str()).collect();
                    let n = keys.len();
                    keys.sort();
                    keys.dedup();
                    prop_assert_eq!(keys.len(), n, "two unsent values for one key");
                }
                take(&mut got, usize::MAX);
                let offsets: Vec<u64> =
                    got.iter().filter_map(|v| v["offset"].as_u64()).collect();
                prop_assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{:?}", offsets);
                let sent_notes = got.iter().filter(|v| v["type"] == "note").count() as u64;
                prop_assert_eq!(sent_notes, notes, "other messages are never dropped");
                let mut last: HashMap<String, u64> = HashMap::new();
                for v in &got {
                    if let (Some(w), Some(n)) = (v["worker_id"].as_str(), v["lat"].as_u64()) {
                        last.insert(w.to_owned(), n);
                    }
                }
                prop_assert_eq!(last, newest);
                prop_assert_eq!(conflated(&shard), updates - offsets.len() as u64);
            }
        }
    }
}
