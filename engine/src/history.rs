//! Room history and resume: what a reconnecting client missed, whether it can have it, and how
//! missed messages meet live ones without a gap or a duplicate.
//!
//! Sans-IO like [`geo`](crate::geo): plain data, no runtime, no clock, no I/O. The caller
//! passes `now_ms` in and sends what comes back; frames are the encoded bytes fan-out already
//! shares ([`Bytes`]), so history holds a reference to each broadcast frame, never a copy.
//!
//! # Positions
//!
//! Every message that enters a room's history gets a [`Position`]: its **offset**, one more
//! than the message before it in that room (the first is 1, so offset 0 is "before anything"),
//! and the room's **epoch**. An epoch names one unbroken run of offsets: it is chosen when the
//! history is created ([`EpochSource`]) and never reused, so after history is lost (a restart
//! without a broker, or the runtime dropping an idle room's history and creating it again) the
//! same offsets mean different messages under a new epoch, and a client's old position is
//! recognised as belonging to a history that no longer exists. Within one epoch, offsets have
//! no holes: a client that has seen offset `n` has missed exactly `n + 1 ..= top`.
//!
//! # When a client recovers
//!
//! [`RoomHistory`] keeps the last `size` messages, each for `ttl_ms` after it entered
//! (expired at `now_ms >= inserted_at_ms + ttl_ms`). A client resuming from `since` recovers
//! only if it can be given *every* message after `since`, in order:
//!
//! 1. `since.epoch` is the room's epoch, else [`Unrecoverable::EpochChanged`];
//! 2. `since.offset <= top`, else [`Unrecoverable::AheadOfHistory`] (below);
//! 3. `top - since.offset <= size`, else [`Unrecoverable::Overwritten`]: the size limit alone
//!    has pushed out a message it missed;
//! 4. message `since.offset + 1` is still held, else [`Unrecoverable::Expired`]: with (3)
//!    holding, only the TTL can have dropped it;
//! 5. `top - since.offset <= max`, else [`Unrecoverable::TooFarBehind`]: the history has it
//!    all, but the caller's cap on one catch-up says no.
//!
//! Otherwise [`Resume::Recovered`] holds `since.offset + 1 ..= top`, which is empty for a
//! client at the head. There is no partial recovery: [`Resume::NotRecovered`] carries no
//! messages, only the reason and the current top, so the app reloads its state from its API
//! and continues from there. Never pretending is the whole point: a client told "recovered"
//! has provably missed nothing.
//!
//! **A client from the future** (right epoch, `since.offset > top`) is not recovered. Within
//! one epoch that position was never handed out, so either the client is confused or the
//! epoch was reused after history was lost; either way nothing it holds can be trusted to line
//! up with what comes next. Centrifuge decides the same way (`isStreamRecovered`: with nothing
//! to return, recovered only when the client's offset equals the top).
//!
//! # The seam
//!
//! When history is read while the room keeps publishing (a Redis read, or any read that
//! yields), a resuming subscriber must get the missed messages and then the live ones with no
//! gap and no duplicate. [`Cursor`] is that subscriber's place in the room:
//!
//! 1. the runtime creates it [catching up](Cursor::catching_up) and adds the subscriber to the
//!    room's fan-out *before* it starts the read: from then on every live message goes
//!    through [`Cursor::on_live`], which buffers it;
//! 2. the read returns and goes to [`Cursor::on_history`] (or [`Cursor::on_top`] for a client
//!    with no position, [`Cursor::on_snapshot`] for a latest-value room). The read saw every
//!    message up to its top; every message after that top was published after the read began,
//!    so it is in the buffer. The cursor sends the history batch, then the buffered messages
//!    whose offsets follow it, dropping the ones the batch already holds;
//! 3. the cursor is then live: [`Cursor::on_live`] delivers offset `last + 1`, drops offsets
//!    `<= last` as duplicates, and reports anything else as a [`SeamError::Gap`].
//!
//! A gap cannot happen while the runtime follows these steps; if it does (a delivery lost
//! between shards, a read that did not see what it should), the cursor says so instead of
//! delivering out of order, and the runtime closes the connection so the client resumes from
//! its last position, which is exactly what [`Cursor::last_delivered`] holds. While catching
//! up, the buffer is bounded (`max_buffered`); a read slower than that is
//! [`SeamError::Overflow`], handled the same way. When the read and the subscribe happen in one
//! turn on the room's shard (in-memory history), nothing can arrive in between, and
//! [`Cursor::live_at`] skips the buffering.
//!
//! # Latest-value rooms
//!
//! [`LatestValues`] keeps, per key, only the newest frame and its position (conflation): a
//! worker's location, a booking's status. Offsets still count every update in the room, so
//! live delivery is checked by the same [`Cursor`]; what a joining client gets is one frame per
//! key, in offset order ([`LatestValues::snapshot`]), and a resuming one only the keys updated
//! after its position. A value dropped by the size or TTL limit is not announced: a client
//! that still holds it keeps a value that was true when it was dropped.
//!
//! # Memory
//!
//! A [`RoomHistory`] holds at most `size` entries of 40 bytes (a [`Bytes`] handle and a
//! timestamp; offsets are implied by position in the ring) plus the frames they share with
//! fan-out, so at most `size × (40 + max frame size)` per room; when the TTL empties the ring,
//! its buffer is released, so a quiet room costs a few words. A [`LatestValues`] holds at most
//! `size` keys. A [`Cursor`] holds one position, or while catching up at most `max_buffered`
//! frames. Time is monotonic per room: a `now_ms` earlier than one already seen counts as the
//! later one, so a clock step back never brings an expired message back or reorders expiry.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

use bytes::Bytes;

/// Names one unbroken run of a room's offsets; changes whenever the history is lost. Crosses
/// shards (Send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

