//! Geo across nodes (`[cluster]` on Redis): every geo pool instance and dispatched job lives on
//! one node of the cluster, the **geo home**, so a seeker on one node finds providers on any
//! node and the first acceptance of a job is decided in one place.
//!
//! - **Who is home.** The node whose shard 0 holds the lease `<prefix>.geo.home` (a Redis key
//!   set if absent with a [`LEASE_MS`] expiry, renewed every [`RENEW_EVERY`] by its holder,
//!   one Lua script so the check and the renewal are atomic). The home subscribes to the geo
//!   channel `<prefix>.geo` on shard 0; no other node does. If the home dies its lease expires
//!   and the next node to renew takes over (within `LEASE_MS + RENEW_EVERY`).
//! - **A new home is refilled at once.** Each shard keeps what its connections last said to
//!   the home ([`crate::broker::geo::Mirror`]: each placed provider's last status or move,
//!   each standing search; one entry per such connection, gone with it). The lease script
//!   answers every node, every second, the holder and the home's *epoch*, which the home
//!   advertises (under `<prefix>.geo.home.ready`) once it hears its own heartbeat on the geo
//!   channel, i.e. once its subscription works. A node that sees an epoch its shards have not
//!   re-sent for has each shard publish its mirror ([`resync`], `Wire::Again`), so within a
//!   second or two of the takeover the home's pools hold what the connected providers last
//!   said, without them sending anything. A shard whose geo publish failed re-sends at the
//!   next second too, and a home whose own heartbeat went unheard for
//!   [`SUBSCRIPTION_SILENT`] advertises a new epoch when it hears it again. Jobs are not
//!   re-sent: an offered job lives only on the home, so one in flight when the home died is
//!   lost (an acceptance finds no job and is ignored); while no node is home a dispatch's
//!   question goes unanswered and it answers 503.
//! - **Requests.** When clustered, a connection's geo effect (status update, move, search,
//!   job response), a dispatch's job and its nearest-providers question are published on the
//!   geo channel from the shard where they start ([`crate::broker::geo::Wire`]), on every node
//!   including the home (one path, whoever is home). The home's shard 0 hands each to the
//!   pool's or job's owner shard as on one node (`runtime/geo.rs`); the frames it produces go
//!   to the seekers' and providers' rooms through the broker like any delivery.
//! - **Order.** A dispatch publishes its job on the geo channel before its offers, on one
//!   connection, so Redis has queued the job for the home before any provider can see the
//!   offer: a response always finds its job, as on one node.
//! - **Answers.** The nearest-providers answer comes back on the asking shard's own service
//!   channel, matched by a request id, waited for up to [`ANSWER_WAIT`] (the dispatch answers
//!   503 otherwise).
//!
//! Exists on every shard (the waiting answers and the mirror are per shard; the lease task
//! runs on shard 0).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;

use super::cluster;
use super::msg::{job_room, pool_room, ConnRef, GeoMsg, Nearby, Sent, ShardMsg};
use super::probe::BrokerDrop;
use super::router::{self, Traffic};
use super::shard::Shard;
use crate::broker::geo::{self as wire, From, Wire};
use crate::config::BrokerKind;
use crate::geo::{Position, Radius};
use crate::protocol::Protocol;
use crate::session::{GeoEffect, ProviderChange, SearchChange};

/// The geo home's lease: how long it lasts without renewal, and how often it is renewed (and
/// how often other nodes try to take it).
pub const LEASE_MS: u64 = 5_000;
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A home whose renewals go unanswered stops being home this long after its last renewal:
/// before the lease can have expired in Redis and another node taken it.
const LEASE_EXPIRY_SAFE: Duration = Duration::from_millis(LEASE_MS - 1_500);
/// How long a dispatch waits for the home's nearest-providers answer.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// A node the home has not heard from for this long (its heartbeat comes every
/// [`RENEW_EVERY`]) is dead: its providers leave and its searches end.
pub const NODE_SILENT: Duration = Duration::from_secs(10);

