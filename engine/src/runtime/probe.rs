//! Per-shard metrics. Exists on every shard: each [`Probe`] is written only by its own shard
//! (relaxed atomics, no locks, no contention) and read by whichever shard serves a scrape,
//! which sums nothing: every series carries a `shard` label.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::traffic::Traffic;
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub use crate::admission::Reason as HandshakeReject;
use crate::history::store::Held;
use crate::history::Unrecoverable;

/// A geo notification's kind, for `beacon_geo_notifications_total`. Labels are fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeoNote {
    Entered,
    Moved,
    Left,
}

impl GeoNote {
    pub const ALL: [GeoNote; 3] = [GeoNote::Entered, GeoNote::Moved, GeoNote::Left];

    pub fn label(self) -> &'static str {
        match self {
            GeoNote::Entered => "entered",
            GeoNote::Moved => "moved",
            GeoNote::Left => "left",
        }
    }
}

/// How a forwarded client message ended, for `beacon_forwards_total`. Labels are fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardResult {
    /// The backend took it (its answer, if any, was sent).
    Accepted,
    /// The backend refused it; the sender got the error it named.
    Refused,
    /// No usable answer within the timeout and retries; the sender got the declared error or
    /// close.
    Unavailable,
    /// Not sent: the shard's requests in flight or the connection's queue were at their cap;
    /// the sender got the declared error or close.
    Overloaded,
}

impl ForwardResult {
    pub const ALL: [ForwardResult; 4] = [
        ForwardResult::Accepted,
        ForwardResult::Refused,
        ForwardResult::Unavailable,
        ForwardResult::Overloaded,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ForwardResult::Accepted => "accepted",
            ForwardResult::Refused => "refused",
            ForwardResult::Unavailable => "unavailable",
            ForwardResult::Overloaded => "overloaded",
        }
    }
}

/// Why a request to publish on the broker failed, for
/// `beacon_broker_publish_failures_total`. Labels are fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerFailure {
    /// The shard had no usable broker connection when asked.
    Down,
    /// The broker did not confirm in time.
    Timeout,
    /// The connection broke while waiting, or the broker answered with an error.
    Error,
}

impl BrokerFailure {
    pub const ALL: [BrokerFailure; 3] = [
        BrokerFailure::Down,
        BrokerFailure::Timeout,
        BrokerFailure::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BrokerFailure::Down => "down",
            BrokerFailure::Timeout => "timeout",
            BrokerFailure::Error => "error",
        }
    }
}

/// Why a delivery did not take its way through the broker, for `beacon_broker_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerDrop {
    /// A broadcast (socket, `[[http]]`, presence, geo) while the broker was down: delivered to
    /// this node's members only, never to other nodes.
    LocalOnly,
    /// A broadcast written to the broker whose connection broke before it confirmed it: it may
    /// or may not have reached other nodes.
    Unconfirmed,
    /// A payload on a room channel that is not an envelope this node reads.
    BadEnvelope,
    /// A message for a room whose history lives in Redis while the broker was down: not
    /// delivered anywhere, because it could get no position (`runtime/cluster/history.rs`).
    HistoryRefused,
    /// A request for one other node (the geo home) that no node was subscribed to receive.
    NoReceiver,
}

impl BrokerDrop {
    pub const ALL: [BrokerDrop; 5] = [
        BrokerDrop::LocalOnly,
        BrokerDrop::Unconfirmed,
        BrokerDrop::BadEnvelope,
        BrokerDrop::HistoryRefused,
        BrokerDrop::NoReceiver,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BrokerDrop::LocalOnly => "local_only",
            BrokerDrop::Unconfirmed => "unconfirmed",
            BrokerDrop::BadEnvelope => "bad_envelope",
            BrokerDrop::HistoryRefused => "history_refused",
            BrokerDrop::NoReceiver => "no_receiver",
        }
    }
}

/// A decision meant to be taken across nodes in Redis that this node took alone, because
/// Redis did not answer in time (or the link was down): fail open, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerFallback {
    /// `max_connections_per_user` held per node for an upgrade.
    UserCap,
    /// A socket's presence (`on_join` / `on_leave`, the online list) decided by this node's
    /// own sockets.
    Presence,
}