/// Where a message sits in its room's history. Crosses shards (Send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// 1 for the room's first message in this epoch; 0 is "before anything".
    pub offset: u64,
    pub epoch: Epoch,
}

impl Position {
    /// The position right after this one.
    fn next(self) -> Position {
        Position {
            offset: self.offset + 1,
            epoch: self.epoch,
        }
    }
}

/// Hands out a fresh epoch for every history a shard creates, so that a room whose history is
/// dropped and created again never reuses one. Exists on every shard.
#[derive(Debug, Clone)]
pub struct EpochSource {
    seed: u64,
    issued: u64,
}

impl EpochSource {
    /// `seed` must differ between processes and shards, e.g. the startup time in nanoseconds
    /// mixed with random bits and the shard id; it is taken, not read, to keep this sans-IO.
    pub fn new(seed: u64) -> Self {
        EpochSource { seed, issued: 0 }
    }

    pub fn next_epoch(&mut self) -> Epoch {
        self.issued += 1;
        // splitmix64 of seed + counter: distinct inputs give distinct outputs (a bijection),
        // and neighbouring seeds do not give neighbouring epochs.
        let mut z = self
            .seed
            .wrapping_add(self.issued.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Epoch(z ^ (z >> 31))
    }
}

/// How much history a room kind keeps: the protocol's `size` and `ttl_s`. Startup data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most messages (or, for [`LatestValues`], keys) kept.
    pub size: usize,
    /// How long each is kept after it entered.
    pub ttl_ms: u64,
}

/// Why a resume could not be answered with every missed message. Each has a stable code for
/// metrics labels and logs ([`Unrecoverable::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unrecoverable {
    /// The position belongs to a history that no longer exists.
    EpochChanged,
    /// The position is past the newest message in this epoch: never handed out.
    AheadOfHistory,
    /// The client missed more messages than the history keeps.
    Overwritten,
    /// A message the client missed outlived the history's TTL.
    Expired,
    /// The history holds everything missed, but more than one catch-up may send.
    TooFarBehind,
    /// The client's position could not be read (an offset that is not a number, an offset
    /// without an epoch). Never returned by [`RoomHistory::resume`]: the runtime decides it
    /// before it reads history.
    Malformed,
    /// The history could not be read (its store, the cluster's Redis, is down or did not
    /// answer in time). Never returned by [`RoomHistory::resume`]: the runtime decides it
    /// when the read fails.
    Unavailable,
}

impl Unrecoverable {
    pub const ALL: [Unrecoverable; 7] = [
        Unrecoverable::EpochChanged,
        Unrecoverable::AheadOfHistory,
        Unrecoverable::Overwritten,
        Unrecoverable::Expired,
        Unrecoverable::TooFarBehind,
        Unrecoverable::Malformed,
        Unrecoverable::Unavailable,
    ];

    /// Stable, for metrics labels and logs.
    pub fn code(self) -> &'static str {
        match self {
            Unrecoverable::EpochChanged => "epoch_changed",
            Unrecoverable::AheadOfHistory => "ahead_of_history",
            Unrecoverable::Overwritten => "overwritten",
            Unrecoverable::Expired => "expired",
            Unrecoverable::TooFarBehind => "too_far_behind",
            Unrecoverable::Malformed => "malformed",
            Unrecoverable::Unavailable => "unavailable",
        }
    }
}

/// The answer to [`RoomHistory::resume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Every message after the client's position, in order; empty for a client at the head.
    Recovered(Vec<(Position, Bytes)>),
    /// Nothing is sent from history; the app reloads its state and continues from `top`.
    NotRecovered {
        reason: Unrecoverable,
        /// The newest position in the room when the read was made.
        top: Position,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    inserted_at_ms: u64,
    frame: Bytes,
}

/// One room's recent messages, bounded by size and TTL. Owned by the room's owner shard.
#[derive(Debug, Clone)]
pub struct RoomHistory {
    limits: HistoryLimits,
    epoch: Epoch,
    /// The newest offset handed out; 0 before the first message.
    top: u64,
    /// Offsets `top - len + 1 ..= top`, oldest first.
    entries: VecDeque<Entry>,
    /// The latest time seen, so that time never runs backwards here.
    now_ms: u64,
}

