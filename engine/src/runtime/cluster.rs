//! The router's third destination: other nodes, through a broker (`[cluster]`: Redis PUB/SUB or
//! core NATS, one channel or subject per room).
//! Nothing outside the router (and the two hooks where a room gains its first or loses its
//! last member, in `conn.rs`) knows the broker exists.
//!
//! Each shard keeps its own broker link ([`Link`], two connections): a *publish* connection,
//! on which whatever this shard sends into any room is published, and a *subscribe*
//! connection, on which it subscribes to the channels of the rooms it owns (`owner_of`) while
//! they have members on this node. So:
//!
//! - **One order per room.** When clustered, a delivery is not fanned out where it starts: it
//!   is published, and every node (this one included) fans it out when it comes back from
//!   the room's channel. A channel has one order at the broker, and each node reads it on one
//!   connection (the owner shard's), so every member on every node sees the same order; one
//!   sender's messages go out on one connection, in order. No extra hop between shards: the
//!   sending shard publishes, the owning shard receives.
//! - **The envelope** ([`crate::broker::envelope`]) carries the sender (node, shard,
//!   connection) so a broadcast that excludes its sender still does when it comes back.
//! - **Subscriptions follow members.** A room's channel is subscribed when its first member on
//!   this node arrives (the upgrade's `101` waits for the broker's confirmation, so a publish
//!   made once the client sees `open` reaches it, as on one node) and unsubscribed
//!   [`UNSUBSCRIBE_DELAY`] after its last one leaves, unless one came back meanwhile.
//!   Subscribes and unsubscribes of one turn go in one command each.
//! - **Failure.** A broken connection, a broker that stops answering publishes, or a
//!   subscription that stops delivering (the shard's own liveness probe on its service channel
//!   goes unheard) rebuilds both connections. Until they are back and every room channel is
//!   resubscribed the shard reports not ready ([`Link::up`]): the publish API answers 503,
//!   broadcasts reach this node's members only (counted), sockets stay open.
//!
//! - **Partitions.** Several Redis instances, or a Redis Cluster, are partitions
//!   ([`crate::broker::partition`]): a room's channel and keys, and a user's count, live on one
//!   partition, and each shard keeps one [`Link`] per partition. On Redis Cluster a link
//!   finds its partition's master with `CLUSTER SLOTS` each time it connects, publishes with
//!   `SPUBLISH` and subscribes with `SSUBSCRIBE`; a `MOVED` answer, or a subscription the
//!   server drops (its slot moved), rebuilds the link. Channels that are not rooms' (the geo
//!   channel, answers to a shard) live on partition 0. A partition that is down takes only its
//!   own rooms down: the publish API answers 503 naming it, other rooms deliver.
//!
//! Exists on every shard (one [`Link`] per partition per shard thread when `[cluster]` is
//! configured).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::msg::UserSlot;
use super::probe::{BrokerDrop, BrokerFailure, BrokerFallback, Probe};
use super::shard::Shard;
use crate::broker::resp::{self, Pushed, Value};
use crate::broker::{envelope, nats, partition};
use crate::config::{BrokerKind, BrokerUrl, Cluster};

pub mod history;

/// How long an emptied room keeps its channel, so a member who reconnects at once (a page
/// reload) costs no unsubscribe/subscribe pair.
pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const BATCH: usize = 512;
/// A publish the broker has not confirmed within this is a failure (the API answers 503), and
/// a connection with such a publish outstanding is rebuilt.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Silence on the subscribe connection after which the shard probes its own service channel;
/// twice this without hearing anything rebuilds the link.
const PROBE_AFTER: Duration = Duration::from_secs(2);
/// Connecting, and each step of a connection's handshake, must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an upgrade waits for its room's subscription before it is admitted anyway.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// Unconfirmed publishes a shard's link holds before broadcasts go local-only (counted).
const MAX_IN_FLIGHT: usize = 64 * 1024;
/// A node's sockets count toward users' cluster-wide caps while its alive key exists: shard 0
/// refreshes it every [`ALIVE_EVERY`]; a node killed stops counting [`ALIVE_TTL_S`] later.
const ALIVE_EVERY: Duration = Duration::from_secs(5);
const ALIVE_TTL_S: &[u8] = b"15";
/// Deliveries from the broker fanned out between two end-of-turn writes.
const WRITE_EVERY: usize = 16;
/// The liveness probe's payload on a shard's own service channel.
const PROBE: &[u8] = b"probe";
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);

thread_local! {
    /// This shard's links, one per partition (empty when not clustered).
    static LINKS: RefCell<Vec<Rc<Link>>> = const { RefCell::new(Vec::new()) };
    /// Publishes for one subscriber ([`publish_to`]) that reached none, were refused, or were
    /// lost with their connection, since the shard started.
    static UNDELIVERED: Cell<u64> = const { Cell::new(0) };
}

fn undelivered_one() {
    UNDELIVERED.with(|u| u.set(u.get() + 1));
}

/// How many of this shard's publishes for one subscriber ([`publish_to`]) did not reach it, so
/// far: a caller that must make up for a lost one (the geo re-send) compares two readings.
pub fn undelivered() -> u64 {
    UNDELIVERED.with(Cell::get)
}

/// Who waits for the answer to a publish written on the publish connection.
enum Waiting {
    /// The publish API: the broker's receiver count, or why not.
    Api(oneshot::Sender<Result<i64, BrokerFailure>>),
    /// A broadcast nobody waits on.
    Fire,
    /// A command that is not a publish (the per-user cap's script): its integer answer.
    Command(oneshot::Sender<Result<i64, BrokerFailure>>),
    /// A command whose answer is a value to read (a history read, [`history`]).
    Reply(oneshot::Sender<Result<Value, BrokerFailure>>),
    /// The liveness probe on the shard's own service channel.
    Probe,
    /// A publish for one other subscriber (the geo home): no receiver means it was lost.
    ToOne,
    /// A command whose answer is text (a Lua script returning a string).
    Text(oneshot::Sender<Result<Bytes, BrokerFailure>>),
}

/// A room channel's state on its owner shard.
struct Sub {
    /// Confirmed by the broker on the current connection.
    active: bool,
    /// Written on the current connection, confirmation pending.
    sent: bool,
    /// Upgrades waiting for the confirmation.
    waiters: Vec<oneshot::Sender<()>>,
    /// The room lost its last member at this time; unsubscribed after [`UNSUBSCRIBE_DELAY`].
    empty_since: Option<Instant>,
    /// The subscription's id on a NATS connection (NATS unsubscribes by id).
    sid: u64,
}