/// A home that has not heard its own heartbeat on the geo channel for this long stops
/// advertising its epoch: its subscription may have been lost (a link rebuilt, Redis
/// restarted), so when it hears itself again it advertises a new one and every node re-sends.
const SUBSCRIPTION_SILENT: Duration = Duration::from_secs(3);
/// A re-send goes out this many connections at a time, with this pause between: 100k
/// connections' state in about a second, never more than a few thousand publishes queued.
const RESYNC_CHUNK: usize = 512;
const RESYNC_PAUSE: Duration = Duration::from_millis(5);

/// Takes the lease if nobody holds it (the previous holder's epoch goes with it), renews it if
/// this node holds it, and there advertises `ARGV[3]` (when not empty) as the home's epoch.
/// Answers every node `<holder>\n<epoch>` ([`wire::Claim`]).
const CLAIM: &[u8] = br#"
local h = redis.call('GET', KEYS[1])
if not h then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('DEL', KEYS[2])
  h = ARGV[1]
elseif h == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if h == ARGV[1] and ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
end
return h .. '\n' .. (redis.call('GET', KEYS[2]) or '')
"#;

thread_local! {
    /// Nearest-providers questions this shard asked the home, by request id.
    static ASKED: RefCell<HashMap<u64, oneshot::Sender<Vec<Nearby>>>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
    /// On the home's shard 0: when each node (by its tag, [`node_tag`]) was last heard.
    static HEARD: RefCell<HashMap<usize, (String, Instant)>> = RefCell::new(HashMap::new());
    /// On shard 0: when this node last renewed the home's lease (`None`: not home).
    static RENEWED: Cell<Option<Instant>> = const { Cell::new(None) };
    /// On the home's shard 0: when it last heard its own heartbeat on the geo channel (its
    /// subscription works).
    static SELF_HEARD: Cell<Option<Instant>> = const { Cell::new(None) };
    /// What this shard's connections last said to the home, for re-sending to a new one.
    static MIRROR: RefCell<wire::Mirror> = RefCell::new(wire::Mirror::default());
    /// The home epoch this shard last re-sent its connections' geo state for.
    static SYNCED: RefCell<Option<String>> = const { RefCell::new(None) };
    /// A connection's geo message failed to go out since the last re-send: the next
    /// [`GeoMsg::Resync`] re-sends even for the same epoch.
    static DIRTY: Cell<bool> = const { Cell::new(false) };
    /// A re-send is under way on this shard.
    static RESYNCING: Cell<bool> = const { Cell::new(false) };
    /// [`cluster::undelivered`] when the last re-send started: a geo message published since
    /// that reached no home (none was elected yet, or it had just died) makes the next
    /// [`GeoMsg::Resync`] re-send, so a search sent before any node was home is answered once
    /// one is.
    static UNDELIVERED_SEEN: Cell<u64> = const { Cell::new(0) };
}

/// Geo goes through the geo home: clustered on Redis, with geo declared. (On NATS core there
/// is no atomic store for the lease, so pools and jobs stay per node; `beacon check` warns.)
pub fn enabled(shard: &Shard) -> bool {
    let geo = &shard.shared.proto.geo;
    (!geo.pools.is_empty() || !geo.dispatches.is_empty())
        && shard
            .shared
            .config
            .cluster
            .as_ref()
            .is_some_and(|c| c.broker == BrokerKind::Redis)
}

/// On partition 0, with the home's lease.
fn geo_channel(shard: &Shard) -> Vec<u8> {
    let prefix = cluster::keyspace(shard, None).unwrap_or_else(|| "beacon".to_owned());
    wire::geo_channel(&prefix)
}

fn send(shard: &Shard, w: &Wire) -> bool {
    let sent = cluster::publish_to(&geo_channel(shard), &w.encode());
    if !sent {
        shard.probe.broker.dropped(BrokerDrop::NoReceiver, 1);
    }
    sent
}

/// This process as the geo home knows it: the node's name and a number drawn once per
/// process, so a node restarted under the same name within [`NODE_SILENT`] is a new node to the
/// home, and the old process's providers still leave when its heartbeats stay silent.
fn incarnation(shard: &Shard) -> String {
    static DRAWN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let n = DRAWN.get_or_init(rand::random);
    let node = shard
        .shared
        .config
        .cluster
        .as_ref()
        .map_or("", |c| c.node_id.as_str());
    format!("{node}#{n:016x}")
}