impl RoomHistory {
    /// An empty history at `now_ms`: its first message gets offset 1.
    pub fn new(limits: HistoryLimits, epoch: Epoch, now_ms: u64) -> Self {
        RoomHistory {
            limits,
            epoch,
            top: 0,
            entries: VecDeque::new(),
            now_ms,
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The newest position: where a subscriber with no position starts.
    pub fn top(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch,
        }
    }

    /// How many messages are held now (as of the last call that took a time).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The oldest offset held; `top + 1` when nothing is.
    fn first_kept(&self) -> u64 {
        self.top + 1 - self.entries.len() as u64
    }

    /// The position the next [`RoomHistory::append`] will give: the frame carries its own
    /// position on the wire, so the runtime renders it with this, then appends it, in one turn.
    pub fn next_position(&self) -> Position {
        self.top().next()
    }

    /// Adds `frame` as the room's next message and returns its position: the only place a
    /// position is decided.
    pub fn append(&mut self, now_ms: u64, frame: Bytes) -> Position {
        self.expire(now_ms);
        self.top += 1;
        if self.limits.size > 0 {
            if self.entries.len() == self.limits.size {
                self.entries.pop_front();
            }
            self.entries.push_back(Entry {
                inserted_at_ms: self.now_ms,
                frame,
            });
        }
        self.top()
    }

    /// Drops what the TTL has run out on by `now_ms`. Every call that takes a time does this
    /// first; the runtime may also call it from a room sweep so idle rooms release memory.
    pub fn expire(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let ttl = self.limits.ttl_ms;
        while self
            .entries
            .front()
            .is_some_and(|e| e.inserted_at_ms.saturating_add(ttl) <= self.now_ms)
        {
            self.entries.pop_front();
        }
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
    }

    /// What a client that last saw `since` missed, as of `now_ms`, if it may have all of it in
    /// one catch-up of at most `max` messages. See the module doc for the order of the checks.
    pub fn resume(&mut self, now_ms: u64, since: Position, max: usize) -> Resume {
        self.expire(now_ms);
        let lost = |reason| Resume::NotRecovered {
            reason,
            top: self.top(),
        };
        if since.epoch != self.epoch {
            return lost(Unrecoverable::EpochChanged);
        }
        if since.offset > self.top {
            return lost(Unrecoverable::AheadOfHistory);
        }
        let missed = self.top - since.offset;
        if missed > self.limits.size as u64 {
            return lost(Unrecoverable::Overwritten);
        }
        let first_kept = self.first_kept();
        if since.offset + 1 < first_kept {
            return lost(Unrecoverable::Expired);
        }
        if missed > max as u64 {
            return lost(Unrecoverable::TooFarBehind);
        }
        let skip = (since.offset + 1 - first_kept) as usize;
        let epoch = self.epoch;
        Resume::Recovered(
            self.entries
                .iter()
                .skip(skip)
                .zip(since.offset + 1..)
                .map(|(e, offset)| (Position { offset, epoch }, e.frame.clone()))
                .collect(),
        )
    }
}

/// One message of a history read from a store that keeps it elsewhere (a Redis stream):
/// its offset, when it entered (the store's clock), and its stamped frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    pub offset: u64,
    pub inserted_at_ms: u64,
    pub frame: Bytes,
}

/// [`RoomHistory::resume`] for a history read elsewhere: the room's `epoch` and `top`, and
/// `entries`, the kept messages after `since.offset` in offset order (the read may stop after
/// `max + 1` of them). The same checks in the same order, with the same answers, so a client
/// cannot tell where its room's history lives; a hole in `entries` (a store that lost a
/// message) is `Expired`, never a batch with a gap.
pub fn resume_read(
    limits: HistoryLimits,
    epoch: Epoch,
    top: u64,
    since: Position,
    max: usize,
    now_ms: u64,
    entries: Vec<ReadEntry>,
) -> Resume {
    let lost = |reason| Resume::NotRecovered {
        reason,
        top: Position { offset: top, epoch },
    };
    if since.epoch != epoch {
        return lost(Unrecoverable::EpochChanged);
    }
    if since.offset > top {
        return lost(Unrecoverable::AheadOfHistory);
    }
    let missed = top - since.offset;
    if missed > limits.size as u64 {
        return lost(Unrecoverable::Overwritten);
    }
    // Entries are in insertion order, so the TTL takes them from the front.
    let live = entries
        .iter()
        .position(|e| e.inserted_at_ms.saturating_add(limits.ttl_ms) > now_ms)
        .unwrap_or(entries.len());
    let kept = &entries[live..];
    if missed > 0 && kept.first().is_none_or(|e| e.offset != since.offset + 1) {
        return lost(Unrecoverable::Expired);
    }
    if missed > max as u64 {
        return lost(Unrecoverable::TooFarBehind);
    }
    let batch: Vec<(Position, Bytes)> = kept
        .iter()
        .take_while(|e| e.offset <= top)
        .map(|e| {
            (
                Position {
                    offset: e.offset,
                    epoch,
                },
                e.frame.clone(),
            )
        })
        .collect();
    let contiguous = batch.len() as u64 == missed
        && batch
            .iter()
            .zip(since.offset + 1..)
            .all(|((p, _), o)| p.offset == o);
    if !contiguous {
        return lost(Unrecoverable::Expired);
    }
    Resume::Recovered(batch)
}

/// [`LatestValues::snapshot`] for values read elsewhere: the room's `epoch` and `top`, and
/// `values`, every key's newest value (offset, time, frame) in offset order. The same answer
/// the in-memory values would give, after dropping what the TTL has run out on.
pub fn snapshot_read(
    limits: HistoryLimits,
    epoch: Epoch,
    top: u64,
    since: Option<Position>,
    now_ms: u64,
    values: Vec<ReadEntry>,
) -> Snapshot {
    let (after, recovery) = match since {
        None => (0, Recovery::Joined),
        Some(s) if s.epoch != epoch => (0, Recovery::NotRecovered(Unrecoverable::EpochChanged)),
        Some(s) if s.offset > top => (0, Recovery::NotRecovered(Unrecoverable::AheadOfHistory)),
        Some(s) => (s.offset, Recovery::Recovered),
    };
    Snapshot {
        top: Position { offset: top, epoch },
        values: values
            .into_iter()
            .filter(|v| v.offset > after && v.inserted_at_ms.saturating_add(limits.ttl_ms) > now_ms)
            .map(|v| {
                (
                    Position {
                        offset: v.offset,
                        epoch,
                    },
                    v.frame,
                )
            })
            .collect(),
        recovery,
    }
}

/// How a catch-up began, as the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The client resumed and misses nothing.
    Recovered,
    /// The client resumed but cannot have everything it missed: it reloads its state.
    NotRecovered(Unrecoverable),
    /// The client came without a position: it starts at the room's top.
    Joined,
}

/// Everything one [`LatestValues::snapshot`] gives a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The newest position in the room when the snapshot was taken.
    pub top: Position,
    /// The newest frame of each key the client needs, oldest first.
    pub values: Vec<(Position, Bytes)>,
    pub recovery: Recovery,
}

#[derive(Debug, Clone)]
struct Value {
    offset: u64,
    inserted_at_ms: u64,
    frame: Bytes,
}