/// One shard's broker link to one partition: the publish queue, the room subscriptions it
/// owns, and whether the connections are usable. Exists on every shard (when clustered), one
/// per partition.
pub struct Link {
    cfg: Cluster,
    /// Where this link connects: the partition's instance, or (Redis Cluster) the master
    /// serving its slot, learnt at each connect; NATS: the server tried last.
    url: RefCell<BrokerUrl>,
    shard_id: usize,
    partition: usize,
    /// The partition's key and channel prefix ([`Cluster::keyspace`]).
    prefix: String,
    /// Redis Cluster: sharded PUB/SUB.
    sharded: bool,
    /// Redis Cluster: masters learnt from `CLUSTER SLOTS`, asked after the configured seeds
    /// (so a seed list that names only a master that died still finds the promoted replica).
    learnt: RefCell<Vec<BrokerUrl>>,
    service: Vec<u8>,
    up: Cell<bool>,
    /// The link has been up since the process started. Before that (a node just started) an
    /// upgrade waits for its room's subscription like any first member, instead of starting
    /// without the broker: a client reconnecting to a restarted node would otherwise find no
    /// history to resume from and be told to reload.
    was_up: Cell<bool>,
    /// Commands for the publish connection not yet written.
    out: RefCell<Vec<u8>>,
    /// Answers expected on the publish connection, in order, with when each was asked.
    waiting: RefCell<VecDeque<(Instant, Waiting)>>,
    out_waker: Cell<Option<Waker>>,
    subs: RefCell<HashMap<String, Sub>>,
    /// Channels to unsubscribe on the current connection, with their NATS subscription ids.
    unsubs: RefCell<Vec<(String, u64)>>,
    /// Bytes for the subscribe connection besides (un)subscribes: answers to a NATS server's
    /// `PING`.
    sub_out: RefCell<Vec<u8>>,
    /// NATS confirms nothing per `SUB`: a `PING` follows each batch, and its `PONG` confirms
    /// the batch's rooms, in order.
    barriers: RefCell<VecDeque<Vec<String>>>,
    next_sid: Cell<u64>,
    sub_dirty: Cell<bool>,
    sub_waker: Cell<Option<Waker>>,
    /// Last time the subscribe connection said anything.
    heard: Cell<Instant>,
    probe_sent: Cell<bool>,
    /// One channel besides rooms and the service channel that this shard wants (the geo
    /// channel on the geo home's shard 0), and the one subscribed on the current connection.
    extra_wanted: RefCell<Option<Vec<u8>>>,
    extra_on: RefCell<Option<Vec<u8>>>,
    /// Who reads deliveries on channels that are not rooms (set by `runtime::start`).
    receiver: Cell<Option<Receiver>>,
}

/// Reads a delivery on a channel that is not a room's: the extra channel, or the shard's own
/// service channel (answers addressed to this shard).
pub type Receiver = fn(&Rc<Shard>, &[u8], Bytes);

/// The NATS subscription id of the extra channel (0 is the service channel's, rooms count up).
const EXTRA_SID: u64 = u64::MAX;

/// The link of the partition `name` (a room or a user) lives on.
fn link_for(name: &str) -> Option<Rc<Link>> {
    LINKS.with(|l| {
        let l = l.borrow();
        match l.len() {
            0 => None,
            1 => Some(l[0].clone()),
            n => Some(l[partition::index(name, n)].clone()),
        }
    })
}

/// Partition 0's link: channels that are not rooms' (the geo channel, answers to a shard),
/// and the geo home's lease.
fn home_link() -> Option<Rc<Link>> {
    LINKS.with(|l| l.borrow().first().cloned())
}

/// The broker, as `/readyz` names it: this shard's partitions that are down, or
/// the first configured.
pub fn broker_name(shard: &Shard) -> Option<String> {
    let c = shard.shared.config.cluster.as_ref()?;
    let down: Vec<String> = LINKS.with(|l| {
        l.borrow()
            .iter()
            .filter(|l| !l.up.get())
            .map(|l| l.url.borrow().shown.clone())
            .collect()
    });
    if !down.is_empty() {
        return Some(down.join(", "));
    }
    Some(
        c.urls
            .first()
            .map_or_else(|| c.broker.name().to_owned(), |u| u.shown.clone()),
    )
}

/// The key and channel prefix of the partition `name` lives on (`None`: partition 0), for
/// code that writes its own Redis scripts (`cluster_presence.rs`, `cluster_geo.rs`).
pub fn keyspace(shard: &Shard, name: Option<&str>) -> Option<String> {
    let c = shard.shared.config.cluster.as_ref()?;
    Some(c.keyspace(name.map_or(0, |n| c.partition_of(n))))
}

/// The command that publishes on a channel: `SPUBLISH` on Redis Cluster (a script publishing
/// on a room's channel must use it too).
pub fn publish_verb(shard: &Shard) -> &'static [u8] {
    match &shard.shared.config.cluster {
        Some(c) if c.redis_cluster => b"SPUBLISH",
        _ => b"PUBLISH",
    }
}

/// What `/readyz` says of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Every link of every shard is up (or not clustered).
    Ready,
    /// Some partitions are down on some shard, and every shard has at least one up: rooms
    /// elsewhere work, so the node still takes traffic (every node shares the same brokers, so
    /// taking them all out of rotation for one Redis would turn a partial outage into a whole
    /// one).
    Degraded,
    /// A shard has no partition up: this node cannot reach the broker at all.
    Down,
}

/// This node's readiness as far as the broker goes (`/readyz`).
pub fn node_readiness(shard: &Shard) -> Readiness {
    if shard.shared.config.cluster.is_none() {
        return Readiness::Ready;
    }
    let probes = &shard.shared.probes;
    if probes.iter().all(|p| p.broker.up.load(Relaxed) == 1) {
        Readiness::Ready
    } else if probes
        .iter()
        .any(|p| p.broker.partitions_up.load(Relaxed) == 0)
    {
        Readiness::Down
    } else {
        Readiness::Degraded
    }
}

/// The broker's way for a delivery nobody waits on (a socket's, `[[http]]` or presence
/// broadcast, geo frames): `true` when it was published (every node, this one included, fans it
/// out when it comes back), `false` when the caller must deliver it here itself: not clustered,
/// or the broker is down (then it reaches this node's members only, and is counted).
/// `exclude`: a connection of this shard that must not receive it.
pub fn forward(shard: &Shard, room: &str, frame: &[u8], exclude: Option<u64>) -> bool {
    // A lone node's every broadcast asks: answer without touching the thread-local.
    if shard.shared.config.cluster.is_none() {
        return false;
    }
    let Some(link) = link_for(room) else {
        return false;
    };
    // A broker that falls this far behind is as good as down for traffic nobody waits on
    // (the backlog would only grow until the link is rebuilt).
    if !link.up.get() || link.waiting.borrow().len() >= MAX_IN_FLIGHT {
        if history::refuse_local(shard, room, frame) {
            return true;
        }
        shard.probe.broker.dropped(BrokerDrop::LocalOnly, 1);
        return false;
    }
    if let Err(who) = history::publish(shard, &link, room, frame, exclude, Waiting::Fire) {
        link.publish(room, frame, exclude, who);
    }
    true
}

/// Publishes `items` for the publish API and waits for the broker to confirm each. `Ok`: per
/// item, the number of subscribed receivers (nodes with members) when the broker says (Redis),
/// `None` when it does not (NATS). `Err`: at least one was not confirmed (the earlier ones may
/// have been), with the broker (partition) that failed. A batch with a room on a partition
/// that is down is refused whole, before anything is published.
pub async fn publish(
    shard: &Shard,
    items: &[(String, Bytes)],
) -> Result<Vec<Option<i64>>, (BrokerFailure, String)> {
    let mut links = Vec::with_capacity(items.len());
    for (room, _) in items {
        let Some(link) = link_for(room) else {
            return Err((BrokerFailure::Down, String::new()));
        };
        if !link.up.get() {
            shard.probe.broker.failed(BrokerFailure::Down);
            return Err((BrokerFailure::Down, link.url.borrow().shown.clone()));
        }
        links.push(link);
    }
    let mut rxs = Vec::with_capacity(items.len());
    for ((room, frame), link) in items.iter().zip(&links) {
        let (tx, rx) = oneshot::channel();
        if let Err(who) = history::publish(shard, link, room, frame, None, Waiting::Api(tx)) {
            link.publish(room, frame, None, who);
        }
        rxs.push(rx);
    }
    let mut counts = Vec::with_capacity(rxs.len());
    let deadline = Instant::now() + PUBLISH_TIMEOUT;
    for (rx, link) in rxs.into_iter().zip(&links) {
        let left = deadline.saturating_duration_since(Instant::now());
        let failed = |why| Err((why, link.url.borrow().shown.clone()));
        match glommio::timer::timeout(left.max(Duration::from_millis(1)), async { Ok(rx.await) })
            .await
        {
            Ok(Ok(Ok(n))) => counts.push((n >= 0).then_some(n)),
            // Counted where the answer (or the broken connection) was seen.
            Ok(Ok(Err(why))) => return failed(why),
            Ok(Err(_)) => return failed(BrokerFailure::Error),
            Err(_) => {
                shard.probe.broker.failed(BrokerFailure::Timeout);
                return failed(BrokerFailure::Timeout);
            }
        }
    }
    Ok(counts)
}