/// What the lease task asks of `runtime/geo.rs`: clear a dead node's connections from every
/// shard's pools (by its tag), and clear every pool and job of this node (it stopped being
/// home: what it holds would be stale if it became home again).
pub struct Hooks {
    pub node_gone: fn(&Rc<Shard>, usize),
    pub reset: fn(&Rc<Shard>),
}

/// Starts the lease task on shard 0 (when [`enabled`]): claims or renews the home's lease,
/// sends this node's heartbeat, on the home finds nodes gone silent and advertises its epoch
/// once it hears itself, and on every node has each shard re-send its connections' geo state
/// to a home with a new epoch ([`resync`]).
pub fn start(shard: Rc<Shard>, hooks: Hooks) {
    if shard.id != 0 || !enabled(&shard) {
        return;
    }
    glommio::spawn_local(async move {
        let Some(cfg) = shard.shared.config.cluster.clone() else {
            return;
        };
        let key = wire::home_key(&cfg.keyspace(0));
        let ready_key = wire::ready_key(&cfg.keyspace(0));
        let ttl = LEASE_MS.to_string();
        let mut home = false;
        let mut renewed = Instant::now();
        let mut home_since = Instant::now();
        // The epoch this node advertises while home, and how many it has advertised.
        let mut epoch: Option<String> = None;
        let mut epochs = 0u64;
        let mut seen_epoch = String::new();
        loop {
            if home {
                let heard = SELF_HEARD.with(Cell::get).filter(|t| *t >= home_since);
                let live = heard.is_some_and(|t| t.elapsed() < SUBSCRIPTION_SILENT);
                match (&epoch, live) {
                    (None, true) => {
                        epochs += 1;
                        epoch = Some(format!("{}/{epochs}", incarnation(&shard)));
                    }
                    (Some(_), false) => epoch = None,
                    _ => {}
                }
            }
            let advertised = epoch.clone().unwrap_or_default();
            let args: [&[u8]; 8] = [
                b"EVAL",
                CLAIM,
                b"2",
                &key,
                &ready_key,
                cfg.node_id.as_bytes(),
                ttl.as_bytes(),
                advertised.as_bytes(),
            ];
            let claim = match cluster::command_text(None, &args).await {
                Ok(answer) => match wire::Claim::parse(&answer) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable geo lease answer");
                        None
                    }
                },
                Err(_) => None,
            };
            let now_home = match &claim {
                Some(c) if c.holder == cfg.node_id => {
                    renewed = Instant::now();
                    RENEWED.with(|r| r.set(Some(renewed)));
                    true
                }
                Some(_) => false,
                // Unanswered (a slow or unreachable Redis): the lease is still this node's
                // until it would have expired, so a slow answer does not drop the pools.
                None => home && renewed.elapsed() < LEASE_EXPIRY_SAFE,
            };
            if !now_home {
                RENEWED.with(|r| r.set(None));
            }
            if now_home != home {
                home = now_home;
                home_since = Instant::now();
                epoch = None;
                tracing::info!(node = %cfg.node_id, home, "geo home");
                cluster::want_channel(home.then(|| geo_channel(&shard)));
                // A new home starts with empty pools: only what it hears from now counts.
                HEARD.with(|h| h.borrow_mut().clear());
                if !home {
                    (hooks.reset)(&shard);
                }
            }
            let alive = Wire::Alive {
                node: incarnation(&shard),
            };
            cluster::publish_to(&geo_channel(&shard), &alive.encode());
            if let Some(c) = claim.filter(|c| !c.epoch.is_empty()) {
                if c.epoch != seen_epoch {
                    tracing::info!(holder = %c.holder, epoch = %c.epoch, "geo home ready: re-sending this node's geo state");
                    seen_epoch.clone_from(&c.epoch);
                }
                // Every second, not only when the epoch changes: a shard whose re-send did
                // not go out (link down, inbox full) tries again.
                resync_all(&shard, &c.epoch);
            }
            if home {
                let now = Instant::now();
                let dead: Vec<(usize, String)> = HEARD.with(|h| {
                    let mut h = h.borrow_mut();
                    let dead: Vec<(usize, String)> = h
                        .iter()
                        .filter(|(_, (_, at))| now.duration_since(*at) > NODE_SILENT)
                        .map(|(tag, (node, _))| (*tag, node.clone()))
                        .collect();
                    for (tag, _) in &dead {
                        h.remove(tag);
                    }
                    dead
                });
                for (tag, node) in dead {
                    tracing::warn!(
                        node,
                        "node silent: its providers and searches leave the geo pools"
                    );
                    (hooks.node_gone)(&shard, tag);
                }
            }
            glommio::timer::sleep(RENEW_EVERY).await;
        }
    })
    .detach();
}