impl BrokerFallback {
    pub const ALL: [BrokerFallback; 2] = [BrokerFallback::UserCap, BrokerFallback::Presence];

    pub fn label(self) -> &'static str {
        match self {
            BrokerFallback::UserCap => "user_cap",
            BrokerFallback::Presence => "presence",
        }
    }
}

/// A shard's channel-layer connections, as metrics see them. Written only by its shard
/// (`runtime/channel_layer.rs`).
#[derive(Default)]
pub struct ChannelLayerProbe {
    /// `[channel_layer]` is configured and the protocol maps groups: the series are rendered.
    pub enabled: std::sync::atomic::AtomicBool,
    /// 1 while the membership connection is up and every group is joined again.
    pub up: AtomicI64,
    pub reconnects: AtomicU64,
    /// Copies delivered, then each [`crate::channel_layer::Dropped`] reason.
    events: [AtomicU64; crate::channel_layer::Dropped::ALL.len() + 1],
}

impl ChannelLayerProbe {
    pub fn delivered(&self) {
        Probe::inc(&self.events[0], 1);
    }

    pub fn dropped(&self, why: crate::channel_layer::Dropped) {
        Probe::inc(&self.events[why as usize + 1], 1);
    }
}

/// A shard's broker connection, as metrics see it. Written only by its shard (`cluster.rs`).
#[derive(Default)]
pub struct BrokerProbe {
    /// `[cluster]` is configured: the broker series are rendered at all.
    pub enabled: std::sync::atomic::AtomicBool,
    /// 1 while every partition's link is connected and resubscribed.
    pub up: AtomicI64,
    /// Partitions whose link is connected and resubscribed.
    pub partitions_up: AtomicI64,
    pub reconnects: AtomicU64,
    pub published: AtomicU64,
    pub received: AtomicU64,
    /// Room channels subscribed now.
    pub channels: AtomicI64,
    failures: [AtomicU64; BrokerFailure::ALL.len()],
    drops: [AtomicU64; BrokerDrop::ALL.len()],
    fallbacks: [AtomicU64; BrokerFallback::ALL.len()],
}

impl BrokerProbe {
    pub fn failed(&self, why: BrokerFailure) {
        Probe::inc(&self.failures[why as usize], 1);
    }

    pub fn dropped(&self, why: BrokerDrop, n: u64) {
        Probe::inc(&self.drops[why as usize], n);
    }

    pub fn fell_back(&self, what: BrokerFallback) {
        Probe::inc(&self.fallbacks[what as usize], 1);
    }
}

/// Publish latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// One shard's counters and gauges.
pub struct Probe {
    pub shard: usize,
    pub connections: AtomicI64,
    pub opened: AtomicU64,
    /// Sorted by code: the codes the engine may send, so the label set stays fixed.
    closed: Vec<(u16, AtomicU64)>,
    /// Closes with any other code (a client's own): one `other` series, not one per code a
    /// client chooses.
    closed_other: AtomicU64,
    rejected: [AtomicU64; HandshakeReject::ALL.len()],
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// End-of-turn fan-out writes (`send`s carrying everything queued for a member).
    pub fanout_writes: AtomicU64,
    pub queue_drops: AtomicU64,
    /// Messages of each kind of traffic that did not get through a full inbox, by
    /// [`Traffic`] index.
    inbox_full: [AtomicU64; Traffic::ALL.len()],
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumers: AtomicU64,
    pub rooms: AtomicI64,
    /// Members of this shard's rooms that live on other shards (spread rooms).
    pub spread_members: AtomicI64,
    pub publishes: AtomicU64,
    pub handoffs: AtomicU64,
    /// Provider updates (moves, status and subcategory changes) applied by pools this shard
    /// owns.
    pub geo_updates: AtomicU64,
    geo_notifications: [AtomicU64; GeoNote::ALL.len()],
    /// `moved` notifications the per-pool rate limit held back.
    pub geo_moved_held_back: AtomicU64,
    /// Active providers and standing searches in pools this shard owns.
    pub geo_providers: AtomicI64,
    pub geo_searches: AtomicI64,
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    latency_count: AtomicU64,
    /// Messages that entered a room's history on this shard.
    pub history_appends: AtomicU64,
    /// Frames of latest-value rooms taken out of a member's queue, unsent, because a newer
    /// value for the same key was queued (conflation).
    pub conflated: AtomicU64,
    /// Messages (or latest values) held, and rooms with a history, on this shard.
    history_messages: AtomicI64,
    history_rooms: AtomicI64,
    /// Resumes by outcome: recovered, then each [`Unrecoverable`] in order.
    resumes: [AtomicU64; Unrecoverable::ALL.len() + 1],
    forwards: [AtomicU64; ForwardResult::ALL.len()],
    /// Retries of forwards after a timeout, a failed connection or a 5xx.
    pub forward_retries: AtomicU64,
    /// What a forward's answer addressed to its sender (the `reply`, the message's own
    /// actions, an error or unavailable notice) when the sender had left before it came.
    pub forward_sender_gone: AtomicU64,
    /// New connections to the backend (hooks and forwards); the rest reuse kept-alive ones.
    pub backend_connects: AtomicU64,
    pub broker: BrokerProbe,
    pub channel_layer: ChannelLayerProbe,
}