/// An upgrade for `room` arrives on its owner shard: subscribes the room's channel if this is
/// its first member on this node. Returns what to wait for before admitting it (the
/// subscription's confirmation, bounded), or `None` to admit it at once.
pub fn room_wanted(room: &str) -> Option<impl std::future::Future<Output = ()>> {
    let link = link_for(room)?;
    let mut subs = link.subs.borrow_mut();
    let sub = subs.entry(room.to_owned()).or_insert_with(|| {
        link.sub_dirty.set(true);
        let sid = link.next_sid.get();
        link.next_sid.set(sid + 1);
        Sub {
            active: false,
            sent: false,
            waiters: Vec::new(),
            empty_since: None,
            sid,
        }
    });
    sub.empty_since = None;
    if sub.active || (!link.up.get() && link.was_up.get()) {
        // Down: admitted now, and subscribed with every other room when the link is back.
        drop(subs);
        link.wake_sub();
        return None;
    }
    let (tx, rx) = oneshot::channel();
    sub.waiters.push(tx);
    drop(subs);
    link.wake_sub();
    Some(async move {
        let _ = glommio::timer::timeout(SUBSCRIBE_WAIT, async { Ok(rx.await) }).await;
    })
}

/// A member of `room` left on its owner shard: if it was the room's last on this node, the
/// channel is unsubscribed after [`UNSUBSCRIBE_DELAY`].
pub fn room_left(shard: &Shard, room: &str) {
    let Some(link) = link_for(room) else {
        return;
    };
    if shard.members(room) > 0 {
        return;
    }
    let mut subs = link.subs.borrow_mut();
    if let Some(sub) = subs.get_mut(room) {
        sub.empty_since = Some(Instant::now());
    }
}

/// The Lua script behind cluster-wide `max_connections_per_user` (Redis): the user's sockets
/// are a hash of node -> count; counts of nodes whose alive key expired (killed) are dropped,
/// the rest summed; under the cap this node's count goes up by one. Returns the new total, or
/// -1 when the user is at the cap.
const ADMIT_USER: &[u8] = br#"
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if redis.call('EXISTS', ARGV[3] .. fields[i]) == 1 then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if total >= tonumber(ARGV[2]) then return -1 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], 86400)
return total + 1
"#;

/// Gives back this node's place for `user` (a [`UserSlot`]'s release, run on the shard where
/// the socket ended). Fire-and-forget: if the broker is down now, the count stays until the
/// user's key expires (a day) or this node's alive key does.
fn release_user(user: &str) {
    let Some(link) = link_for(user) else {
        return;
    };
    if link.up.get() {
        let key = link.user_key(user);
        let cmd: [&[u8]; 4] = [b"HINCRBY", &key, link.cfg.node_id.as_bytes(), b"-1"];
        link.command(&cmd, Waiting::Probe);
    }
}

/// Whether `user` may open one more socket under `max` across every node. `Ok(None)`: no
/// cluster-wide count (not clustered, no cap, a NATS broker, or the broker is down or did not
/// answer: the per-node cap still holds, counted as a fallback). `Err(())`: the user is at the
/// cap.
pub async fn admit_user(shard: &Shard, user: &str, max: usize) -> Result<Option<UserSlot>, ()> {
    let Some(link) = link_for(user) else {
        return Ok(None);
    };
    if max == 0 || link.cfg.broker != BrokerKind::Redis {
        return Ok(None);
    }
    if !link.up.get() {
        shard.probe.broker.fell_back(BrokerFallback::UserCap);
        return Ok(None);
    }
    let key = link.user_key(user);
    let alive = format!("{}.alive.", link.prefix);
    let max = max.to_string();
    let (tx, rx) = oneshot::channel();
    let cmd: [&[u8]; 7] = [
        b"EVAL",
        ADMIT_USER,
        b"1",
        &key,
        link.cfg.node_id.as_bytes(),
        max.as_bytes(),
        alive.as_bytes(),
    ];
    link.command(&cmd, Waiting::Command(tx));
    let answer = glommio::timer::timeout(PUBLISH_TIMEOUT, async { Ok(rx.await) }).await;
    match answer {
        Ok(Ok(Ok(n))) if n < 0 => Err(()),
        Ok(Ok(Ok(_))) => Ok(Some(UserSlot {
            user: user.to_owned(),
            release: release_user,
        })),
        // The broker failed to answer: fail open to the per-node cap (counted).
        _ => {
            shard.probe.broker.fell_back(BrokerFallback::UserCap);
            Ok(None)
        }
    }
}

/// The hash of a partition's node names (`keyspace`: [`Cluster::keyspace`]) that the presence
/// scripts read: every node that may hold sockets there, so they read one field per node
/// instead of every member.
pub fn nodes_key(keyspace: &str) -> Vec<u8> {
    format!("{keyspace}.nodes").into_bytes()
}

/// Sets who reads deliveries on channels that are not rooms (one reader per shard).
pub fn set_receiver(f: Receiver) {
    LINKS.with(|l| {
        for link in l.borrow().iter() {
            link.receiver.set(Some(f));
        }
    });
}

/// Subscribes this shard to one more channel (`Some`, on partition 0), or drops it (`None`); it
/// is subscribed again after every reconnect while wanted.
pub fn want_channel(channel: Option<Vec<u8>>) {
    let Some(link) = home_link() else {
        return;
    };
    if *link.extra_wanted.borrow() != channel {
        *link.extra_wanted.borrow_mut() = channel;
        link.sub_dirty.set(true);
        link.wake_sub();
    }
}

/// This shard's service channel on partition 0: answers addressed to it arrive there.
pub fn service_channel(shard: &Shard) -> Option<Vec<u8>> {
    let c = shard.shared.config.cluster.as_ref()?;
    Some(envelope::service_channel(
        &c.keyspace(0),
        &c.node_id,
        shard.id,
    ))
}

/// Publishes `payload` on a channel that is not a room's (partition 0), for one subscriber that
/// is not waited on (a request for the geo home, an answer to an asking shard). `false` when
/// the link is down; a publish nobody received is counted (`no_receiver`).
pub fn publish_to(channel: &[u8], payload: &[u8]) -> bool {
    let Some(link) = home_link() else {
        return false;
    };
    if !link.up.get() || link.waiting.borrow().len() >= MAX_IN_FLIGHT {
        return false;
    }
    link.publish_raw(channel, payload, Waiting::ToOne);
    true
}

/// Runs one Redis command whose answer is text (a Lua script returning a string) on the
/// partition of `on` (a room or user; `None`: partition 0), bounded by [`PUBLISH_TIMEOUT`].
pub async fn command_text(on: Option<&str>, args: &[&[u8]]) -> Result<Bytes, BrokerFailure> {
    let Some(link) = on.map_or_else(home_link, link_for) else {
        return Err(BrokerFailure::Down);
    };
    if !link.up.get() || link.cfg.broker != BrokerKind::Redis {
        return Err(BrokerFailure::Down);
    }
    let (tx, rx) = oneshot::channel();
    link.command(args, Waiting::Text(tx));
    match glommio::timer::timeout(PUBLISH_TIMEOUT, async { Ok(rx.await) }).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(BrokerFailure::Error),
        Err(_) => Err(BrokerFailure::Timeout),
    }
}