/// A latest-value room: only the newest frame per key, e.g. a worker's location. Owned by the
/// room's owner shard.
#[derive(Debug, Clone)]
pub struct LatestValues<K> {
    /// `size`: the most keys kept (the least recently updated goes first); `ttl_ms`: how long
    /// a value is kept after its update.
    limits: HistoryLimits,
    epoch: Epoch,
    top: u64,
    values: HashMap<K, Value>,
    /// Offset of each key's newest value → key: update order, which is also expiry order.
    by_offset: BTreeMap<u64, K>,
    now_ms: u64,
}

impl<K: Clone + Eq + Hash> LatestValues<K> {
    pub fn new(limits: HistoryLimits, epoch: Epoch, now_ms: u64) -> Self {
        LatestValues {
            limits,
            epoch,
            top: 0,
            values: HashMap::new(),
            by_offset: BTreeMap::new(),
            now_ms,
        }
    }

    pub fn top(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch,
        }
    }

    /// How many keys hold a value now (as of the last call that took a time).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The position the next [`LatestValues::set`] will give (see
    /// [`RoomHistory::next_position`]).
    pub fn next_position(&self) -> Position {
        self.top().next()
    }

    /// Replaces `key`'s value with `frame`, the room's next message; returns its position.
    pub fn set(&mut self, now_ms: u64, key: K, frame: Bytes) -> Position {
        self.expire(now_ms);
        self.top += 1;
        let value = Value {
            offset: self.top,
            inserted_at_ms: self.now_ms,
            frame,
        };
        if let Some(old) = self.values.insert(key.clone(), value) {
            self.by_offset.remove(&old.offset);
        }
        self.by_offset.insert(self.top, key);
        while self.values.len() > self.limits.size {
            self.pop_oldest();
        }
        self.top()
    }

    /// Drops values the TTL has run out on by `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let ttl = self.limits.ttl_ms;
        while let Some((_, key)) = self.by_offset.first_key_value() {
            let at = self.values[key].inserted_at_ms;
            if at.saturating_add(ttl) > self.now_ms {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, key)) = self.by_offset.pop_first() {
            self.values.remove(&key);
        }
    }

    /// What a client gets on joining (`since: None`: every value) or resuming from `since`
    /// (only values updated after it, when `since` is a position of this room's epoch no
    /// later than its top; otherwise every value, and the client is told it did not recover).
    pub fn snapshot(&mut self, now_ms: u64, since: Option<Position>) -> Snapshot {
        self.expire(now_ms);
        let (after, recovery) = match since {
            None => (0, Recovery::Joined),
            Some(s) if s.epoch != self.epoch => {
                (0, Recovery::NotRecovered(Unrecoverable::EpochChanged))
            }
            Some(s) if s.offset > self.top => {
                (0, Recovery::NotRecovered(Unrecoverable::AheadOfHistory))
            }
            Some(s) => (s.offset, Recovery::Recovered),
        };
        let epoch = self.epoch;
        let values = self
            .by_offset
            .range(after + 1..)
            .map(|(&offset, key)| (Position { offset, epoch }, self.values[key].frame.clone()))
            .collect();
        Snapshot {
            top: self.top(),
            values,
            recovery,
        }
    }
}

/// What [`Cursor::on_live`] decided for one live message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// Send it now.
    Deliver(Bytes),
    /// Held until the read lands.
    Buffered,
    /// Already delivered (by the catch-up batch): drop it.
    Duplicate,
}

/// The seam could not be kept: the runtime closes the connection and the client resumes from
/// its last position ([`Cursor::last_delivered`]). The cursor is unusable after one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeamError {
    /// A message arrived that does not follow the last one delivered (a skipped offset or
    /// another epoch).
    Gap { expected: Position, got: Position },
    /// More live messages arrived while catching up than the cursor may buffer.
    Overflow,
    /// The call does not fit the cursor's state (a read landing on a live cursor, or any call
    /// after an error): a runtime bug, reported rather than acted on.
    OutOfTurn,
}

/// A finished catch-up: what to send, in order, before live delivery continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaughtUp {
    pub recovery: Recovery,
    /// The position the client continues from, told to it with `recovery`: its own on
    /// recovery, the room's top otherwise. The client's position after `deliver`
    /// is the last of `deliver`, or this.
    pub start: Position,
    /// History first, then the live messages buffered meanwhile that follow it.
    pub deliver: Vec<(Position, Bytes)>,
}

#[derive(Debug, Clone)]
enum CursorState {
    CatchingUp {
        since: Option<Position>,
        buffered: Vec<(Position, Bytes)>,
    },
    Live {
        last: Position,
    },
    Broken,
}

/// One subscriber's place in one room's history: buffers live messages while history is read,
/// then delivers each offset once, in order. Owned by the room's owner shard.
#[derive(Debug, Clone)]
pub struct Cursor {
    state: CursorState,
    max_buffered: usize,
    /// The last position the client was given (or told to start from).
    last_delivered: Option<Position>,
}

enum Step {
    Next,
    Duplicate,
    Gap,
}

fn step(last: Position, pos: Position) -> Step {
    if pos.epoch == last.epoch && pos.offset <= last.offset {
        Step::Duplicate
    } else if pos == last.next() {
        Step::Next
    } else {
        Step::Gap
    }
}

impl Cursor {
    /// A subscriber about to be read for: `since` is its position, `None` if it has none.
    /// Add it to the room's fan-out before the read begins.
    pub fn catching_up(since: Option<Position>, max_buffered: usize) -> Self {
        Cursor {
            state: CursorState::CatchingUp {
                since,
                buffered: Vec::new(),
            },
            max_buffered,
            last_delivered: since,
        }
    }

    /// A subscriber whose read and subscribe happened in one turn: live from `last`.
    pub fn live_at(last: Position) -> Self {
        Cursor {
            state: CursorState::Live { last },
            max_buffered: 0,
            last_delivered: Some(last),
        }
    }