/// Asks every shard of this node to re-send its connections' geo state for `epoch`.
fn resync_all(shard: &Rc<Shard>, epoch: &str) {
    for s in 0..shard.shared.nr_shards {
        if s == shard.id {
            resync(shard, epoch);
        } else {
            let msg = GeoMsg::Resync {
                epoch: epoch.to_owned(),
            };
            // Full inbox: dropped (counted) and asked again next second.
            router::send_now(shard, s, ShardMsg::Geo(Box::new(msg)), Traffic::Geo);
        }
    }
}

/// Re-sends what this shard's connections last said to the geo home ([`wire::Mirror`]), once
/// per home epoch (again when a geo publish of this shard failed, or reached no home, since),
/// [`RESYNC_CHUNK`]
/// connections at a time so a shard with many does not flood its link.
///
/// Races, and why none of them puts a wrong entry in the new home's pools:
/// - *A live update and the re-send.* Both are published from this shard on its one publish
///   connection, and each connection's state is read from the mirror in the turn it is
///   published: Redis delivers them to the home in that order, and the home's shard 0
///   forwards them in that order to the pool's owner (one FIFO inbox). An update made before
///   the read is in what is re-sent and went out before it; one made after goes out after
///   it. A re-send never overwrites a newer update.
/// - *A connection that closes.* Its `Disconnected` takes its entry out of the mirror in the
///   turn it is published; a re-send read before that went out before it. An entry whose
///   connection is no longer on this shard is dropped, not sent.
/// - *Another home.* A re-send the old home still reads is dropped there (its lease is not
///   fresh, [`incoming`]); a home that took over meanwhile advertises a new epoch, and this
///   shard re-sends again.
/// - *Duplicates.* A home that already holds exactly what is re-sent (it heard the live
///   message) changes nothing and tells nobody ([`Sent::Again`]).
pub fn resync(shard: &Rc<Shard>, epoch: &str) {
    let lost = cluster::undelivered();
    let due = DIRTY.with(Cell::get)
        || lost != UNDELIVERED_SEEN.with(Cell::get)
        || SYNCED.with(|s| s.borrow().as_deref() != Some(epoch));
    if !due || RESYNCING.with(|r| r.replace(true)) {
        return;
    }
    // Cleared now: a geo publish that fails while this runs sets it again.
    DIRTY.with(|d| d.set(false));
    UNDELIVERED_SEEN.with(|u| u.set(lost));
    let shard = shard.clone();
    let epoch = epoch.to_owned();
    glommio::spawn_local(async move {
        let conns = MIRROR.with(|m| m.borrow().conns());
        let mut all_sent = true;
        let mut messages = 0usize;
        'chunks: for (i, chunk) in conns.chunks(RESYNC_CHUNK).enumerate() {
            if i > 0 {
                glommio::timer::sleep(RESYNC_PAUSE).await;
            }
            for &conn in chunk {
                let said = MIRROR.with(|m| {
                    let mut m = m.borrow_mut();
                    if shard.conn(conn).is_none() {
                        m.forget(conn);
                    }
                    m.said(conn)
                });
                for w in said {
                    messages += 1;
                    if !send(&shard, &Wire::Again { said: Box::new(w) }) {
                        all_sent = false;
                        break 'chunks;
                    }
                }
            }
        }
        if all_sent {
            SYNCED.with(|s| *s.borrow_mut() = Some(epoch.clone()));
        } else {
            DIRTY.with(|d| d.set(true));
        }
        RESYNCING.with(|r| r.set(false));
        tracing::debug!(
            shard = shard.id,
            epoch,
            messages,
            all_sent,
            "geo state re-sent"
        );
    })
    .detach();
}

