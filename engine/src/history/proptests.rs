//! History, resume and the seam against a model that keeps every message ever published, with
//! the time it was published, and decides recovery by brute force over that list.
//!
//! Clients publish-watch, drop, come back with or without their position, have their history
//! read while the room keeps publishing (the read is made at one step and lands at a later
//! one), receive redelivered messages, and live through restarts that lose the history. After
//! every step:
//!
//! - every resume answer is exactly the model's: the same messages, or the same reason;
//! - every message a client receives is the one right after its position, with the frame the
//!   model published there: nothing twice, nothing out of order;
//! - every live client is at the room's top: nothing published since it joined, resumed or
//!   was told to reload is missing.
//!
//! The case count is proptest's default, overridable with `PROPTEST_CASES`.

use proptest::prelude::*;

use super::*;

const CLIENTS: usize = 3;
/// Larger than any run's publishes: overflow is a unit test, not this one's business.
const MAX_BUFFERED: usize = 1_000;

#[derive(Debug, Clone)]
enum Op {
    Publish,
    Advance {
        ms: u64,
    },
    Disconnect {
        client: usize,
    },
    /// The client takes its next step back to live delivery:
    /// - offline: it reconnects and is added to fan-out, catching up, with its stored position,
    ///   or as a newcomer when `forgot` (or when it never had one);
    /// - catching up: the history read for it is made now, capped at `max`;
    /// - read made: the read's answer reaches its cursor.
    Progress {
        client: usize,
        forgot: bool,
        max: usize,
    },
    /// An offline client's stored position is moved `ahead` past anything it was given: a
    /// client "from the future" (a reused epoch, a stale store).
    Forge {
        client: usize,
        ahead: u64,
    },
    /// The newest message is delivered to everyone again (an at-least-once hop).
    Redeliver,
    /// History is lost: a new epoch, and every connection dropped.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    // A restart about once in 100 steps: enough to cross epochs, rare enough for long runs
    // within one. Clients step about twice per publish, so most resumes are a few behind.
    prop_oneof![
        24 => Just(Op::Publish),
        // Coarse steps, like the TTLs, so that reads land exactly on an expiry too.
        12 => (0u64..8).prop_map(|tenths| Op::Advance { ms: tenths * 100 }),
        12 => (0..CLIENTS).prop_map(|client| Op::Disconnect { client }),
        48 => (0..CLIENTS, prop::bool::weighted(0.1), 0usize..8)
            .prop_map(|(client, forgot, max)| Op::Progress { client, forgot, max }),
        6 => (0..CLIENTS, 1u64..3).prop_map(|(client, ahead)| Op::Forge { client, ahead }),
        4 => Just(Op::Redeliver),
        1 => Just(Op::Restart),
    ]
}

struct Msg {
    pos: Position,
    at_ms: u64,
    frame: Bytes,
}

/// Every message ever published, and the room's current epoch and top.
struct Model {
    limits: HistoryLimits,
    msgs: Vec<Msg>,
    epoch: Epoch,
    top: u64,
    now_ms: u64,
}

impl Model {
    fn top(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch,
        }
    }

    fn frame_at(&self, pos: Position) -> Option<&Bytes> {
        self.msgs.iter().find(|m| m.pos == pos).map(|m| &m.frame)
    }

    /// Whether the history may still hold `m`, judged from its own age and how many came
    /// after it, not from any ring.
    fn kept(&self, m: &Msg) -> bool {
        self.top - m.pos.offset < self.limits.size as u64
            && m.at_ms + self.limits.ttl_ms > self.now_ms
    }

    fn resume(&self, since: Position, max: usize) -> Result<Vec<(Position, Bytes)>, Unrecoverable> {
        if since.epoch != self.epoch {
            return Err(Unrecoverable::EpochChanged);
        }
        if since.offset > self.top {
            return Err(Unrecoverable::AheadOfHistory);
        }
        let missed: Vec<&Msg> = self
            .msgs
            .iter()
            .filter(|m| m.pos.epoch == self.epoch && m.pos.offset > since.offset)
            .collect();
        if missed.len() > self.limits.size {
            return Err(Unrecoverable::Overwritten);
        }
        if missed.iter().any(|m| !self.kept(m)) {
            return Err(Unrecoverable::Expired);
        }
        if missed.len() > max {
            return Err(Unrecoverable::TooFarBehind);
        }
        Ok(missed.iter().map(|m| (m.pos, m.frame.clone())).collect())
    }
}

enum Pending {
    Resume(Resume),
    Top(Position),
}

enum Conn {
    Offline,
    CatchingUp {
        cursor: Cursor,
        /// The read made for it, and the room's top when it was made.
        read: Option<(Pending, Position)>,
    },
    Live(Cursor),
}

struct Client {
    conn: Conn,
    /// What the app stores: the last position it was given or told to start from.
    position: Option<Position>,
}

/// One message reaching one client: it must be the next one, with the published frame.
fn receive(
    model: &Model,
    position: &mut Option<Position>,
    pos: Position,
    frame: &Bytes,
) -> Result<(), TestCaseError> {
    let Some(at) = *position else {
        return Err(TestCaseError::fail("a delivery before any position"));
    };
    prop_assert_eq!(pos, at.next(), "not the next message");
    prop_assert_eq!(Some(frame), model.frame_at(pos));
    *position = Some(pos);
    Ok(())
}