impl Probe {
    /// `codes`: every close code the engine may send (the protocol's plus RFC ones).
    pub fn new(shard: usize, codes: &[u16]) -> Self {
        let mut codes = codes.to_vec();
        codes.sort_unstable();
        codes.dedup();
        Probe {
            shard,
            connections: AtomicI64::new(0),
            opened: AtomicU64::new(0),
            closed: codes.into_iter().map(|c| (c, AtomicU64::new(0))).collect(),
            closed_other: AtomicU64::new(0),
            rejected: Default::default(),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            fanout_writes: AtomicU64::new(0),
            queue_drops: AtomicU64::new(0),
            inbox_full: Default::default(),
            slow_consumers: AtomicU64::new(0),
            rooms: AtomicI64::new(0),
            spread_members: AtomicI64::new(0),
            publishes: AtomicU64::new(0),
            handoffs: AtomicU64::new(0),
            geo_updates: AtomicU64::new(0),
            geo_notifications: Default::default(),
            geo_moved_held_back: AtomicU64::new(0),
            geo_providers: AtomicI64::new(0),
            geo_searches: AtomicI64::new(0),
            latency: Default::default(),
            latency_sum_ns: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            history_appends: AtomicU64::new(0),
            conflated: AtomicU64::new(0),
            history_messages: AtomicI64::new(0),
            history_rooms: AtomicI64::new(0),
            resumes: Default::default(),
            forwards: Default::default(),
            forward_retries: AtomicU64::new(0),
            forward_sender_gone: AtomicU64::new(0),
            backend_connects: AtomicU64::new(0),
            broker: BrokerProbe::default(),
            channel_layer: ChannelLayerProbe::default(),
        }
    }

    pub fn history_held(&self, held: Held) {
        self.history_messages.store(held.messages as i64, Relaxed);
        self.history_rooms.store(held.rooms as i64, Relaxed);
    }

    /// A socket came back with a position: `None` recovered, `Some(reason)` told to reload.
    /// A fresh join (`resumed(None)` is not called for it) is no resume.
    pub fn resumed(&self, outcome: Option<Option<Unrecoverable>>) {
        let i = match outcome {
            None => return,
            Some(None) => 0,
            Some(Some(r)) => 1 + r as usize,
        };
        Probe::inc(&self.resumes[i], 1);
    }

    /// A load and a store, not a locked add: only the probe's own shard writes it (see the
    /// module note), and a scrape on another shard reads a whole value either way. The hot
    /// path counts several of these per message.
    pub fn inc(c: &AtomicU64, by: u64) {
        c.store(c.load(Relaxed).wrapping_add(by), Relaxed);
    }

    pub fn closed(&self, code: u16) {
        match self.closed.binary_search_by_key(&code, |(c, _)| *c) {
            Ok(i) => self.closed[i].1.fetch_add(1, Relaxed),
            Err(_) => self.closed_other.fetch_add(1, Relaxed),
        };
    }

    /// A message of `traffic` did not get through a full inbox (dropped or given back).
    pub fn inbox_full(&self, traffic: Traffic) {
        Probe::inc(&self.inbox_full[traffic as usize], 1);
    }