/// The geo home's view of a connection on any node: the node's name hashed into the high bits
/// of the shard number. Only compared for equality (so a connection's end removes only what
/// it put in); a collision needs two node names with equal 48-bit FNV hashes.
fn conn_ref(from: &From) -> ConnRef {
    (
        (node_tag(&from.node) << 16) | usize::from(from.shard),
        from.conn,
    )
}

/// A node's name as the high bits of its connections' [`ConnRef`]s (48-bit FNV-1a).
pub fn node_tag(node: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h & 0xffff_ffff_ffff) as usize
}

/// Notes that `node` is alive (on the home's shard 0, which reads the geo channel).
fn heard(node: &str) {
    HEARD.with(|h| {
        h.borrow_mut()
            .insert(node_tag(node), (node.to_owned(), Instant::now()));
    });
}

/// Publishes a connection's geo effect for the home. `false`: not sent (counted).
pub fn send_effect(shard: &Shard, room: &str, conn: u64, effect: &GeoEffect) -> bool {
    let proto = &shard.shared.proto;
    let from = From {
        node: incarnation(shard),
        shard: shard.id as u16,
        conn,
        room: room.to_owned(),
    };
    let w = match effect {
        GeoEffect::Provider {
            pool,
            key,
            provider,
            change,
        } => Wire::Provider {
            from,
            pool: proto.geo.pools[*pool].name.clone(),
            key: key.clone(),
            provider: provider.clone(),
            change: match change {
                ProviderChange::Upsert { pos, sub } => wire::Provider::Upsert {
                    lat: pos.lat(),
                    lon: pos.lon(),
                    sub: sub.clone(),
                },
                ProviderChange::Deactivate => wire::Provider::Deactivate,
                ProviderChange::Disconnected => wire::Provider::Disconnected,
            },
        },
        GeoEffect::Search { pool, key, change } => Wire::Search {
            from,
            pool: proto.geo.pools[*pool].name.clone(),
            key: key.clone(),
            change: match change {
                SearchChange::Set {
                    centre,
                    radius,
                    sub,
                } => wire::Search::Set {
                    lat: centre.lat(),
                    lon: centre.lon(),
                    radius_km: radius.km(),
                    sub: sub.clone(),
                },
                SearchChange::Clear => wire::Search::Clear,
                SearchChange::Disconnected => wire::Search::Disconnected,
            },
        },
        GeoEffect::Respond {
            dispatch,
            job,
            provider,
            accepted,
            frame,
        } => Wire::Respond {
            from,
            dispatch: proto.geo.dispatches[*dispatch].name.clone(),
            job: job.clone(),
            provider: provider.clone(),
            accepted: *accepted,
            frame: wire::frame_text(frame),
        },
    };
    MIRROR.with(|m| m.borrow_mut().note(&w));
    let sent = send(shard, &w);
    if !sent {
        DIRTY.with(|d| d.set(true));
    }
    sent
}

/// Publishes a dispatch's job for the home (before its offers). `false`: not sent.
pub fn send_job(shard: &Shard, job: &GeoMsg) -> bool {
    let GeoMsg::JobCreate {
        dispatch,
        job,
        seeker_room,
        notified,
        taken,
        ttl_ms,
    } = job
    else {
        return false;
    };
    let w = Wire::JobCreate {
        dispatch: shard.shared.proto.geo.dispatches[*dispatch].name.clone(),
        job: job.clone(),
        seeker_room: seeker_room.clone(),
        notified: notified.clone(),
        taken: wire::frame_text(taken),
        ttl_ms: *ttl_ms,
    };
    send(shard, &w)
}