    /// The client's position: what it has been given (or, after a catch-up, told to start
    /// from); where it resumes after a [`SeamError`].
    pub fn last_delivered(&self) -> Option<Position> {
        self.last_delivered
    }

    /// The position just before the first live message buffered while catching up: where a
    /// catch-up whose read failed continues from, so the buffered messages still go out.
    pub fn before_buffered(&self) -> Option<Position> {
        match &self.state {
            CursorState::CatchingUp { buffered, .. } => buffered.first().map(|(p, _)| Position {
                offset: p.offset.saturating_sub(1),
                epoch: p.epoch,
            }),
            _ => None,
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self.state, CursorState::Live { .. })
    }

    /// A live message for this subscriber's room.
    pub fn on_live(&mut self, pos: Position, frame: Bytes) -> Result<Live, SeamError> {
        match &mut self.state {
            CursorState::CatchingUp { buffered, .. } => {
                if buffered.len() >= self.max_buffered {
                    self.state = CursorState::Broken;
                    return Err(SeamError::Overflow);
                }
                buffered.push((pos, frame));
                Ok(Live::Buffered)
            }
            CursorState::Live { last } => match step(*last, pos) {
                Step::Next => {
                    *last = pos;
                    self.last_delivered = Some(pos);
                    Ok(Live::Deliver(frame))
                }
                Step::Duplicate => Ok(Live::Duplicate),
                Step::Gap => {
                    let expected = last.next();
                    self.state = CursorState::Broken;
                    Err(SeamError::Gap { expected, got: pos })
                }
            },
            CursorState::Broken => Err(SeamError::OutOfTurn),
        }
    }

    /// The history read for a subscriber that came with a position.
    pub fn on_history(&mut self, read: Resume) -> Result<CaughtUp, SeamError> {
        let since = match &self.state {
            CursorState::CatchingUp { since: Some(s), .. } => *s,
            _ => return self.out_of_turn(),
        };
        match read {
            Resume::Recovered(batch) => self.finish(Recovery::Recovered, since, batch, true),
            Resume::NotRecovered { reason, top } => {
                self.finish(Recovery::NotRecovered(reason), top, Vec::new(), true)
            }
        }
    }

    /// The room's top, read for a subscriber that came without a position.
    pub fn on_top(&mut self, top: Position) -> Result<CaughtUp, SeamError> {
        match &self.state {
            CursorState::CatchingUp { since: None, .. } => {
                self.finish(Recovery::Joined, top, Vec::new(), true)
            }
            _ => self.out_of_turn(),
        }
    }

    /// A latest-value room's snapshot. Its values skip superseded offsets by design, so only
    /// the buffered live messages after its top are checked for gaps.
    pub fn on_snapshot(&mut self, snapshot: Snapshot) -> Result<CaughtUp, SeamError> {
        match &self.state {
            CursorState::CatchingUp { .. } => {
                self.finish(snapshot.recovery, snapshot.top, snapshot.values, false)
            }
            _ => self.out_of_turn(),
        }
    }

    fn out_of_turn(&mut self) -> Result<CaughtUp, SeamError> {
        self.state = CursorState::Broken;
        Err(SeamError::OutOfTurn)
    }

    /// Sends `batch` from `start` (checked in order when `contiguous`), then the buffered
    /// messages that follow it; the cursor is live afterwards.
    fn finish(
        &mut self,
        recovery: Recovery,
        start: Position,
        batch: Vec<(Position, Bytes)>,
        contiguous: bool,
    ) -> Result<CaughtUp, SeamError> {
        let CursorState::CatchingUp { buffered, .. } =
            std::mem::replace(&mut self.state, CursorState::Broken)
        else {
            return Err(SeamError::OutOfTurn);
        };
        // A snapshot's values go out as they are; everything else must follow `start` in order.
        let (mut deliver, checked) = if contiguous {
            (Vec::new(), batch)
        } else {
            (batch, Vec::new())
        };
        deliver.reserve(checked.len() + buffered.len());
        let mut last = start;
        for (pos, frame) in checked.into_iter().chain(buffered) {
            match step(last, pos) {
                Step::Next => {
                    last = pos;
                    deliver.push((pos, frame));
                }
                Step::Duplicate => {}
                Step::Gap => {
                    let expected = last.next();
                    return Err(SeamError::Gap { expected, got: pos });
                }
            }
        }
        self.state = CursorState::Live { last };
        self.last_delivered = Some(last);
        Ok(CaughtUp {
            recovery,
            start,
            deliver,
        })
    }
}