/// Runs one Redis command whose answer is an integer (a Lua script) on the partition of `on`
/// (`None`: partition 0), bounded by [`PUBLISH_TIMEOUT`].
pub async fn command_int(on: Option<&str>, args: &[&[u8]]) -> Result<i64, BrokerFailure> {
    let Some(link) = on.map_or_else(home_link, link_for) else {
        return Err(BrokerFailure::Down);
    };
    if !link.up.get() || link.cfg.broker != BrokerKind::Redis {
        return Err(BrokerFailure::Down);
    }
    let (tx, rx) = oneshot::channel();
    link.command(args, Waiting::Command(tx));
    match glommio::timer::timeout(PUBLISH_TIMEOUT, async { Ok(rx.await) }).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(BrokerFailure::Error),
        Err(_) => Err(BrokerFailure::Timeout),
    }
}

impl Link {
    fn user_key(&self, user: &str) -> Vec<u8> {
        [self.prefix.as_bytes(), b".conns.", user.as_bytes()].concat()
    }

    fn publish_verb(&self) -> &'static [u8] {
        if self.sharded {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        }
    }

    fn subscribe_verbs(&self) -> (&'static [u8], &'static [u8]) {
        if self.sharded {
            (b"SSUBSCRIBE", b"SUNSUBSCRIBE")
        } else {
            (b"SUBSCRIBE", b"UNSUBSCRIBE")
        }
    }

    /// Queues one Redis command on the publish connection; its answer goes to `who`.
    fn command(&self, args: &[&[u8]], who: Waiting) {
        resp::encode(&mut self.out.borrow_mut(), args);
        self.waiting.borrow_mut().push_back((Instant::now(), who));
        if let Some(w) = self.out_waker.take() {
            w.wake();
        }
    }

    fn publish(&self, room: &str, frame: &[u8], exclude: Option<u64>, who: Waiting) {
        let env = envelope::encode(
            &self.cfg.node_id,
            exclude.map(|c| (self.shard_id as u16, c)),
            frame,
        );
        let channel = self.room_channel(room);
        self.publish_raw(&channel, &env, who);
    }

    /// Queues one publish on the publish connection. Redis answers each `PUBLISH` with its
    /// receiver count; core NATS answers nothing, so a `PING` follows and its `PONG` (the
    /// server has processed everything before it) confirms.
    fn publish_raw(&self, channel: &[u8], payload: &[u8], who: Waiting) {
        let mut out = self.out.borrow_mut();
        match self.cfg.broker {
            BrokerKind::Redis => resp::encode(&mut out, &[self.publish_verb(), channel, payload]),
            BrokerKind::Nats => {
                nats::encode_pub(&mut out, channel, payload);
                out.extend_from_slice(nats::PING);
            }
        }
        drop(out);
        self.waiting.borrow_mut().push_back((Instant::now(), who));
        if let Some(w) = self.out_waker.take() {
            w.wake();
        }
    }

    fn room_channel(&self, room: &str) -> Vec<u8> {
        match self.cfg.broker {
            BrokerKind::Redis => envelope::room_channel(&self.prefix, room),
            BrokerKind::Nats => nats::room_subject(&self.prefix, room),
        }
    }

    /// The room a received channel or subject carries (`None`: the service channel).
    fn channel_room(&self, channel: &[u8]) -> Option<String> {
        match self.cfg.broker {
            BrokerKind::Redis => envelope::channel_room(&self.prefix, channel).map(str::to_owned),
            BrokerKind::Nats => nats::subject_room(&self.prefix, channel),
        }
    }

    /// Appends the subscribe connection's commands for `add` (room, sid) and `del`, and for
    /// NATS the `PING` whose `PONG` confirms `add`.
    fn encode_subscriptions(
        &self,
        out: &mut Vec<u8>,
        add: &[(String, u64)],
        del: &[(String, u64)],
    ) {
        match self.cfg.broker {
            BrokerKind::Redis => {
                let del: Vec<Vec<u8>> = del.iter().map(|(r, _)| self.room_channel(r)).collect();
                let add: Vec<Vec<u8>> = add.iter().map(|(r, _)| self.room_channel(r)).collect();
                let (sub, unsub) = self.subscribe_verbs();
                for (verb, list) in [(unsub, &del), (sub, &add)] {
                    for chunk in list.chunks(BATCH) {
                        let mut args: Vec<&[u8]> = vec![verb];
                        args.extend(chunk.iter().map(|c| c.as_slice()));
                        resp::encode(out, &args);
                    }
                }
            }
            BrokerKind::Nats => {
                for (_, sid) in del {
                    nats::encode_unsub(out, *sid);
                }
                for (room, sid) in add {
                    nats::encode_sub(out, &self.room_channel(room), *sid);
                }
                if !add.is_empty() {
                    out.extend_from_slice(nats::PING);
                    self.barriers
                        .borrow_mut()
                        .push_back(add.iter().map(|(r, _)| r.clone()).collect());
                }
            }
        }
    }

    /// Appends the (un)subscribe that brings the extra channel to what is wanted.
    fn encode_extra(&self, out: &mut Vec<u8>) {
        let wanted = self.extra_wanted.borrow();
        let mut on = self.extra_on.borrow_mut();
        if *wanted == *on {
            return;
        }
        let (sub, unsub) = self.subscribe_verbs();
        if let Some(old) = on.take() {
            match self.cfg.broker {
                BrokerKind::Redis => resp::encode(out, &[unsub, &old]),
                BrokerKind::Nats => nats::encode_unsub(out, EXTRA_SID),
            }
        }
        if let Some(ch) = wanted.as_ref() {
            match self.cfg.broker {
                BrokerKind::Redis => resp::encode(out, &[sub, ch]),
                BrokerKind::Nats => nats::encode_sub(out, ch, EXTRA_SID),
            }
        }
        on.clone_from(&wanted);
    }

    /// A room's subscription is confirmed: upgrades waiting for it go ahead.
    fn subscribed(&self, room: &str) {
        if let Some(s) = self.subs.borrow_mut().get_mut(room) {
            s.active = true;
            for w in s.waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn wake_sub(&self) {
        if let Some(w) = self.sub_waker.take() {
            w.wake();
        }
    }

    /// Fails everything waiting on a connection that is gone.
    fn fail_waiting(&self, probe: &Probe) {
        self.out.borrow_mut().clear();
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for (_, w) in waiting {
            match w {
                Waiting::Api(tx) => {
                    probe.broker.failed(BrokerFailure::Error);
                    let _ = tx.send(Err(BrokerFailure::Error));
                }
                Waiting::Fire => probe.broker.dropped(BrokerDrop::Unconfirmed, 1),
                Waiting::Command(tx) => {
                    let _ = tx.send(Err(BrokerFailure::Error));
                }
                Waiting::Reply(tx) => {
                    let _ = tx.send(Err(BrokerFailure::Error));
                }
                Waiting::Text(tx) => {
                    let _ = tx.send(Err(BrokerFailure::Error));
                }
                Waiting::ToOne => undelivered_one(),
                Waiting::Probe => {}
            }
        }
    }

    /// The shard's broker is up while every one of its partitions' links is.
    fn set_up(&self, probe: &Probe, up: bool) {
        self.up.set(up);
        self.was_up.set(self.was_up.get() || up);
        let (n, up) = LINKS.with(|l| {
            let l = l.borrow();
            (l.len(), l.iter().filter(|l| l.up.get()).count())
        });
        probe.broker.up.store((up == n) as i64, Relaxed);
        probe.broker.partitions_up.store(up as i64, Relaxed);
    }
}

/// Starts this shard's broker links, one per partition (when `[cluster]` is configured); each
/// keeps itself connected until the shard stops.
pub fn start(shard: Rc<Shard>) {
    let Some(cfg) = shard.shared.config.cluster.clone() else {
        return;
    };
    let Some(first) = cfg.urls.first().cloned() else {
        return;
    };
    shard.probe.broker.enabled.store(true, Relaxed);
    let links: Vec<Rc<Link>> = (0..cfg.partitions())
        .map(|p| {
            let prefix = cfg.keyspace(p);
            // Node ids and prefixes are plain names (config), so this is a valid NATS subject
            // too.
            let service = envelope::service_channel(&prefix, &cfg.node_id, shard.id);
            let url = match (cfg.broker, cfg.redis_cluster) {
                (BrokerKind::Redis, false) => cfg.urls[p].clone(),
                _ => first.clone(),
            };
            Rc::new(Link {
                service,
                sharded: cfg.broker == BrokerKind::Redis && cfg.redis_cluster,
                prefix,
                learnt: RefCell::new(Vec::new()),
                partition: p,
                cfg: cfg.clone(),
                url: RefCell::new(url),
                shard_id: shard.id,
                up: Cell::new(false),
                was_up: Cell::new(false),
                out: RefCell::new(Vec::new()),
                waiting: RefCell::new(VecDeque::new()),
                out_waker: Cell::new(None),
                subs: RefCell::new(HashMap::new()),
                unsubs: RefCell::new(Vec::new()),
                sub_out: RefCell::new(Vec::new()),
                barriers: RefCell::new(VecDeque::new()),
                // 0 is the service subscription's.
                next_sid: Cell::new(1),
                sub_dirty: Cell::new(false),
                sub_waker: Cell::new(None),
                heard: Cell::new(Instant::now()),
                probe_sent: Cell::new(false),
                extra_wanted: RefCell::new(None),
                extra_on: RefCell::new(None),
                receiver: Cell::new(None),
            })
        })
        .collect();
    LINKS.with(|l| *l.borrow_mut() = links.clone());
    for link in links {
        glommio::spawn_local(maintain(shard.clone(), link)).detach();
    }
}

/// Connects, serves until the connections fail, and starts over with a bounded backoff.
async fn maintain(shard: Rc<Shard>, link: Rc<Link>) {
    let mut backoff = BACKOFF_MIN;
    let mut attempts = 0u64;
    loop {
        let started = Instant::now();
        let err = serve(&shard, &link).await;
        let was_up = link.up.get();
        link.set_up(&shard.probe, false);
        link.fail_waiting(&shard.probe);
        for sub in link.subs.borrow_mut().values_mut() {
            sub.active = false;
            sub.sent = false;
        }
        link.unsubs.borrow_mut().clear();
        link.sub_out.borrow_mut().clear();
        link.barriers.borrow_mut().clear();
        *link.extra_on.borrow_mut() = None;
        count_channels(&shard);
        if was_up {
            // A link that was serving is lost: counted, and said once.
            Probe::inc(&shard.probe.broker.reconnects, 1);
            tracing::warn!(shard = shard.id, broker = %link.url.borrow().shown, error = %err, "broker link lost; reconnecting");
            attempts = 0;
        } else {
            // Still trying: said now and then, not on every attempt.
            if attempts.is_multiple_of(30) && shard.id == 0 {
                tracing::warn!(broker = %link.url.borrow().shown, error = %err, attempts, "broker unreachable; retrying");
            }
            attempts += 1;
            // Several NATS URLs are servers of one NATS cluster: try the next.
            if link.cfg.broker == BrokerKind::Nats && link.cfg.urls.len() > 1 {
                let next = link.cfg.urls[attempts as usize % link.cfg.urls.len()].clone();
                *link.url.borrow_mut() = next;
            }
        }
        if started.elapsed() > Duration::from_secs(5) {
            backoff = BACKOFF_MIN;
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// What either broker said, in the terms the link acts on.
enum Event {
    /// Redis: a `PUBLISH`'s receiver count.
    Int(i64),
    /// Redis: a text answer (a script's).
    Bulk(Bytes),
    /// The answer to our `PING` (NATS: confirms every command before it).
    Pong,
    /// The server's `PING` (NATS): answer `PONG` or be disconnected.
    Ping,
    /// The server refused something.
    Error(String),
    /// A delivery on a room's channel.
    Delivery(String, Bytes),
    /// A delivery on a channel that is not a room's (channel, payload): the shard's service
    /// channel (its liveness probe, answers for it) or the extra channel.
    Channel(Bytes, Bytes),
    /// Redis confirmed a subscription (`None`: the service channel).
    Subscribed(Option<String>),
    /// Redis ended a subscription: ours, or (Redis Cluster) one whose slot moved. `None`: a
    /// channel that is not a room's (the service channel's name is kept).
    Unsubscribed(Option<String>, Bytes),
    /// Redis: an array answering a command (a history read).
    Reply(Value),
    /// Anything the link has no use for (NATS `INFO`, `+OK`).
    Other,
}

/// Parses the next event from `buf`: `Ok(None)` when it holds only part of one.
fn next_event(link: &Link, buf: &[u8]) -> Result<Option<(Event, usize)>, String> {
    match link.cfg.broker {
        BrokerKind::Redis => {
            let Some((v, n)) = resp::parse(buf).map_err(|e| format!("protocol: {e}"))? else {
                return Ok(None);
            };
            let ev = match (&v, resp::pushed(&v)) {
                (Value::Int(i), _) => Event::Int(*i),
                (Value::Bulk(b), _) => Event::Bulk(b.clone()),
                (Value::Error(e), _) => Event::Error(String::from_utf8_lossy(e).into_owned()),
                (_, Some(Pushed::Message { channel, payload })) => {
                    match link.channel_room(channel) {
                        Some(room) => Event::Delivery(room, payload.clone()),
                        None => Event::Channel(channel.clone(), payload.clone()),
                    }
                }
                (_, Some(Pushed::Subscribed { channel, .. })) => {
                    Event::Subscribed(link.channel_room(channel))
                }
                (_, Some(Pushed::Unsubscribed { channel, .. })) => {
                    Event::Unsubscribed(link.channel_room(channel), channel.clone())
                }
                (_, Some(Pushed::Pong)) => Event::Pong,
                (Value::Array(_), None) => Event::Reply(v.clone()),
                _ => Event::Other,
            };
            Ok(Some((ev, n)))
        }
        BrokerKind::Nats => {
            let Some((op, n)) = nats::parse(buf).map_err(|e| format!("protocol: {e}"))? else {
                return Ok(None);
            };
            let ev = match op {
                nats::Op::Msg {
                    subject, payload, ..
                } => match link.channel_room(&subject) {
                    Some(room) => Event::Delivery(room, payload),
                    None => Event::Channel(subject, payload),
                },
                nats::Op::Pong => Event::Pong,
                nats::Op::Ping => Event::Ping,
                nats::Op::Err(e) => Event::Error(String::from_utf8_lossy(&e).into_owned()),
                nats::Op::Info(_) | nats::Op::Ok => Event::Other,
            };
            Ok(Some((ev, n)))
        }
    }
}

/// Sets the shard's gauge of subscribed room channels, over all its partitions.
fn count_channels(shard: &Shard) {
    let n: usize = LINKS.with(|l| {
        l.borrow()
            .iter()
            .map(|l| l.subs.borrow().values().filter(|s| s.active).count())
            .sum()
    });
    shard.probe.broker.channels.store(n as i64, Relaxed);
}

/// Reads one event, with `buf` holding bytes already read; bounded by `limit`.
async fn read_event(
    link: &Link,
    s: &mut (impl futures::AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<Event, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((ev, n)) = next_event(link, buf)? {
            buf.drain(..n);
            return Ok(ev);
        }
        let mut chunk = [0u8; 16 * 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = glommio::timer::timeout(left.max(Duration::from_millis(1)), async {
            Ok(s.read(&mut chunk).await)
        })
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the broker".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A connection with the handshake done. Redis: `AUTH` when a password is set, then `PING`.
/// NATS: the server's `INFO`, our `CONNECT` and a `PING`, answered by `PONG`.
async fn connect(link: &Link, role: &str) -> Result<(TcpStream, Vec<u8>), String> {
    let url = link.url.borrow().clone();
    let mut s = TcpStream::connect_timeout((url.host.as_str(), url.port), CONNECT_TIMEOUT)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut cmd = Vec::new();
    match link.cfg.broker {
        BrokerKind::Redis => {
            if let Some(auth) = url.redis_auth() {
                resp::encode(&mut cmd, &auth);
            }
            resp::encode(&mut cmd, &[b"PING"]);
        }
        BrokerKind::Nats => {
            let name = format!("beacon-{}-{}-{role}", link.cfg.node_id, link.shard_id);
            nats::encode_connect(
                &mut cmd,
                &name,
                url.username.as_deref(),
                url.password.as_deref(),
            );
            cmd.extend_from_slice(nats::PING);
        }
    }
    s.write_all(&cmd).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    loop {
        match read_event(link, &mut s, &mut buf, CONNECT_TIMEOUT).await? {
            Event::Error(e) => return Err(format!("broker refused: {e}")),
            Event::Pong => return Ok((s, buf)),
            // Redis answers `AUTH` with +OK (Other); NATS sends INFO first.
            _ => {}
        }
    }
}

/// Redis Cluster: the master serving the link's partition, from the first seed that answers
/// `CLUSTER SLOTS`.
async fn resolve(link: &Link) -> Result<BrokerUrl, String> {
    let slot = partition::slot(partition::tag(link.partition).as_bytes());
    let mut why = String::from("no seed");
    let mut seeds = link.cfg.urls.clone();
    for u in link.learnt.borrow().iter() {
        if !seeds.iter().any(|s| s.host == u.host && s.port == u.port) {
            seeds.push(u.clone());
        }
    }
    for seed in &seeds {
        let asked = async {
            let mut s =
                TcpStream::connect_timeout((seed.host.as_str(), seed.port), CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
            let mut cmd = Vec::new();
            if let Some(auth) = seed.redis_auth() {
                resp::encode(&mut cmd, &auth);
            }
            resp::encode(&mut cmd, &[b"CLUSTER", b"SLOTS"]);
            s.write_all(&cmd).await.map_err(|e| format!("write: {e}"))?;
            let mut buf = Vec::new();
            loop {
                match read_event(link, &mut s, &mut buf, CONNECT_TIMEOUT).await? {
                    Event::Error(e) => return Err(format!("CLUSTER SLOTS refused: {e}")),
                    Event::Reply(v) => return partition::parse_slots(&v),
                    // `+OK` to AUTH.
                    _ => {}
                }
            }
        };
        match asked.await {
            Ok(ranges) => {
                *link.learnt.borrow_mut() = ranges
                    .iter()
                    .filter(|r| !r.host.is_empty())
                    .map(|r| BrokerUrl {
                        host: r.host.clone(),
                        port: r.port,
                        username: seed.username.clone(),
                        password: seed.password.clone(),
                        shown: format!("redis://{}:{}", r.host, r.port),
                    })
                    .collect();
                let Some(m) = partition::master_for(&ranges, slot) else {
                    why = format!("{}: no master serves slot {slot}", seed.shown);
                    continue;
                };
                let host = if m.host.is_empty() {
                    seed.host.clone()
                } else {
                    m.host.clone()
                };
                return Ok(BrokerUrl {
                    shown: format!("redis://{host}:{} (slot {slot})", m.port),
                    host,
                    port: m.port,
                    username: seed.username.clone(),
                    password: seed.password.clone(),
                });
            }
            Err(e) => why = format!("{}: {e}", seed.shown),
        }
    }
    Err(format!(
        "no Redis Cluster seed told where slot {slot} is ({why})"
    ))
}

/// One life of the link: both connections, resubscription, then the five loops until one
/// fails. Returns why it ended.
async fn serve(shard: &Rc<Shard>, link: &Rc<Link>) -> String {
    match serve_inner(shard, link).await {
        Ok(()) => "ended".into(),
        Err(e) => e,
    }
}

async fn serve_inner(shard: &Rc<Shard>, link: &Rc<Link>) -> Result<(), String> {
    if link.sharded {
        let master = resolve(link).await?;
        *link.url.borrow_mut() = master;
    }
    let (publ, pbuf) = connect(link, "pub").await?;
    let (mut sub, mut sbuf) = connect(link, "sub").await?;
    // Resubscribe everything before reporting ready: the service channel, then every room
    // this shard owns with members here, in batches.
    let mut rooms = Vec::new();
    {
        let mut subs = link.subs.borrow_mut();
        subs.retain(|room, s| {
            // Rooms that emptied while the link was down are simply not resubscribed.
            s.empty_since.is_none() || shard.members(room) > 0 || !s.waiters.is_empty()
        });
        for (room, s) in subs.iter_mut() {
            s.sent = true;
            rooms.push((room.clone(), s.sid));
        }
    }
    let mut cmd = Vec::new();
    let (subscribe, _) = link.subscribe_verbs();
    let mut pending = match link.cfg.broker {
        BrokerKind::Redis => {
            resp::encode(&mut cmd, &[subscribe, &link.service]);
            rooms.len() + 1
        }
        BrokerKind::Nats => {
            nats::encode_sub(&mut cmd, &link.service, 0);
            // One barrier (PING) for the whole batch.
            1
        }
    };
    link.encode_subscriptions(&mut cmd, &rooms, &[]);
    let extra = link.extra_wanted.borrow().clone();
    if let Some(ch) = &extra {
        match link.cfg.broker {
            BrokerKind::Redis => {
                resp::encode(&mut cmd, &[subscribe, ch]);
                pending += 1;
            }
            BrokerKind::Nats => nats::encode_sub(&mut cmd, ch, EXTRA_SID),
        }
    }
    *link.extra_on.borrow_mut() = extra;
    if link.cfg.broker == BrokerKind::Nats && rooms.is_empty() {
        cmd.extend_from_slice(nats::PING);
        link.barriers.borrow_mut().push_back(Vec::new());
    }
    sub.write_all(&cmd)
        .await
        .map_err(|e| format!("write: {e}"))?;
    while pending > 0 {
        let ev = read_event(link, &mut sub, &mut sbuf, CONNECT_TIMEOUT * 2).await?;
        if matches!(
            (&ev, link.cfg.broker),
            (Event::Subscribed(_), BrokerKind::Redis) | (Event::Pong, BrokerKind::Nats)
        ) {
            pending -= 1;
        }
        on_sub_event(shard, link, ev)?;
    }
    link.heard.set(Instant::now());
    link.probe_sent.set(false);
    link.set_up(&shard.probe, true);
    tracing::info!(shard = shard.id, broker = %link.url.borrow().shown, partition = link.partition, rooms = link.subs.borrow().len(), "broker link up");

    let (pr, pw) = publ.split();
    let (sr, sw) = sub.split();
    futures::try_join!(
        pub_writer(link, pw),
        pub_reader(shard, link, pr, pbuf),
        sub_writer(shard, link, sw),
        sub_reader(shard, link, sr, sbuf),
        liveness(link),
    )?;
    Ok(())
}

async fn pub_writer(link: &Link, mut w: futures::io::WriteHalf<TcpStream>) -> Result<(), String> {
    let mut batch = Vec::new();
    loop {
        futures::future::poll_fn(|cx| {
            if link.out.borrow().is_empty() {
                link.out_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        std::mem::swap(&mut batch, &mut *link.out.borrow_mut());
        w.write_all(&batch)
            .await
            .map_err(|e| format!("write: {e}"))?;
        batch.clear();
    }
}

async fn pub_reader(
    shard: &Shard,
    link: &Link,
    mut r: futures::io::ReadHalf<TcpStream>,
    mut buf: Vec<u8>,
) -> Result<(), String> {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while let Some((ev, used)) = next_event(link, &buf)? {
            buf.drain(..used);
            if let Event::Bulk(text) = ev {
                match link.waiting.borrow_mut().pop_front() {
                    Some((_, Waiting::Text(tx))) => {
                        let _ = tx.send(Ok(text));
                    }
                    Some(_) => return Err("a text answer to a command that expects none".into()),
                    None => return Err("an answer nobody asked for".into()),
                }
                continue;
            }
            let mut reply = None;
            // The partition's slot is served elsewhere now: answer, then learn where.
            let moved = matches!(&ev, Event::Error(e) if partition::is_redirect(e));
            let answer = match (ev, link.cfg.broker) {
                (Event::Int(n), BrokerKind::Redis) => Ok(n),
                (Event::Reply(v), BrokerKind::Redis) => {
                    reply = Some(v);
                    Ok(0)
                }
                // `+OK` (the alive key's SET): answers a command, not a publish.
                (Event::Other, BrokerKind::Redis) => Ok(0),
                (Event::Pong, BrokerKind::Nats) => Ok(-1),
                (Event::Error(e), BrokerKind::Redis) => {
                    tracing::warn!(shard = shard.id, error = %e, "broker refused a publish");
                    Err(BrokerFailure::Error)
                }
                // A NATS server closes the connection after an -ERR.
                (Event::Error(e), BrokerKind::Nats) => return Err(format!("broker error: {e}")),
                (Event::Ping, _) => {
                    link.out.borrow_mut().extend_from_slice(nats::PONG);
                    if let Some(w) = link.out_waker.take() {
                        w.wake();
                    }
                    continue;
                }
                _ => continue,
            };
            let Some((_, who)) = link.waiting.borrow_mut().pop_front() else {
                return Err("an answer nobody asked for".into());
            };
            match (who, answer) {
                (Waiting::Api(tx), a) => {
                    if a.is_ok() {
                        Probe::inc(&shard.probe.broker.published, 1);
                    } else {
                        shard.probe.broker.failed(BrokerFailure::Error);
                    }
                    let _ = tx.send(a);
                }
                (Waiting::Command(tx), a) => {
                    let _ = tx.send(a);
                }
                (Waiting::Reply(tx), a) => {
                    let _ = tx.send(a.map(|_| reply.unwrap_or(Value::Null)));
                }
                (Waiting::Text(tx), a) => {
                    // An error, or a nil/integer where text was expected.
                    let _ = tx.send(a.and(Err(BrokerFailure::Error)));
                }
                (Waiting::Fire, Ok(_)) => Probe::inc(&shard.probe.broker.published, 1),
                (Waiting::Fire, Err(_)) => shard.probe.broker.failed(BrokerFailure::Error),
                (Waiting::ToOne, Ok(0)) => {
                    shard.probe.broker.dropped(BrokerDrop::NoReceiver, 1);
                    undelivered_one();
                }
                (Waiting::ToOne, Ok(_)) => Probe::inc(&shard.probe.broker.published, 1),
                (Waiting::ToOne, Err(_)) => {
                    shard.probe.broker.failed(BrokerFailure::Error);
                    undelivered_one();
                }
                (Waiting::Probe, _) => {}
            }
            if moved {
                return Err("the partition's slot moved to another master".into());
            }
        }
        let got = r.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if got == 0 {
            return Err("connection closed by the broker".into());
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// Writes this turn's subscribes and unsubscribes, and sweeps rooms empty for longer than
/// [`UNSUBSCRIBE_DELAY`].
async fn sub_writer(
    shard: &Shard,
    link: &Link,
    mut w: futures::io::WriteHalf<TcpStream>,
) -> Result<(), String> {
    let sweep = UNSUBSCRIBE_DELAY / 4;
    loop {
        let woken = futures::future::poll_fn(|cx| {
            if link.sub_dirty.replace(false) {
                Poll::Ready(())
            } else {
                link.sub_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        });
        let _ = glommio::timer::timeout(sweep, async {
            woken.await;
            Ok(())
        })
        .await;
        let now = Instant::now();
        let mut add = Vec::new();
        {
            let mut subs = link.subs.borrow_mut();
            let mut gone = Vec::new();
            for (room, s) in subs.iter_mut() {
                if !s.sent {
                    s.sent = true;
                    add.push((room.clone(), s.sid));
                } else if s.active && s.empty_since.is_none() && shard.members(room) == 0 {
                    // Its upgrade never joined (closed while waiting): treat as emptied now.
                    s.empty_since = Some(now);
                } else if s
                    .empty_since
                    .is_some_and(|t| now.duration_since(t) >= UNSUBSCRIBE_DELAY)
                    && shard.members(room) == 0
                    && s.waiters.is_empty()
                {
                    gone.push((room.clone(), s.sid));
                }
            }
            for (room, sid) in gone {
                subs.remove(&room);
                link.unsubs.borrow_mut().push((room, sid));
            }
            drop(subs);
            count_channels(shard);
        }
        let del: Vec<(String, u64)> = link.unsubs.borrow_mut().drain(..).collect();
        let mut cmd = std::mem::take(&mut *link.sub_out.borrow_mut());
        link.encode_subscriptions(&mut cmd, &add, &del);
        link.encode_extra(&mut cmd);
        if cmd.is_empty() {
            continue;
        }
        w.write_all(&cmd).await.map_err(|e| format!("write: {e}"))?;
    }
}

async fn sub_reader(
    shard: &Rc<Shard>,
    link: &Link,
    mut r: futures::io::ReadHalf<TcpStream>,
    mut buf: Vec<u8>,
) -> Result<(), String> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Every [`WRITE_EVERY`] deliveries the members' writes go out and the shard's other
        // tasks run (a member busy with its own traffic writes its queue only when its task
        // runs), so one read of many deliveries never piles up on a member's bounded queue.
        let mut n = 0;
        while let Some((ev, used)) = next_event(link, &buf)? {
            buf.drain(..used);
            on_sub_event(shard, link, ev)?;
            n += 1;
            if n % WRITE_EVERY == 0 {
                shard.write_batch();
                futures_lite::future::yield_now().await;
            }
        }
        shard.write_batch();
        let got = r.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if got == 0 {
            return Err("connection closed by the broker".into());
        }
        buf.extend_from_slice(&chunk[..got]);
        link.heard.set(Instant::now());
        link.probe_sent.set(false);
    }
}

/// What the subscribe connection received: a delivery for a room, a confirmation, a probe.
fn on_sub_event(shard: &Rc<Shard>, link: &Link, ev: Event) -> Result<(), String> {
    match ev {
        Event::Delivery(room, payload) => match envelope::decode(&payload) {
            Ok(env) => {
                // The sender may be a spread member on another shard of this node.
                let exclude = env
                    .exclude
                    .filter(|_| env.node == link.cfg.node_id.as_bytes())
                    .map(|(s, c)| (s as usize, c));
                Probe::inc(&shard.probe.broker.received, 1);
                match env.position {
                    None => {
                        shard.deliver_from(&room, &env.frame, exclude);
                    }
                    // A room whose history lives in Redis: never spread over shards
                    // (`spread::wanted`), so its members are all on this shard.
                    Some((offset, epoch)) => {
                        let at = crate::history::Position {
                            offset,
                            epoch: crate::history::Epoch(epoch),
                        };
                        let here = exclude.filter(|(s, _)| *s == shard.id).map(|(_, c)| c);
                        shard.deliver_positioned(&room, &env.frame, at, here);
                    }
                }
            }
            Err(e) => {
                shard.probe.broker.dropped(BrokerDrop::BadEnvelope, 1);
                tracing::debug!(shard = shard.id, room, error = %e, "unreadable envelope dropped");
            }
        },
        Event::Subscribed(Some(room)) => link.subscribed(&room),
        // The link never unsubscribes its service channel: its slot moved.
        Event::Unsubscribed(None, channel) if channel[..] == link.service[..] => {
            return Err(
                "the broker ended the service channel's subscription (its slot moved?)".into(),
            );
        }
        Event::Unsubscribed(Some(room), _) => {
            // Ours are for rooms no longer wanted, or wanted again and not yet confirmed.
            if link.subs.borrow().get(&room).is_some_and(|s| s.active) {
                return Err(format!(
                    "the broker ended the subscription of room {room:?} (its slot moved?)"
                ));
            }
        }
        Event::Pong if link.cfg.broker == BrokerKind::Nats => {
            if let Some(rooms) = link.barriers.borrow_mut().pop_front() {
                for room in rooms {
                    link.subscribed(&room);
                }
            }
        }
        Event::Ping => {
            link.sub_out.borrow_mut().extend_from_slice(nats::PONG);
            link.sub_dirty.set(true);
            link.wake_sub();
        }
        Event::Error(e) => return Err(format!("broker refused a subscription: {e}")),
        Event::Channel(channel, payload) => {
            // The liveness probe only needed to be heard.
            if &payload[..] != PROBE {
                if let Some(f) = link.receiver.get() {
                    f(shard, &channel, payload);
                }
            }
        }
        Event::Int(_)
        | Event::Bulk(_)
        | Event::Pong
        | Event::Subscribed(None)
        | Event::Unsubscribed(None, _)
        | Event::Reply(_)
        | Event::Other => {}
    }
    Ok(())
}

/// Detects a wedged link: a publish unanswered for [`PUBLISH_TIMEOUT`], or a subscribe
/// connection that stays silent even after a probe on the shard's own service channel.
async fn liveness(link: &Link) -> Result<(), String> {
    let mut alive_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if link.shard_id == 0
            && link.cfg.broker == BrokerKind::Redis
            && alive_at.is_none_or(|t| now.duration_since(t) >= ALIVE_EVERY)
        {
            alive_at = Some(now);
            // On every partition: the scripts that read it run on the partition of their keys.
            let key = format!("{}.alive.{}", link.prefix, link.cfg.node_id);
            let cmd: [&[u8]; 5] = [b"SET", key.as_bytes(), b"1", b"EX", ALIVE_TTL_S];
            link.command(&cmd, Waiting::Probe);
            // Back in the node hash presence reads, should a pause have had it dropped.
            let nodes = nodes_key(&link.prefix);
            let cmd: [&[u8]; 4] = [b"HSET", &nodes, link.cfg.node_id.as_bytes(), b"1"];
            link.command(&cmd, Waiting::Probe);
        }
        glommio::timer::sleep(PROBE_AFTER / 4).await;
        let now = Instant::now();
        if let Some((at, _)) = link.waiting.borrow().front() {
            if now.duration_since(*at) > PUBLISH_TIMEOUT {
                return Err("the broker stopped answering publishes".into());
            }
        }
        let silent = now.duration_since(link.heard.get());
        if silent > PROBE_AFTER * 2 {
            return Err("the subscription stopped delivering (liveness probe unheard)".into());
        }
        if silent > PROBE_AFTER && !link.probe_sent.replace(true) {
            link.publish_raw(&link.service, PROBE, Waiting::Probe);
        }
    }
}

/// Startup's check that the broker answers (blocking; run before the shards start). The error
/// is one line naming the broker.
pub fn check_reachable(cfg: &Cluster) -> Result<(), String> {
    // Separate Redis instances each hold their share of the rooms: every one must answer.
    // Seeds of a Redis Cluster, and servers of a NATS cluster, stand in for each other.
    let every = cfg.broker == BrokerKind::Redis && !cfg.redis_cluster;
    let mut last = Err("no broker URL".to_owned());
    for url in &cfg.urls {
        last = check_one(cfg, url);
        match (&last, every) {
            (Err(_), true) | (Ok(_), false) => return last,
            _ => {}
        }
    }
    last
}

fn check_one(cfg: &Cluster, url: &BrokerUrl) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    {
        let fail = |why: String| format!("broker {} unreachable: {why}", url.shown);
        let addr = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|e| fail(format!("cannot resolve: {e}")))?
            .next()
            .ok_or_else(|| fail("no address".into()))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| fail(e.to_string()))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut cmd = Vec::new();
        match cfg.broker {
            BrokerKind::Redis => {
                if let Some(auth) = url.redis_auth() {
                    resp::encode(&mut cmd, &auth);
                }
                resp::encode(&mut cmd, &[b"PING"]);
            }
            BrokerKind::Nats => {
                nats::encode_connect(
                    &mut cmd,
                    "beacon-check",
                    url.username.as_deref(),
                    url.password.as_deref(),
                );
                cmd.extend_from_slice(nats::PING);
            }
        }
        s.write_all(&cmd).map_err(|e| fail(e.to_string()))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // The answer to PING ends the check; an error before it fails it.
            let parsed = match cfg.broker {
                BrokerKind::Redis => resp::parse(&buf)
                    .map_err(|e| fail(format!("not a Redis server ({e})")))?
                    .map(|(v, n)| match v {
                        Value::Error(e) => (Some(Err(String::from_utf8_lossy(&e).into_owned())), n),
                        Value::Simple(p) if p.eq_ignore_ascii_case(b"pong") => (Some(Ok(())), n),
                        _ => (None, n),
                    }),
                BrokerKind::Nats => nats::parse(&buf)
                    .map_err(|e| fail(format!("not a NATS server ({e})")))?
                    .map(|(op, n)| match op {
                        nats::Op::Err(e) => {
                            (Some(Err(String::from_utf8_lossy(&e).into_owned())), n)
                        }
                        nats::Op::Pong => (Some(Ok(())), n),
                        _ => (None, n),
                    }),
            };
            match parsed {
                Some((Some(Ok(())), _)) => break,
                Some((Some(Err(e)), _)) => return Err(fail(e)),
                Some((None, n)) => {
                    buf.drain(..n);
                }
                None => match s.read(&mut chunk) {
                    Ok(0) => return Err(fail("closed the connection".into())),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(fail(format!("no answer to PING ({e})"))),
                },
            }
        }
    }
    Ok(())
}