/// Asks the home for the nearest providers; `None` when it did not answer in time (or the
/// broker is down).
#[allow(clippy::too_many_arguments)]
pub async fn nearest(
    shard: &Shard,
    pool: usize,
    key: &str,
    centre: Position,
    radius: Radius,
    sub: Option<String>,
    max: usize,
) -> Option<Vec<Nearby>> {
    let reply = cluster::service_channel(shard)?;
    let id = NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    });
    let (tx, rx) = oneshot::channel();
    ASKED.with(|a| a.borrow_mut().insert(id, tx));
    let w = Wire::Nearest {
        id,
        reply: String::from_utf8_lossy(&reply).into_owned(),
        pool: shard.shared.proto.geo.pools[pool].name.clone(),
        key: key.to_owned(),
        lat: centre.lat(),
        lon: centre.lon(),
        radius_km: radius.km(),
        sub,
        max,
    };
    let answer = if send(shard, &w) {
        glommio::timer::timeout(ANSWER_WAIT, async { Ok(rx.await.ok()) })
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    ASKED.with(|a| a.borrow_mut().remove(&id));
    answer
}

/// The home's answer to a nearest-providers question, published to the asking shard.
pub fn answer(reply: &str, id: u64, found: &[Nearby]) {
    let w = Wire::Found {
        id,
        providers: found
            .iter()
            .map(|n| wire::Match {
                provider: n.provider.clone(),
                lat: n.pos.lat(),
                lon: n.pos.lon(),
                distance_km: n.distance_km,
                sub: n.sub.clone(),
            })
            .collect(),
    };
    cluster::publish_to(reply.as_bytes(), &w.encode());
}

/// A request that reached this node from the broker, in the terms of `runtime/geo.rs`.
pub enum Incoming {
    /// For the owner of `target` (a pool instance's or job's room name).
    ToOwner(String, GeoMsg),
    /// A nearest-providers question: `msg` for the owner of `target`; its answer goes to
    /// `reply` with `id`.
    Nearest {
        target: String,
        msg: GeoMsg,
        answer: oneshot::Receiver<Vec<Nearby>>,
        reply: String,
        id: u64,
    },
    /// Nothing more to do (an answer handed to its waiter, or something unreadable, counted).
    Done,
}

/// Reads a payload from the geo channel or this shard's service channel.
pub fn incoming(shard: &Shard, payload: &[u8]) -> Incoming {
    let proto = &shard.shared.proto;
    let w = match Wire::decode(payload) {
        Ok(w) => w,
        Err(e) => {
            shard.probe.broker.dropped(BrokerDrop::BadEnvelope, 1);
            tracing::debug!(shard = shard.id, error = %e, "unreadable geo request dropped");
            return Incoming::Done;
        }
    };
    if let Wire::Alive { node } = &w {
        if *node == incarnation(shard) {
            SELF_HEARD.with(|h| h.set(Some(Instant::now())));
        }
    }
    // A home that was paused (or cut off) past its lease may read requests another node now
    // serves: until a renewal says it is still home, it leaves them (counted).
    let request = !matches!(w, Wire::Found { .. } | Wire::Alive { .. });
    let fresh = RENEWED.with(|r| r.get().is_some_and(|t| t.elapsed() < LEASE_EXPIRY_SAFE));
    if request && !fresh {
        shard.probe.broker.dropped(BrokerDrop::NoReceiver, 1);
        return Incoming::Done;
    }
    match convert(proto, w) {
        Ok(i) => i,
        Err(e) => {
            shard.probe.broker.dropped(BrokerDrop::BadEnvelope, 1);
            tracing::warn!(shard = shard.id, error = %e, "geo request for another protocol dropped");
            Incoming::Done
        }
    }
}