pub mod store;

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    const E: Epoch = Epoch(7);
    const TTL: u64 = 1_000;

    fn limits(size: usize) -> HistoryLimits {
        HistoryLimits { size, ttl_ms: TTL }
    }

    fn at(offset: u64) -> Position {
        Position { offset, epoch: E }
    }

    fn frame(n: u64) -> Bytes {
        Bytes::from(format!("m{n}"))
    }

    /// A history of size `size` holding messages 1..=n, all appended at time 0.
    fn with(size: usize, n: u64) -> RoomHistory {
        let mut h = RoomHistory::new(limits(size), E, 0);
        for i in 1..=n {
            assert_eq!(h.append(0, frame(i)), at(i));
        }
        h
    }

    fn offsets(r: &Resume) -> Vec<u64> {
        match r {
            Resume::Recovered(batch) => batch.iter().map(|(p, _)| p.offset).collect(),
            Resume::NotRecovered { .. } => panic!("not recovered: {r:?}"),
        }
    }

    fn reason(r: Resume) -> Unrecoverable {
        match r {
            Resume::NotRecovered { reason, top } => {
                assert_eq!(top.epoch, E);
                reason
            }
            Resume::Recovered(_) => panic!("recovered: {r:?}"),
        }
    }

    #[test]
    fn empty_history_resumes_at_zero_and_nowhere_else() {
        let mut h = with(10, 0);
        assert_eq!(h.top(), at(0));
        assert!(h.is_empty());
        assert_eq!(h.resume(0, at(0), 10), Resume::Recovered(vec![]));
        assert_eq!(
            h.resume(0, at(1), 10),
            Resume::NotRecovered {
                reason: Unrecoverable::AheadOfHistory,
                top: at(0)
            }
        );
    }

    #[test]
    fn client_at_the_head_recovers_nothing() {
        let mut h = with(10, 5);
        assert_eq!(h.next_position(), at(6));
        assert_eq!(h.resume(0, at(5), 10), Resume::Recovered(vec![]));
    }

    #[test]
    fn client_behind_gets_every_missed_message_in_order() {
        let mut h = with(10, 5);
        let r = h.resume(0, at(2), 10);
        assert_eq!(offsets(&r), vec![3, 4, 5]);
        let Resume::Recovered(batch) = r else {
            unreachable!()
        };
        assert_eq!(batch[0].1, frame(3));
        assert_eq!(offsets(&h.resume(0, at(0), 10)), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn evicted_by_size_is_overwritten() {
        let mut h = with(3, 5);
        assert_eq!(h.len(), 3);
        assert_eq!(offsets(&h.resume(0, at(2), 10)), vec![3, 4, 5]);
        assert_eq!(reason(h.resume(0, at(1), 10)), Unrecoverable::Overwritten);
        assert_eq!(reason(h.resume(0, at(0), 10)), Unrecoverable::Overwritten);
    }

    #[test]
    fn expired_by_ttl_at_exactly_ttl() {
        let mut h = with(10, 0);
        h.append(0, frame(1));
        h.append(500, frame(2));
        assert_eq!(offsets(&h.resume(TTL - 1, at(0), 10)), vec![1, 2]);
        // Message 1 is gone at 0 + TTL; a client that saw it still recovers.
        assert_eq!(reason(h.resume(TTL, at(0), 10)), Unrecoverable::Expired);
        assert_eq!(offsets(&h.resume(TTL, at(1), 10)), vec![2]);
        // Everything expired: the client at the head still recovers, with nothing.
        assert_eq!(
            reason(h.resume(500 + TTL, at(1), 10)),
            Unrecoverable::Expired
        );
        assert!(h.is_empty());
        assert_eq!(h.resume(500 + TTL, at(2), 10), Resume::Recovered(vec![]));
        // The next message continues the offsets.
        assert_eq!(h.append(2_000, frame(3)), at(3));
        assert_eq!(offsets(&h.resume(2_000, at(2), 10)), vec![3]);
    }

    #[test]
    fn clock_stepping_back_does_not_revive_or_reorder() {
        let mut h = with(10, 0);
        h.append(5_000, frame(1));
        // Taken as 5_000: expires at 6_000 like the message before it.
        h.append(100, frame(2));
        assert_eq!(offsets(&h.resume(5_999, at(0), 10)), vec![1, 2]);
        assert_eq!(reason(h.resume(6_000, at(1), 10)), Unrecoverable::Expired);
        assert_eq!(h.resume(0, at(2), 10), Resume::Recovered(vec![]));
    }

    #[test]
    fn epoch_change_is_never_recovered() {
        let mut h = with(10, 3);
        let old = Position {
            offset: 3,
            epoch: Epoch(8),
        };
        assert_eq!(reason(h.resume(0, old, 10)), Unrecoverable::EpochChanged);
        let old_zero = Position {
            offset: 0,
            epoch: Epoch(8),
        };
        assert_eq!(
            reason(h.resume(0, old_zero, 10)),
            Unrecoverable::EpochChanged
        );
    }

    #[test]
    fn client_from_the_future_is_not_recovered() {
        let mut h = with(10, 3);
        assert_eq!(
            reason(h.resume(0, at(4), 10)),
            Unrecoverable::AheadOfHistory
        );
    }

    #[test]
    fn more_than_max_is_too_far_behind() {
        let mut h = with(10, 8);
        assert_eq!(offsets(&h.resume(0, at(5), 3)), vec![6, 7, 8]);
        assert_eq!(reason(h.resume(0, at(4), 3)), Unrecoverable::TooFarBehind);
        assert_eq!(h.resume(0, at(8), 0), Resume::Recovered(vec![]));
        assert_eq!(reason(h.resume(0, at(7), 0)), Unrecoverable::TooFarBehind);
    }

    #[test]
    fn size_zero_keeps_offsets_but_no_messages() {
        let mut h = with(0, 3);
        assert!(h.is_empty());
        assert_eq!(h.resume(0, at(3), 10), Resume::Recovered(vec![]));
        assert_eq!(reason(h.resume(0, at(2), 10)), Unrecoverable::Overwritten);
    }

    #[test]
    fn quiet_room_releases_its_buffer() {
        let mut h = with(100, 50);
        assert!(h.entries.capacity() >= 50);
        h.expire(TTL);
        assert_eq!(h.entries.capacity(), 0);
        assert_eq!(h.top(), at(50));
    }

    #[test]
    fn epoch_source_never_repeats_nearby() {
        let mut a = EpochSource::new(1);
        let mut b = EpochSource::new(2);
        let mut seen: Vec<Epoch> = (0..100)
            .flat_map(|_| [a.next_epoch(), b.next_epoch()])
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 200);
    }

    #[test]
    fn a_read_elsewhere_answers_as_the_ring_does() {
        // Every position against the same messages, kept in a ring and read from "a store".
        for size in [0usize, 3, 10] {
            for n in 0..8u64 {
                for max in [0usize, 2, 10] {
                    for now in [0u64, TTL - 1, TTL, TTL + 600] {
                        let mut h = RoomHistory::new(limits(size), E, 0);
                        let mut store = Vec::new();
                        for i in 1..=n {
                            let t = if i <= 3 { 0 } else { 500 };
                            h.append(t, frame(i));
                            store.push(ReadEntry {
                                offset: i,
                                inserted_at_ms: t,
                                frame: frame(i),
                            });
                            if store.len() > size {
                                store.remove(0);
                            }
                        }
                        for since in (0..=n + 1).map(at).chain([Position {
                            offset: 1,
                            epoch: Epoch(8),
                        }]) {
                            let read: Vec<ReadEntry> = store
                                .iter()
                                .filter(|e| e.offset > since.offset)
                                .take(max + 1)
                                .cloned()
                                .collect();
                            let got = resume_read(limits(size), E, n, since, max, now, read);
                            assert_eq!(
                                got,
                                h.clone().resume(now, since, max),
                                "size {size} n {n} max {max} now {now} since {since:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_snapshot_read_elsewhere_answers_as_the_values_do() {
        let mut l = LatestValues::new(limits(3), E, 0);
        let mut store: Vec<(&str, ReadEntry)> = Vec::new();
        for (i, (k, t)) in [("a", 0), ("b", 100), ("a", 200), ("c", 300), ("d", 400)]
            .into_iter()
            .enumerate()
        {
            let offset = i as u64 + 1;
            l.set(t, k, frame(offset));
            store.retain(|(key, _)| *key != k);
            store.push((
                k,
                ReadEntry {
                    offset,
                    inserted_at_ms: t,
                    frame: frame(offset),
                },
            ));
            if store.len() > 3 {
                store.remove(0);
            }
        }
        for now in [400, TTL + 150, TTL + 250, TTL + 500] {
            for since in [None, Some(at(0)), Some(at(3)), Some(at(5)), Some(at(6))]
                .into_iter()
                .chain([Some(Position {
                    offset: 2,
                    epoch: Epoch(8),
                })])
            {
                let read = store.iter().map(|(_, e)| e.clone()).collect();
                assert_eq!(
                    snapshot_read(limits(3), E, 5, since, now, read),
                    l.clone().snapshot(now, since),
                    "now {now} since {since:?}"
                );
            }
        }
    }

    #[test]
    fn a_hole_in_a_read_is_never_recovered() {
        let read = vec![
            ReadEntry {
                offset: 2,
                inserted_at_ms: 0,
                frame: frame(2),
            },
            ReadEntry {
                offset: 4,
                inserted_at_ms: 0,
                frame: frame(4),
            },
        ];
        assert_eq!(
            reason(resume_read(limits(10), E, 4, at(1), 10, 0, read)),
            Unrecoverable::Expired
        );
    }

    #[test]
    fn unrecoverable_codes_are_unique() {
        let mut codes: Vec<_> = Unrecoverable::ALL.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Unrecoverable::ALL.len());
    }

    // The seam.

    fn delivered(c: &CaughtUp) -> Vec<u64> {
        c.deliver.iter().map(|(p, _)| p.offset).collect()
    }

    #[test]
    fn live_messages_during_the_read_follow_history_once() {
        let mut h = with(10, 3);
        let mut cursor = Cursor::catching_up(Some(at(1)), 10);
        // Published after the subscribe, before the read: in both.
        let p4 = h.append(0, frame(4));
        assert_eq!(cursor.on_live(p4, frame(4)), Ok(Live::Buffered));
        let read = h.resume(0, at(1), 10);
        // Published after the read: only buffered.
        let p5 = h.append(0, frame(5));
        assert_eq!(cursor.on_live(p5, frame(5)), Ok(Live::Buffered));
        let caught = cursor.on_history(read).unwrap();
        assert_eq!(caught.recovery, Recovery::Recovered);
        assert_eq!(caught.start, at(1));
        assert_eq!(delivered(&caught), vec![2, 3, 4, 5]);
        assert_eq!(caught.deliver[3].1, frame(5));
        assert_eq!(cursor.last_delivered(), Some(at(5)));
        // Live afterwards: a late duplicate is dropped, the next one goes out.
        assert_eq!(cursor.on_live(p5, frame(5)), Ok(Live::Duplicate));
        let p6 = h.append(0, frame(6));
        assert_eq!(cursor.on_live(p6, frame(6)), Ok(Live::Deliver(frame(6))));
    }

    #[test]
    fn not_recovered_continues_from_top_with_later_live_messages() {
        let mut h = with(2, 5);
        let mut cursor = Cursor::catching_up(Some(at(1)), 10);
        let read = h.resume(0, at(1), 10);
        let p6 = h.append(0, frame(6));
        cursor.on_live(p6, frame(6)).unwrap();
        let caught = cursor.on_history(read).unwrap();
        assert_eq!(
            caught.recovery,
            Recovery::NotRecovered(Unrecoverable::Overwritten)
        );
        assert_eq!(caught.start, at(5));
        assert_eq!(delivered(&caught), vec![6]);
    }

    #[test]
    fn joining_subscriber_starts_at_the_top() {
        let mut h = with(10, 3);
        let mut cursor = Cursor::catching_up(None, 10);
        let p4 = h.append(0, frame(4));
        cursor.on_live(p4, frame(4)).unwrap();
        let top = h.top();
        let caught = cursor.on_top(top).unwrap();
        assert_eq!(caught.recovery, Recovery::Joined);
        assert_eq!(caught.start, at(4));
        assert!(caught.deliver.is_empty());
        assert!(cursor.is_live());
    }

    #[test]
    fn a_skipped_offset_is_a_gap_not_a_delivery() {
        let mut cursor = Cursor::live_at(at(3));
        assert_eq!(
            cursor.on_live(at(5), frame(5)),
            Err(SeamError::Gap {
                expected: at(4),
                got: at(5)
            })
        );
        assert_eq!(cursor.last_delivered(), Some(at(3)));
        assert_eq!(cursor.on_live(at(4), frame(4)), Err(SeamError::OutOfTurn));
    }

    #[test]
    fn a_live_message_from_another_epoch_is_a_gap() {
        let mut cursor = Cursor::live_at(at(3));
        let other = Position {
            offset: 1,
            epoch: Epoch(8),
        };
        assert!(matches!(
            cursor.on_live(other, frame(1)),
            Err(SeamError::Gap { .. })
        ));
    }

    #[test]
    fn a_buffer_not_following_the_read_is_a_gap() {
        let mut h = with(10, 3);
        let mut cursor = Cursor::catching_up(Some(at(3)), 10);
        let read = h.resume(0, at(3), 10);
        // Offset 4 never reached this subscriber.
        cursor.on_live(at(5), frame(5)).unwrap();
        assert_eq!(
            cursor.on_history(read),
            Err(SeamError::Gap {
                expected: at(4),
                got: at(5)
            })
        );
    }

    #[test]
    fn a_full_buffer_is_an_overflow() {
        let mut cursor = Cursor::catching_up(Some(at(0)), 2);
        cursor.on_live(at(1), frame(1)).unwrap();
        cursor.on_live(at(2), frame(2)).unwrap();
        assert_eq!(cursor.on_live(at(3), frame(3)), Err(SeamError::Overflow));
        assert_eq!(
            cursor.on_history(Resume::Recovered(vec![])),
            Err(SeamError::OutOfTurn)
        );
    }

    #[test]
    fn a_read_landing_on_a_live_cursor_is_out_of_turn() {
        let mut cursor = Cursor::live_at(at(0));
        assert_eq!(cursor.on_top(at(0)), Err(SeamError::OutOfTurn));
        let mut joining = Cursor::catching_up(None, 1);
        assert_eq!(
            joining.on_history(Resume::Recovered(vec![])),
            Err(SeamError::OutOfTurn)
        );
    }

    // Latest values.

    fn latest(size: usize) -> LatestValues<&'static str> {
        LatestValues::new(limits(size), E, 0)
    }

    fn keyed(s: &Snapshot) -> Vec<(u64, Bytes)> {
        s.values
            .iter()
            .map(|(p, f)| (p.offset, f.clone()))
            .collect()
    }

    #[test]
    fn latest_values_keep_one_frame_per_key() {
        let mut l = latest(10);
        l.set(0, "w1", frame(1));
        l.set(0, "w2", frame(2));
        l.set(0, "w1", frame(3));
        l.set(0, "w1", frame(4));
        assert_eq!(l.len(), 2);
        let joined = l.snapshot(0, None);
        assert_eq!(joined.recovery, Recovery::Joined);
        assert_eq!(joined.top, at(4));
        assert_eq!(keyed(&joined), vec![(2, frame(2)), (4, frame(4))]);
    }

    #[test]
    fn latest_values_resume_with_what_changed() {
        let mut l = latest(10);
        l.set(0, "w1", frame(1));
        l.set(0, "w2", frame(2));
        l.set(0, "w1", frame(3));
        let s = l.snapshot(0, Some(at(2)));
        assert_eq!(s.recovery, Recovery::Recovered);
        assert_eq!(keyed(&s), vec![(3, frame(3))]);
        assert!(l.snapshot(0, Some(at(3))).values.is_empty());
        let lost = l.snapshot(
            0,
            Some(Position {
                offset: 2,
                epoch: Epoch(8),
            }),
        );
        assert_eq!(
            lost.recovery,
            Recovery::NotRecovered(Unrecoverable::EpochChanged)
        );
        assert_eq!(lost.values.len(), 2);
        let ahead = l.snapshot(0, Some(at(9)));
        assert_eq!(
            ahead.recovery,
            Recovery::NotRecovered(Unrecoverable::AheadOfHistory)
        );
        assert_eq!(ahead.values.len(), 2);
    }

    #[test]
    fn latest_values_are_bounded_by_keys_and_ttl() {
        let mut l = latest(2);
        l.set(0, "w1", frame(1));
        l.set(100, "w2", frame(2));
        l.set(200, "w3", frame(3));
        // w1 was the least recently updated.
        assert_eq!(
            keyed(&l.snapshot(200, None)),
            vec![(2, frame(2)), (3, frame(3))]
        );
        l.set(300, "w2", frame(4));
        assert_eq!(keyed(&l.snapshot(200 + TTL, None)), vec![(4, frame(4))]);
        assert!(l.snapshot(300 + TTL, None).values.is_empty());
        assert!(l.is_empty());
        assert_eq!(l.top(), at(4));
    }

    #[test]
    fn latest_values_snapshot_then_live_through_the_cursor() {
        let mut l = latest(10);
        l.set(0, "w1", frame(1));
        l.set(0, "w1", frame(2));
        let mut cursor = Cursor::catching_up(None, 10);
        let p3 = l.set(0, "w2", frame(3));
        cursor.on_live(p3, frame(3)).unwrap();
        let snapshot = l.snapshot(0, None);
        let p4 = l.set(0, "w1", frame(4));
        cursor.on_live(p4, frame(4)).unwrap();
        let caught = cursor.on_snapshot(snapshot).unwrap();
        assert_eq!(caught.recovery, Recovery::Joined);
        // The snapshot skips superseded offset 1; 3 is not sent twice; 4 follows.
        assert_eq!(delivered(&caught), vec![2, 3, 4]);
        let p5 = l.set(0, "w2", frame(5));
        assert_eq!(cursor.on_live(p5, frame(5)), Ok(Live::Deliver(frame(5))));
    }
}