    pub fn forwarded(&self, r: ForwardResult) {
        Probe::inc(&self.forwards[r as usize], 1);
    }

    pub fn geo_notified(&self, kind: GeoNote) {
        self.geo_notifications[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn rejected(&self, r: HandshakeReject) {
        self.rejected[r as usize].fetch_add(1, Relaxed);
    }

    pub fn publish_latency(&self, ns: u64) {
        let secs = ns as f64 / 1e9;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Relaxed);
        self.latency_sum_ns.fetch_add(ns, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }
}

/// Renders every shard's probe in the Prometheus text format.
pub fn render(probes: &[std::sync::Arc<Probe>], draining: bool) -> String {
    let reg = Registry::new();
    let shard_label = ["shard"];
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c =
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
        reg.register(Box::new(c.clone()))
            .expect("unique metric name");
        c
    };
    let gauge = |name: &str, help: &str| {
        let g = IntGaugeVec::new(Opts::new(name, help), &shard_label)
            .expect("static metric definition");
        reg.register(Box::new(g.clone()))
            .expect("unique metric name");
        g
    };
    let connections = gauge("beacon_connections", "Open WebSocket connections.");
    let rooms = gauge("beacon_rooms", "Rooms with at least one member.");
    let spread_members = gauge(
        "beacon_spread_members",
        "Members of rooms this shard owns that live on other shards (rooms spread over shards).",
    );
    let opened = counter(
        "beacon_connections_opened_total",
        "WebSocket connections admitted.",
        &shard_label,
    );
    let closed = counter(
        "beacon_connections_closed_total",
        "WebSocket connections closed, by close code.",
        &["shard", "code"],
    );
    let rejected = counter(
        "beacon_handshakes_rejected_total",
        "Upgrade requests refused, by reason.",
        &["shard", "reason"],
    );
    let msg_in = counter(
        "beacon_messages_received_total",
        "WebSocket messages received from clients.",
        &shard_label,
    );
    let bytes_in = counter(
        "beacon_received_bytes_total",
        "Payload bytes received from clients.",
        &shard_label,
    );
    let msg_out = counter(
        "beacon_messages_sent_total",
        "WebSocket frames queued to clients.",
        &shard_label,
    );
    let bytes_out = counter(
        "beacon_sent_bytes_total",
        "Bytes written to client sockets.",
        &shard_label,
    );
    let fanout_writes = counter(
        "beacon_fanout_writes_total",
        "End-of-turn fan-out writes: one send per member with everything queued for it since its last.",
        &shard_label,
    );
    let drops = counter(
        "beacon_queue_drops_total",
        "Frames dropped because a client's queue was full (the client is closed as a slow consumer), and pongs not queued for the same reason.",
        &shard_label,
    );
    let inbox_full = counter(
        "beacon_inbox_full_total",
        "Messages to another shard that did not get through its full inbox, by kind of traffic: dropped, or refused to the caller (ARCHITECTURE.md, the router's table).",
        &["shard", "traffic"],
    );
    let slow = counter(
        "beacon_slow_consumer_disconnects_total",
        "Connections closed because they did not read fast enough (outbound queue full).",
        &shard_label,
    );
    let publishes = counter(
        "beacon_publishes_total",
        "Messages accepted by the publish API.",
        &shard_label,
    );
    let handoffs = counter(
        "beacon_handoffs_total",
        "Sockets handed to another shard after the handshake.",
        &shard_label,
    );
    let geo_updates = counter(
        "beacon_geo_updates_total",
        "Provider updates applied by the geo pools this shard owns.",
        &shard_label,
    );
    let geo_notifications = counter(
        "beacon_geo_notifications_total",
        "Geo notification frames rendered for seekers, by kind.",
        &["shard", "kind"],
    );
    let geo_held_back = counter(
        "beacon_geo_moved_held_back_total",
        "Provider moves not sent to a seeker because of the pool's moved_min_interval_ms.",
        &shard_label,
    );
    let geo_providers = gauge(
        "beacon_geo_providers",
        "Active providers in the geo pools this shard owns.",
    );
    let geo_searches = gauge(
        "beacon_geo_searches",
        "Standing searches in the geo pools this shard owns.",
    );
    let history_appends = counter(
        "beacon_history_appends_total",
        "Messages that entered a room's history (stamped with a position).",
        &shard_label,
    );
    let conflated = counter(
        "beacon_conflated_total",
        "Frames of latest-value rooms replaced, unsent, in a member's queue by a newer value for the same key.",
        &shard_label,
    );
    let history_messages = gauge(
        "beacon_history_messages",
        "Messages (or latest values) held in room histories on this shard.",
    );
    let history_rooms = gauge(
        "beacon_history_rooms",
        "Rooms with a history on this shard.",
    );
    let resumes = counter(
        "beacon_resumes_total",
        "Sockets that came back with a position, by outcome: recovered, or the reason they were told to reload.",
        &["shard", "outcome"],
    );
    let forwards = counter(
        "beacon_forwards_total",
        "Client messages handed to the backend (forward_to), by how they ended: accepted, refused by the backend, unavailable (timeout, failed connection, 5xx after retries) or overloaded (not sent: too many requests in flight on the shard or queued on the connection).",
        &["shard", "result"],
    );
    let forward_retries = counter(
        "beacon_forward_retries_total",
        "Forward attempts repeated after a timeout, a failed connection or a 5xx.",
        &shard_label,
    );
    let forward_sender_gone = counter(
        "beacon_forward_sender_gone_total",
        "Replies, actions and error notices of forwarded messages not carried out because their sender left before the backend answered (the answer's broadcast still goes to the room).",
        &shard_label,
    );
    let backend_connects = counter(
        "beacon_backend_connections_opened_total",
        "Connections opened to the app backend by hooks and forwards (the others reuse kept-alive ones).",
        &shard_label,
    );
    let ready = GaugeVec::new(
        Opts::new(
            "beacon_ready",
            "1 while accepting connections, 0 while draining.",
        ),
        &[],
    )
    .expect("static metric definition");
    reg.register(Box::new(ready.clone()))
        .expect("unique metric name");
    ready
        .with_label_values(&[] as &[&str])
        .set(if draining { 0.0 } else { 1.0 });

    for p in probes {
        let s = p.shard.to_string();
        let l = [s.as_str()];
        connections
            .with_label_values(&l)
            .set(p.connections.load(Relaxed));
        rooms.with_label_values(&l).set(p.rooms.load(Relaxed));
        spread_members
            .with_label_values(&l)
            .set(p.spread_members.load(Relaxed));
        opened.with_label_values(&l).inc_by(p.opened.load(Relaxed));
        for (code, n) in &p.closed {
            closed
                .with_label_values(&[s.as_str(), &code.to_string()])
                .inc_by(n.load(Relaxed));
        }
        closed
            .with_label_values(&[s.as_str(), "other"])
            .inc_by(p.closed_other.load(Relaxed));
        for r in HandshakeReject::ALL {
            rejected
                .with_label_values(&[s.as_str(), r.label()])
                .inc_by(p.rejected[r as usize].load(Relaxed));
        }
        msg_in
            .with_label_values(&l)
            .inc_by(p.messages_in.load(Relaxed));
        bytes_in
            .with_label_values(&l)
            .inc_by(p.bytes_in.load(Relaxed));
        msg_out
            .with_label_values(&l)
            .inc_by(p.messages_out.load(Relaxed));
        bytes_out
            .with_label_values(&l)
            .inc_by(p.bytes_out.load(Relaxed));
        fanout_writes
            .with_label_values(&l)
            .inc_by(p.fanout_writes.load(Relaxed));
        drops
            .with_label_values(&l)
            .inc_by(p.queue_drops.load(Relaxed));
        for t in Traffic::ALL {
            inbox_full
                .with_label_values(&[s.as_str(), t.label()])
                .inc_by(p.inbox_full[t as usize].load(Relaxed));
        }
        slow.with_label_values(&l)
            .inc_by(p.slow_consumers.load(Relaxed));
        publishes
            .with_label_values(&l)
            .inc_by(p.publishes.load(Relaxed));
        handoffs
            .with_label_values(&l)
            .inc_by(p.handoffs.load(Relaxed));
        geo_updates
            .with_label_values(&l)
            .inc_by(p.geo_updates.load(Relaxed));
        for kind in GeoNote::ALL {
            geo_notifications
                .with_label_values(&[s.as_str(), kind.label()])
                .inc_by(p.geo_notifications[kind as usize].load(Relaxed));
        }
        geo_held_back
            .with_label_values(&l)
            .inc_by(p.geo_moved_held_back.load(Relaxed));
        geo_providers
            .with_label_values(&l)
            .set(p.geo_providers.load(Relaxed));
        geo_searches
            .with_label_values(&l)
            .set(p.geo_searches.load(Relaxed));
        history_appends
            .with_label_values(&l)
            .inc_by(p.history_appends.load(Relaxed));
        conflated
            .with_label_values(&l)
            .inc_by(p.conflated.load(Relaxed));
        history_messages
            .with_label_values(&l)
            .set(p.history_messages.load(Relaxed));
        history_rooms
            .with_label_values(&l)
            .set(p.history_rooms.load(Relaxed));
        let outcomes =
            std::iter::once("recovered").chain(Unrecoverable::ALL.iter().map(|r| r.code()));
        for (i, outcome) in outcomes.enumerate() {
            resumes
                .with_label_values(&[s.as_str(), outcome])
                .inc_by(p.resumes[i].load(Relaxed));
        }
        for r in ForwardResult::ALL {
            forwards
                .with_label_values(&[s.as_str(), r.label()])
                .inc_by(p.forwards[r as usize].load(Relaxed));
        }
        forward_retries
            .with_label_values(&l)
            .inc_by(p.forward_retries.load(Relaxed));
        forward_sender_gone
            .with_label_values(&l)
            .inc_by(p.forward_sender_gone.load(Relaxed));
        backend_connects
            .with_label_values(&l)
            .inc_by(p.backend_connects.load(Relaxed));
    }
    if probes
        .first()
        .is_some_and(|p| p.broker.enabled.load(Relaxed))
    {
        broker_metrics(&reg, probes);
    }
    if probes
        .first()
        .is_some_and(|p| p.channel_layer.enabled.load(Relaxed))
    {
        channel_layer_metrics(&reg, probes);
    }
    let mut text = String::new();
    // The histogram is rendered from our own buckets below: prometheus' Histogram only
    // observes values one by one, it cannot be loaded with bucket counts.
    let families = reg.gather();
    let enc = TextEncoder::new();
    let mut buf = Vec::new();
    if enc.encode(&families, &mut buf).is_ok() {
        text.push_str(&String::from_utf8_lossy(&buf));
    }
    text.push_str(&histogram_text(probes));
    text
}

/// The `[cluster]` series: only registered when a broker is configured, so a lone node's
/// metrics stay as they were.
fn channel_layer_metrics(reg: &Registry, probes: &[std::sync::Arc<Probe>]) {
    let up = IntGaugeVec::new(
        Opts::new(
            "beacon_channel_layer_up",
            "1 while the shard's channel-layer connection is up and its groups are joined.",
        ),
        &["shard"],
    )
    .expect("static metric");
    let reconnects = IntCounterVec::new(
        Opts::new(
            "beacon_channel_layer_reconnects_total",
            "Channel-layer connections rebuilt after a failure.",
        ),
        &["shard"],
    )
    .expect("static metric");
    let events = IntCounterVec::new(
        Opts::new(
            "beacon_channel_layer_events_total",
            "Django group_send copies read from Redis, by result: delivered, or why not (undecodable, not_ours, unknown_group, unknown_event, bad_message).",
        ),
        &["shard", "result"],
    )
    .expect("static metric");
    for m in [
        Box::new(up.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(reconnects.clone()),
        Box::new(events.clone()),
    ] {
        reg.register(m).expect("unique metric name");
    }
    let results = std::iter::once("delivered")
        .chain(crate::channel_layer::Dropped::ALL.iter().map(|d| d.label()));
    let results: Vec<&str> = results.collect();
    for p in probes {
        let s = p.shard.to_string();
        let c = &p.channel_layer;
        up.with_label_values(&[s.as_str()]).set(c.up.load(Relaxed));
        reconnects
            .with_label_values(&[s.as_str()])
            .inc_by(c.reconnects.load(Relaxed));
        for (i, r) in results.iter().enumerate() {
            events
                .with_label_values(&[s.as_str(), r])
                .inc_by(c.events[i].load(Relaxed));
        }
    }
}

fn broker_metrics(reg: &Registry, probes: &[std::sync::Arc<Probe>]) {
    let gauge = |name: &str, help: &str| {
        let g = IntGaugeVec::new(Opts::new(name, help), &["shard"]).expect("static metric");
        reg.register(Box::new(g.clone()))
            .expect("unique metric name");
        g
    };
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
        reg.register(Box::new(c.clone()))
            .expect("unique metric name");
        c
    };
    let up = gauge(
        "beacon_broker_up",
        "1 while the shard's broker connections (to every partition) are up and every room channel is subscribed.",
    );
    let partitions_up = gauge(
        "beacon_broker_partitions_up",
        "Broker partitions (Redis instances, or Redis Cluster partitions) the shard's links to are up.",
    );
    let channels = gauge(
        "beacon_broker_channels",
        "Room channels the shard subscribes to (rooms it owns with members on this node).",
    );
    let reconnects = counter(
        "beacon_broker_reconnects_total",
        "Times the shard's serving broker link was lost (broken, unanswered, or a silent subscription caught by the liveness probe) and rebuilt.",
        &["shard"],
    );
    let published = counter(
        "beacon_broker_published_total",
        "Deliveries the broker confirmed.",
        &["shard"],
    );
    let received = counter(
        "beacon_broker_received_total",
        "Deliveries received from the broker and fanned out to this node's members.",
        &["shard"],
    );
    let failures = counter(
        "beacon_broker_publish_failures_total",
        "Publishes the broker did not confirm, by reason (a publish API request answers 503).",
        &["shard", "reason"],
    );
    let drops = counter(
        "beacon_broker_dropped_total",
        "Deliveries that did not take their way through the broker, by reason: local_only (broker down, this node's members only), unconfirmed (connection lost before the broker confirmed), bad_envelope (received, unreadable).",
        &["shard", "reason"],
    );
    let fallbacks = counter(
        "beacon_broker_fallbacks_total",
        "Cluster-wide decisions taken by this node alone because Redis did not answer in time or the link was down: user_cap (max_connections_per_user held per node), presence (on_join/on_leave and the online list from this node's sockets).",
        &["shard", "what"],
    );
    for p in probes {
        let s = p.shard.to_string();
        let l = [s.as_str()];
        let b = &p.broker;
        for w in BrokerFallback::ALL {
            fallbacks
                .with_label_values(&[s.as_str(), w.label()])
                .inc_by(b.fallbacks[w as usize].load(Relaxed));
        }
        up.with_label_values(&l).set(b.up.load(Relaxed));
        partitions_up
            .with_label_values(&l)
            .set(b.partitions_up.load(Relaxed));
        channels.with_label_values(&l).set(b.channels.load(Relaxed));
        reconnects
            .with_label_values(&l)
            .inc_by(b.reconnects.load(Relaxed));
        published
            .with_label_values(&l)
            .inc_by(b.published.load(Relaxed));
        received
            .with_label_values(&l)
            .inc_by(b.received.load(Relaxed));
        for r in BrokerFailure::ALL {
            failures
                .with_label_values(&[s.as_str(), r.label()])
                .inc_by(b.failures[r as usize].load(Relaxed));
        }
        for r in BrokerDrop::ALL {
            drops
                .with_label_values(&[s.as_str(), r.label()])
                .inc_by(b.drops[r as usize].load(Relaxed));
        }
    }
}

fn histogram_text(probes: &[std::sync::Arc<Probe>]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let name = "beacon_publish_latency_seconds";
    let _ = writeln!(out, "# HELP {name} Time from a publish request's arrival to its frames being queued on every target socket.");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for p in probes {
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cum += p.latency[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{}\",le=\"{b}\"}} {cum}",
                p.shard
            );
        }
        cum += p.latency[LATENCY_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{}\",le=\"+Inf\"}} {cum}",
            p.shard
        );
        let _ = writeln!(
            out,
            "{name}_sum{{shard=\"{}\"}} {}",
            p.shard,
            p.latency_sum_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "{name}_count{{shard=\"{}\"}} {}",
            p.shard,
            p.latency_count.load(Relaxed)
        );
    }
    out
}