fn convert(proto: &Protocol, w: Wire) -> Result<Incoming, String> {
    let pool_at = |name: &str| {
        proto
            .geo
            .pools
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| format!("no geo pool `{name}`"))
    };
    let dispatch_at = |name: &str| {
        proto
            .geo
            .dispatches
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| format!("no dispatch `{name}`"))
    };
    let pos = |lat, lon| Position::new(lat, lon).map_err(|e| e.to_string());
    let radius = |km| Radius::from_km(km).map_err(|e| e.to_string());
    let conn = |from: From, effect: GeoEffect, target: String| {
        heard(&from.node);
        Incoming::ToOwner(
            target,
            GeoMsg::Conn {
                effect,
                conn: conn_ref(&from),
                room: from.room,
                sent: Sent::Live,
            },
        )
    };
    Ok(match w {
        Wire::Provider {
            from,
            pool,
            key,
            provider,
            change,
        } => {
            let pool = pool_at(&pool)?;
            let target = pool_room(proto, pool, &key);
            let change = match change {
                wire::Provider::Upsert { lat, lon, sub } => ProviderChange::Upsert {
                    pos: pos(lat, lon)?,
                    sub,
                },
                wire::Provider::Deactivate => ProviderChange::Deactivate,
                wire::Provider::Disconnected => ProviderChange::Disconnected,
            };
            let effect = GeoEffect::Provider {
                pool,
                key,
                provider,
                change,
            };
            conn(from, effect, target)
        }
        Wire::Search {
            from,
            pool,
            key,
            change,
        } => {
            let pool = pool_at(&pool)?;
            let target = pool_room(proto, pool, &key);
            let change = match change {
                wire::Search::Set {
                    lat,
                    lon,
                    radius_km,
                    sub,
                } => SearchChange::Set {
                    centre: pos(lat, lon)?,
                    radius: radius(radius_km)?,
                    sub,
                },
                wire::Search::Clear => SearchChange::Clear,
                wire::Search::Disconnected => SearchChange::Disconnected,
            };
            conn(from, GeoEffect::Search { pool, key, change }, target)
        }
        Wire::Respond {
            from,
            dispatch,
            job,
            provider,
            accepted,
            frame,
        } => {
            let dispatch = dispatch_at(&dispatch)?;
            let target = job_room(proto, dispatch, &job);
            let effect = GeoEffect::Respond {
                dispatch,
                job,
                provider,
                accepted,
                frame: Bytes::from(wire::frame_bytes(&frame)?),
            };
            conn(from, effect, target)
        }
        Wire::JobCreate {
            dispatch,
            job,
            seeker_room,
            notified,
            taken,
            ttl_ms,
        } => {
            let dispatch = dispatch_at(&dispatch)?;
            let target = job_room(proto, dispatch, &job);
            let msg = GeoMsg::JobCreate {
                dispatch,
                job,
                seeker_room,
                notified,
                taken: Bytes::from(wire::frame_bytes(&taken)?),
                ttl_ms,
            };
            Incoming::ToOwner(target, msg)
        }
        Wire::Nearest {
            id,
            reply,
            pool,
            key,
            lat,
            lon,
            radius_km,
            sub,
            max,
        } => {
            let pool = pool_at(&pool)?;
            let target = pool_room(proto, pool, &key);
            let (tx, rx) = oneshot::channel();
            let msg = GeoMsg::Nearest {
                pool,
                key,
                centre: pos(lat, lon)?,
                radius: radius(radius_km)?,
                sub,
                max,
                reply: tx,
            };
            Incoming::Nearest {
                target,
                msg,
                answer: rx,
                reply,
                id,
            }
        }
        Wire::Alive { node } => {
            heard(&node);
            Incoming::Done
        }
        Wire::Again { said } => match *said {
            w @ (Wire::Provider { .. } | Wire::Search { .. }) => match convert(proto, w)? {
                Incoming::ToOwner(
                    target,
                    GeoMsg::Conn {
                        effect, room, conn, ..
                    },
                ) => {
                    let sent = Sent::Again;
                    Incoming::ToOwner(
                        target,
                        GeoMsg::Conn {
                            effect,
                            room,
                            conn,
                            sent,
                        },
                    )
                }
                other => other,
            },
            _ => return Err("only a provider's or a search's state is sent again".into()),
        },
        Wire::Found { id, providers } => {
            let found = providers
                .into_iter()
                .map(|m| {
                    Ok(Nearby {
                        provider: m.provider,
                        pos: pos(m.lat, m.lon)?,
                        distance_km: m.distance_km,
                        sub: m.sub,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            if let Some(tx) = ASKED.with(|a| a.borrow_mut().remove(&id)) {
                let _ = tx.send(found);
            }
            Incoming::Done
        }
    })
}