fn live(
    model: &Model,
    client: &mut Client,
    pos: Position,
    frame: &Bytes,
    redelivery: bool,
) -> Result<(), TestCaseError> {
    match &mut client.conn {
        Conn::Offline => {}
        Conn::CatchingUp { cursor, .. } => {
            prop_assert_eq!(cursor.on_live(pos, frame.clone()), Ok(Live::Buffered));
        }
        Conn::Live(cursor) => match cursor.on_live(pos, frame.clone()) {
            Ok(Live::Deliver(f)) if !redelivery => receive(model, &mut client.position, pos, &f)?,
            Ok(Live::Duplicate) if redelivery => {}
            other => prop_assert!(false, "live {:?}: {:?}", pos, other),
        },
    }
    Ok(())
}

fn apply(
    model: &mut Model,
    history: &mut RoomHistory,
    epochs: &mut EpochSource,
    clients: &mut [Client],
    op: &Op,
) -> Result<(), TestCaseError> {
    match *op {
        Op::Publish => {
            model.top += 1;
            let pos = model.top();
            let frame = Bytes::from(format!("{}:{}", pos.epoch.0, pos.offset));
            prop_assert_eq!(history.append(model.now_ms, frame.clone()), pos);
            model.msgs.push(Msg {
                pos,
                at_ms: model.now_ms,
                frame: frame.clone(),
            });
            for client in clients.iter_mut() {
                live(model, client, pos, &frame, false)?;
            }
        }
        Op::Advance { ms } => {
            model.now_ms += ms;
            history.expire(model.now_ms);
        }
        Op::Disconnect { client } => clients[client].conn = Conn::Offline,
        Op::Forge { client, ahead } => {
            let c = &mut clients[client];
            if let (Conn::Offline, Some(p)) = (&c.conn, &mut c.position) {
                p.offset += ahead;
            }
        }
        Op::Progress {
            client,
            forgot,
            max,
        } => {
            let c = &mut clients[client];
            if matches!(c.conn, Conn::Offline) {
                if forgot {
                    c.position = None;
                }
                c.conn = Conn::CatchingUp {
                    cursor: Cursor::catching_up(c.position, MAX_BUFFERED),
                    read: None,
                };
            } else if let Conn::CatchingUp {
                read: read @ None, ..
            } = &mut c.conn
            {
                let pending = match c.position {
                    Some(since) => {
                        let got = history.resume(model.now_ms, since, max);
                        let want = model.resume(since, max);
                        match (&got, want) {
                            (Resume::Recovered(batch), Ok(want)) => {
                                prop_assert_eq!(batch, &want);
                            }
                            (Resume::NotRecovered { reason, top }, Err(want)) => {
                                prop_assert_eq!(*reason, want);
                                prop_assert_eq!(*top, model.top());
                            }
                            (got, want) => {
                                prop_assert!(false, "from {:?}: {:?}, want {:?}", since, got, want)
                            }
                        }
                        Pending::Resume(got)
                    }
                    None => Pending::Top(history.top()),
                };
                *read = Some((pending, model.top()));
            } else if let Conn::CatchingUp {
                cursor,
                read: read @ Some(_),
            } = &mut c.conn
            {
                let Some((pending, top_at_read)) = read.take() else {
                    unreachable!("matched Some");
                };
                let caught = match pending {
                    Pending::Resume(r) => cursor.on_history(r),
                    Pending::Top(top) => cursor.on_top(top),
                };
                let caught = caught.map_err(|e| TestCaseError::fail(format!("seam: {e:?}")))?;
                match caught.recovery {
                    Recovery::Recovered => prop_assert_eq!(Some(caught.start), c.position),
                    Recovery::NotRecovered(_) | Recovery::Joined => {
                        // The app reloads its state as of the read, and goes on from there.
                        prop_assert_eq!(caught.start, top_at_read);
                        c.position = Some(caught.start);
                    }
                }
                for (pos, frame) in &caught.deliver {
                    receive(model, &mut c.position, *pos, frame)?;
                }
                prop_assert_eq!(cursor.last_delivered(), c.position);
                let cursor = std::mem::replace(cursor, Cursor::live_at(model.top()));
                c.conn = Conn::Live(cursor);
            }
        }
        Op::Redeliver => {
            if let Some(m) = model.msgs.last().filter(|m| m.pos.epoch == model.epoch) {
                let (pos, frame) = (m.pos, m.frame.clone());
                for client in clients.iter_mut() {
                    live(model, client, pos, &frame, true)?;
                }
            }
        }
        Op::Restart => {
            model.epoch = epochs.next_epoch();
            model.top = 0;
            *history = RoomHistory::new(model.limits, model.epoch, model.now_ms);
            for client in clients.iter_mut() {
                client.conn = Conn::Offline;
            }
        }
    }
    for client in clients.iter() {
        if let Conn::Live(cursor) = &client.conn {
            prop_assert_eq!(
                client.position,
                Some(model.top()),
                "a live client fell behind"
            );
            prop_assert_eq!(cursor.last_delivered(), client.position);
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_client_gets_each_message_once_in_order_or_is_told(
        ops in proptest::collection::vec(op(), 1..200),
        size in 0usize..10,
        ttl_ms in prop_oneof![Just(1u64), (1u64..30).prop_map(|t| t * 100)],
        seed in any::<u64>(),
    ) {
        let limits = HistoryLimits { size, ttl_ms };
        let mut epochs = EpochSource::new(seed);
        let epoch = epochs.next_epoch();
        let mut model = Model { limits, msgs: Vec::new(), epoch, top: 0, now_ms: 0 };
        let mut history = RoomHistory::new(limits, epoch, 0);
        let mut clients: Vec<Client> = (0..CLIENTS)
            .map(|_| Client { conn: Conn::Offline, position: None })
            .collect();
        for op in &ops {
            apply(&mut model, &mut history, &mut epochs, &mut clients, op)?;
        }
    }
}
