//! Geo pools, standing searches and dispatched jobs on the shards that own them, and the
//! routing of geo effects to those owners.
//!
//! A pool instance (one declared pool, one rendered key, e.g. one category) lives on
//! `owner_of("geo:<pool>:<key>")`; a job on `owner_of("job:<dispatch>:<job>")`. Connections
//! stay on the shards of their own home rooms: each geo message is one [`ShardMsg::Geo`] hop to
//! the owner (none when it is local), and the owner sends each resulting frame, encoded once,
//! to the seekers' home rooms with one [`ShardMsg::Deliver`] per target shard.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::cluster_geo;
use super::msg::{job_room, pool_room, ConnRef, GeoMsg, Nearby, Sent, ShardMsg};
use super::probe::{GeoNote, Probe};
use super::router::{self, Dest, Outbox, Traffic};
use super::shard::{Conn, Shard};
use super::shared::unix_ms;
use crate::geo::{
    Answer, GeoEvent, GeoPool, JobKey, JobTable, Match, MovedLimit, Offer, Outcome, Position,
    Radius, SubCode,
};
use crate::message::{self, Frame, GeoVars, RenderCtx};
use crate::protocol::{GeoPoolSpec, GeoSend, Protocol, ValueTemplate};
use crate::session::{self, GeoEffect, ProviderChange, SearchChange};
use crate::ws::http_error::{HttpError, HttpErrorKind};

/// Ids handed to the R-tree: a dense slot per user id (providers) or room (seekers), reused
/// after removal, with the connection that holds it. Owned by the pool's owner shard.
#[derive(Default)]
struct Slots {
    ids: HashMap<String, u32>,
    slots: Vec<Option<(String, ConnRef)>>,
    free: Vec<u32>,
}

impl Slots {
    fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    fn claim(&mut self, name: &str, owner: ConnRef) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            if let Some(slot) = self.slots[id as usize].as_mut() {
                slot.1 = owner;
            }
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[id as usize] = Some((name.to_owned(), owner));
        self.ids.insert(name.to_owned(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        self.slots
            .get(id as usize)
            .and_then(|s| s.as_ref())
            .map(|(n, _)| n.as_str())
            .unwrap_or("")
    }

    fn owner(&self, id: u32) -> Option<ConnRef> {
        self.slots
            .get(id as usize)
            .and_then(|s| s.as_ref())
            .map(|s| s.1)
    }

    fn release(&mut self, id: u32) {
        if let Some(Some((name, _))) = self.slots.get_mut(id as usize).map(Option::take) {
            self.ids.remove(&name);
            self.free.push(id);
        }
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One pool instance: its index (which also keeps the `moved` rate limits) and id mappings.
/// Owned by the shard that owns `geo:<pool>:<key>`.
#[derive(Default)]
struct PoolState {
    index: GeoPool<u32, u32>,
    providers: Slots,
    seekers: Slots,
    subs: HashMap<String, SubCode>,
    sub_names: Vec<String>,
    /// Each standing search as it was set (centre, radius, sub), by seeker id: a search
    /// re-sent to a new home that already holds it changes nothing ([`Sent::Again`]).
    search_set: HashMap<u32, (Position, Radius, Option<SubCode>)>,
}

impl PoolState {
    fn sub_code(&mut self, sub: &str) -> SubCode {
        if let Some(&c) = self.subs.get(sub) {
            return c;
        }
        let c = SubCode(self.sub_names.len() as u32);
        self.sub_names.push(sub.to_owned());
        self.subs.insert(sub.to_owned(), c);
        c
    }

    fn sub_name(&self, c: SubCode) -> &str {
        self.sub_names
            .get(c.0 as usize)
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// One pool spec's geo templates compiled for splicing. Exists on every shard.
///
/// `None` where a template is absent or needs the general renderer.
struct PoolFrames {
    entered: Option<Frame>,
    moved: Option<Frame>,
    left: Option<Frame>,
}

impl PoolFrames {
    fn compile(proto: &Protocol, spec: &GeoPoolSpec) -> Self {
        let compile = |send: &Option<GeoSend>| {
            send.as_ref()
                .and_then(|s| Frame::geo(&proto.messages[s.send], &s.with))
        };
        PoolFrames {
            entered: compile(&spec.entered),
            moved: compile(&spec.moved),
            left: compile(&spec.left),
        }
    }
}

thread_local! {
    static STATE: std::cell::OnceCell<Rc<RefCell<GeoShard>>> = const { std::cell::OnceCell::new() };
}

/// This shard's pool instances and jobs, made on first use (frames compiled then, once).
fn state(shard: &Shard) -> Rc<RefCell<GeoShard>> {
    STATE.with(|s| {
        s.get_or_init(|| Rc::new(RefCell::new(GeoShard::new(&shard.shared.proto))))
            .clone()
    })
}

/// Every pool instance and job this shard owns. One per shard thread (see [`state`]).
pub struct GeoShard {
    pools: HashMap<(usize, String), PoolState>,
    jobs: JobTable<Bytes>,
    events: Vec<GeoEvent<u32, u32>>,
    /// By pool index, compiled once from the frozen protocol.
    frames: Vec<PoolFrames>,
    /// The JSON text of the frame being spliced, reused.
    json: Vec<u8>,
}

impl GeoShard {
    pub fn new(proto: &Protocol) -> Self {
        GeoShard {
            pools: HashMap::new(),
            jobs: JobTable::new(),
            events: Vec::new(),
            frames: proto
                .geo
                .pools
                .iter()
                .map(|spec| PoolFrames::compile(proto, spec))
                .collect(),
            json: Vec::new(),
        }
    }

    /// Pool instances and providers this shard holds (for tests and metrics).
    pub fn counts(&self) -> (usize, usize) {
        (
            self.pools.len(),
            self.pools.values().map(|p| p.index.provider_count()).sum(),
        )
    }
}

/// Sends a connection's geo effect to its owner (directly when that is this shard; through
/// the broker to the geo home when clustered, `cluster_geo.rs`).
pub fn route(shard: &Rc<Shard>, conn: &Conn, effect: GeoEffect) {
    if cluster_geo::enabled(shard) {
        cluster_geo::send_effect(shard, &conn.room, conn.id, &effect);
        return;
    }
    let proto = &shard.shared.proto;
    let target = match &effect {
        GeoEffect::Provider { pool, key, .. } | GeoEffect::Search { pool, key, .. } => {
            pool_room(proto, *pool, key)
        }
        GeoEffect::Respond { dispatch, job, .. } => job_room(proto, *dispatch, job),
    };
    let msg = GeoMsg::Conn {
        effect,
        room: conn.room.to_string(),
        conn: (shard.id, conn.id),
        sent: Sent::Live,
    };
    send_to_owner(shard, &target, msg);
}

fn send_to_owner(shard: &Rc<Shard>, target: &str, msg: GeoMsg) {
    match router::dest(shard, target) {
        Dest::Here => handle(shard, msg),
        Dest::Shard(owner) => {
            router::send_now(shard, owner, ShardMsg::Geo(Box::new(msg)), Traffic::Geo);
        }
    }
}

/// A geo request or answer from another node (the broker's deliveries on the geo channel and
/// on this shard's service channel): handed to the pool's or job's owner shard here.
pub fn from_broker(shard: &Rc<Shard>, _channel: &[u8], payload: Bytes) {
    match cluster_geo::incoming(shard, &payload) {
        cluster_geo::Incoming::ToOwner(target, msg) => send_to_owner(shard, &target, msg),
        cluster_geo::Incoming::Nearest {
            target,
            msg,
            answer,
            reply,
            id,
        } => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                // Unanswered (the owner's inbox stayed full): the asker's wait runs out.
                if to_owner_waiting(&shard, &target, msg).await {
                    if let Ok(found) = answer.await {
                        cluster_geo::answer(&reply, id, &found);
                    }
                }
            })
            .detach();
        }
        cluster_geo::Incoming::Done => {}
    }
}

/// A node of the cluster died (seen by the geo home's shard 0): every shard of this node drops
/// its connections' providers (seekers hear `left`) and searches.
pub fn node_gone(shard: &Rc<Shard>, node: usize) {
    for s in 0..shard.shared.nr_shards {
        let msg = GeoMsg::NodeGone { node };
        if s == shard.id {
            handle(shard, msg);
        } else {
            router::send_now(shard, s, ShardMsg::Geo(Box::new(msg)), Traffic::Geo);
        }
    }
}

/// This node stopped being the geo home: every shard drops its pool instances and jobs (the new
/// home rebuilds them; kept here, they would be stale if this node became home again).
pub fn reset_all(shard: &Rc<Shard>) {
    for s in 0..shard.shared.nr_shards {
        if s == shard.id {
            handle(shard, GeoMsg::Reset);
        } else {
            let msg = ShardMsg::Geo(Box::new(GeoMsg::Reset));
            router::send_now(shard, s, msg, Traffic::Geo);
        }
    }
}

/// Each provider and search in this shard's pools put in by a connection of `node`, as the
/// disconnections that remove them.
fn of_node(geo: &GeoShard, node: usize) -> Vec<GeoMsg> {
    let of = |c: ConnRef| c.0 >> 16 == node;
    let mut gone = Vec::new();
    for ((pool, key), state) in &geo.pools {
        for (name, &id) in &state.providers.ids {
            if let Some(conn) = state.providers.owner(id).filter(|c| of(*c)) {
                gone.push(GeoMsg::Conn {
                    effect: GeoEffect::Provider {
                        pool: *pool,
                        key: key.clone(),
                        provider: name.clone(),
                        change: ProviderChange::Disconnected,
                    },
                    room: String::new(),
                    conn,
                    sent: Sent::Live,
                });
            }
        }
        for (room, &id) in &state.seekers.ids {
            if let Some(conn) = state.seekers.owner(id).filter(|c| of(*c)) {
                gone.push(GeoMsg::Conn {
                    effect: GeoEffect::Search {
                        pool: *pool,
                        key: key.clone(),
                        change: SearchChange::Disconnected,
                    },
                    room: room.clone(),
                    conn,
                    sent: Sent::Live,
                });
            }
        }
    }
    gone
}

/// Handles a geo request on the owner shard.
pub fn handle(shard: &Rc<Shard>, msg: GeoMsg) {
    if let GeoMsg::Reset = msg {
        let state = state(shard);
        let mut geo = state.borrow_mut();
        let (providers, searches) = geo.pools.values().fold((0, 0), |(p, s), st| {
            (
                p + st.index.provider_count() as i64,
                s + st.index.search_count() as i64,
            )
        });
        geo.pools.clear();
        geo.jobs = JobTable::new();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        shard.probe.geo_providers.fetch_sub(providers, relaxed);
        shard.probe.geo_searches.fetch_sub(searches, relaxed);
        return;
    }
    if let GeoMsg::Resync { epoch } = msg {
        cluster_geo::resync(shard, &epoch);
        return;
    }
    if let GeoMsg::NodeGone { node } = msg {
        let gone = of_node(&state(shard).borrow(), node);
        for m in gone {
            handle(shard, m);
        }
        return;
    }
    let proto = shard.shared.proto.clone();
    let now_ms = unix_ms();
    let mut out = Outbox::new(shard.shared.nr_shards);
    {
        let state = state(shard);
        let mut geo = state.borrow_mut();
        let geo = &mut *geo;
        match msg {
            GeoMsg::Conn {
                effect,
                room,
                conn,
                sent,
            } => match effect {
                GeoEffect::Provider {
                    pool,
                    key,
                    provider,
                    change,
                } => {
                    let spec = &proto.geo.pools[pool];
                    let frames = &geo.frames[pool];
                    let entry = (pool, key);
                    if sent == Sent::Again {
                        if let (Some(state), ProviderChange::Upsert { pos, sub }) =
                            (geo.pools.get(&entry), &change)
                        {
                            if holds_provider(state, &provider, conn, *pos, sub) {
                                return;
                            }
                        }
                    }
                    let mut events = std::mem::take(&mut geo.events);
                    let state = geo.pools.entry(entry.clone()).or_default();
                    let providers_before = state.index.provider_count();
                    let mut left_at = None;
                    match change {
                        ProviderChange::Upsert { pos, sub } => {
                            let id = state.providers.claim(&provider, conn);
                            let sub = state.sub_code(&sub);
                            let limit = MovedLimit {
                                now_ms,
                                min_interval_ms: spec.moved_min_interval_ms,
                            };
                            let held_back =
                                state
                                    .index
                                    .upsert_provider(id, pos, sub, limit, &mut events);
                            Probe::inc(&shard.probe.geo_updates, 1);
                            Probe::inc(&shard.probe.geo_moved_held_back, held_back as u64);
                        }
                        ProviderChange::Deactivate | ProviderChange::Disconnected => {
                            if let Some(id) = state.providers.get(&provider) {
                                let mine = state.providers.owner(id) == Some(conn);
                                if matches!(change, ProviderChange::Deactivate) || mine {
                                    left_at = state.index.provider(id).map(|(p, s)| (id, p, s));
                                    state.index.remove_provider(id, &mut events);
                                }
                            }
                        }
                    }
                    let mut splice = Splice {
                        frames,
                        json: &mut geo.json,
                    };
                    emit(
                        &proto,
                        shard,
                        spec,
                        &entry.1,
                        state,
                        &events,
                        left_at,
                        &mut splice,
                        &mut out,
                    );
                    if let Some((id, _, _)) = left_at {
                        state.providers.release(id);
                    }
                    let providers_delta =
                        state.index.provider_count() as i64 - providers_before as i64;
                    shard
                        .probe
                        .geo_providers
                        .fetch_add(providers_delta, std::sync::atomic::Ordering::Relaxed);
                    events.clear();
                    geo.events = events;
                    drop_if_empty(geo, &entry);
                }
                GeoEffect::Search { pool, key, change } => {
                    let spec = &proto.geo.pools[pool];
                    let entry = (pool, key);
                    if sent == Sent::Again {
                        if let Some(state) = geo.pools.get(&entry) {
                            if holds_search(state, &room, conn, &change) {
                                return;
                            }
                        }
                    }
                    let state = geo.pools.entry(entry.clone()).or_default();
                    let searches_before = state.index.search_count();
                    match change {
                        SearchChange::Set {
                            centre,
                            radius,
                            sub,
                        } => {
                            let id = state.seekers.claim(&room, conn);
                            let filter = sub.map(|s| state.sub_code(&s));
                            state.search_set.insert(id, (centre, radius, filter));
                            let matches = state.index.set_search(id, centre, radius, filter);
                            let frame =
                                render_nearby(&proto, shard, spec, &entry.1, state, &matches);
                            out.push(room, frame);
                        }
                        SearchChange::Clear | SearchChange::Disconnected => {
                            if let Some(id) = state.seekers.get(&room) {
                                let mine = state.seekers.owner(id) == Some(conn);
                                if matches!(change, SearchChange::Clear) || mine {
                                    state.index.clear_search(id);
                                    state.search_set.remove(&id);
                                    state.seekers.release(id);
                                }
                            }
                        }
                    }
                    let searches_delta = state.index.search_count() as i64 - searches_before as i64;
                    shard
                        .probe
                        .geo_searches
                        .fetch_add(searches_delta, std::sync::atomic::Ordering::Relaxed);
                    drop_if_empty(geo, &entry);
                }
                GeoEffect::Respond {
                    dispatch,
                    job,
                    provider,
                    accepted,
                    frame,
                } => {
                    let key = JobKey { dispatch, job };
                    let answer = if accepted {
                        Answer::Accept
                    } else {
                        Answer::Reject
                    };
                    match geo.jobs.respond(now_ms, &key, &provider, answer) {
                        Outcome::Won {
                            seeker_room,
                            taken,
                            others,
                        } => {
                            out.push(seeker_room.to_owned(), frame);
                            for r in others {
                                out.push(r.to_owned(), taken.clone());
                            }
                        }
                        Outcome::Rejected { seeker_room } => {
                            out.push(seeker_room.to_owned(), frame)
                        }
                        Outcome::AlreadyTaken { taken } => out.push(room, taken.clone()),
                        Outcome::NotOffered | Outcome::Unknown => {}
                    }
                }
            },
            GeoMsg::Nearest {
                pool,
                key,
                centre,
                radius,
                sub,
                max,
                reply,
            } => {
                let found = match geo.pools.get_mut(&(pool, key)) {
                    None => Vec::new(),
                    Some(state) => {
                        let filter = match sub {
                            None => None,
                            Some(s) => match state.subs.get(&s) {
                                Some(c) => Some(*c),
                                // No provider ever had it, so nobody matches.
                                None => {
                                    let _ = reply.send(Vec::new());
                                    return;
                                }
                            },
                        };
                        state
                            .index
                            .nearest(centre, radius, filter, max)
                            .into_iter()
                            .map(|m| Nearby {
                                provider: state.providers.name(m.provider).to_owned(),
                                pos: m.pos,
                                distance_km: m.distance_km,
                                sub: state.sub_name(m.sub).to_owned(),
                            })
                            .collect()
                    }
                };
                let _ = reply.send(found);
            }
            GeoMsg::NodeGone { .. } | GeoMsg::Reset | GeoMsg::Resync { .. } => {}
            GeoMsg::JobCreate {
                dispatch,
                job,
                seeker_room,
                notified,
                taken,
                ttl_ms,
            } => {
                let offer = Offer {
                    seeker_room,
                    notified,
                    taken,
                };
                geo.jobs
                    .create(now_ms, JobKey { dispatch, job }, offer, ttl_ms);
            }
        }
    }
    out.flush(shard, Traffic::GeoFrames);
}

/// Whether the pool holds `provider` from `conn` at `pos` with `sub`: a re-sent status update
/// ([`Sent::Again`]) then changes nothing.
fn holds_provider(
    state: &PoolState,
    provider: &str,
    conn: ConnRef,
    pos: Position,
    sub: &str,
) -> bool {
    state.providers.get(provider).is_some_and(|id| {
        state.providers.owner(id) == Some(conn)
            && state.index.provider(id).is_some_and(|(p, s)| {
                p.lat() == pos.lat() && p.lon() == pos.lon() && state.subs.get(sub) == Some(&s)
            })
    })
}

/// Whether the pool holds `room`'s search from `conn` as `change` sets it: a re-sent search
/// ([`Sent::Again`]) then changes nothing (the seeker is not answered again).
fn holds_search(state: &PoolState, room: &str, conn: ConnRef, change: &SearchChange) -> bool {
    let SearchChange::Set {
        centre,
        radius,
        sub,
    } = change
    else {
        return false;
    };
    state.seekers.get(room).is_some_and(|id| {
        state.seekers.owner(id) == Some(conn)
            && state.search_set.get(&id).is_some_and(|(c, r, f)| {
                let filter = sub.as_ref().map(|s| state.subs.get(s).copied());
                c.lat() == centre.lat()
                    && c.lon() == centre.lon()
                    && r.km() == radius.km()
                    && match (f, filter) {
                        (None, None) => true,
                        (Some(f), Some(Some(g))) => *f == g,
                        _ => false,
                    }
            })
    })
}

fn drop_if_empty(geo: &mut GeoShard, entry: &(usize, String)) {
    if geo
        .pools
        .get(entry)
        .is_some_and(|s| s.providers.is_empty() && s.seekers.is_empty())
    {
        geo.pools.remove(entry);
    }
}

fn render(
    proto: &Protocol,
    shard: &Shard,
    send: usize,
    with: &[(String, ValueTemplate)],
    inbound: Option<&Map<String, Value>>,
    geo: Option<&GeoVars<'_>>,
) -> Map<String, Value> {
    let mut ids = shard.ids.borrow_mut();
    let mut next = || ids.next_id();
    let mut ctx = RenderCtx {
        params: &[],
        param_names: &[],
        claims: None,
        user_id: None,
        inbound: inbound.map(|m| m as &dyn message::Fields),
        now_ms: unix_ms(),
        next_id: &mut next,
        geo,
        minted: None,
    };
    message::build(&proto.messages[send], None, with, &mut ctx)
}

fn render_send(
    proto: &Protocol,
    shard: &Shard,
    s: &GeoSend,
    inbound: Option<&Map<String, Value>>,
    geo: Option<&GeoVars<'_>>,
) -> Bytes {
    session::encode(&render(proto, shard, s.send, &s.with, inbound, geo))
}

fn render_nearby(
    proto: &Protocol,
    shard: &Shard,
    spec: &GeoPoolSpec,
    pool_key: &str,
    state: &PoolState,
    matches: &[Match<u32>],
) -> Bytes {
    let list = &spec.nearby;
    let items: Vec<Value> = matches
        .iter()
        .map(|m| {
            let vars = GeoVars {
                provider_id: state.providers.name(m.provider),
                latitude: m.pos.lat(),
                longitude: m.pos.lon(),
                distance_km: m.distance_km,
                pool_key,
                sub: state.sub_name(m.sub),
            };
            let mut ids = shard.ids.borrow_mut();
            let mut next = || ids.next_id();
            let mut ctx = RenderCtx {
                params: &[],
                param_names: &[],
                claims: None,
                user_id: None,
                inbound: None,
                now_ms: unix_ms(),
                next_id: &mut next,
                geo: Some(&vars),
                minted: None,
            };
            let mut o = Map::new();
            for (k, t) in &list.item {
                let v = ctx.value(t);
                o.insert(k.clone(), v);
            }
            Value::Object(o)
        })
        .collect();
    let mut obj = render(proto, shard, list.send, &list.with, None, None);
    obj.insert(list.list.clone(), Value::Array(items));
    session::encode(&obj)
}

/// Borrows of the compiled templates and the splice buffer, for one update. Owned by its shard.
struct Splice<'a> {
    frames: &'a PoolFrames,
    json: &'a mut Vec<u8>,
}

impl Splice<'_> {
    /// The frame for `send`, spliced when `compiled` is there, else by the general renderer.
    fn frame(
        &mut self,
        compiled: Option<&Frame>,
        proto: &Protocol,
        shard: &Shard,
        send: &GeoSend,
        vars: &GeoVars<'_>,
    ) -> Bytes {
        match compiled {
            Some(f) => {
                self.json.clear();
                f.render_geo(vars, self.json);
                crate::ws::codec::text_frame(self.json)
            }
            None => render_send(proto, shard, send, None, Some(vars)),
        }
    }
}

/// Turns index events into frames for the seekers' rooms. `left_at` is the removed provider's
/// last (position, sub), for `left` templates.
#[allow(clippy::too_many_arguments)]
fn emit(
    proto: &Protocol,
    shard: &Shard,
    spec: &GeoPoolSpec,
    pool_key: &str,
    state: &mut PoolState,
    events: &[GeoEvent<u32, u32>],
    left_at: Option<(u32, Position, SubCode)>,
    splice: &mut Splice<'_>,
    out: &mut Outbox,
) {
    for ev in events {
        match *ev {
            GeoEvent::Entered {
                seeker,
                provider,
                pos,
                distance_km,
            }
            | GeoEvent::Moved {
                seeker,
                provider,
                pos,
                distance_km,
            } => {
                let entered = matches!(ev, GeoEvent::Entered { .. });
                let (template, compiled) = if entered {
                    (&spec.entered, splice.frames.entered.as_ref())
                } else {
                    (&spec.moved, splice.frames.moved.as_ref())
                };
                let Some(t) = template else { continue };
                let sub = state
                    .index
                    .provider(provider)
                    .map(|(_, s)| state.sub_name(s))
                    .unwrap_or("");
                let vars = GeoVars {
                    provider_id: state.providers.name(provider),
                    latitude: pos.lat(),
                    longitude: pos.lon(),
                    distance_km,
                    pool_key,
                    sub,
                };
                let frame = splice.frame(compiled, proto, shard, t, &vars);
                shard.probe.geo_notified(if entered {
                    GeoNote::Entered
                } else {
                    GeoNote::Moved
                });
                out.push(state.seekers.name(seeker).to_owned(), frame);
            }
            GeoEvent::Left { seeker, provider } => {
                let Some(t) = &spec.left else { continue };
                let (pos, sub) = match (left_at, state.index.provider(provider)) {
                    (_, Some((p, s))) => (Some(p), state.sub_name(s)),
                    (Some((id, p, s)), None) if id == provider => (Some(p), state.sub_name(s)),
                    _ => (None, ""),
                };
                let vars = GeoVars {
                    provider_id: state.providers.name(provider),
                    latitude: pos.map(Position::lat).unwrap_or(f64::NAN),
                    longitude: pos.map(Position::lon).unwrap_or(f64::NAN),
                    distance_km: f64::NAN,
                    pool_key,
                    sub,
                };
                let compiled = splice.frames.left.as_ref();
                let frame = splice.frame(compiled, proto, shard, t, &vars);
                shard.probe.geo_notified(GeoNote::Left);
                out.push(state.seekers.name(seeker).to_owned(), frame);
            }
        }
    }
}

/// `POST <dispatch path>`: offers a job to the nearest matching active providers. Returns
/// the JSON body of the 200. The caller has checked the API key.
pub async fn dispatch(shard: &Rc<Shard>, idx: usize, body: &[u8]) -> Result<Value, HttpError> {
    let proto = shard.shared.proto.clone();
    let spec = &proto.geo.dispatches[idx];
    let err = |msg: &str| Err(HttpError::new(HttpErrorKind::BadRequest, msg.to_owned()));
    let obj = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return err("body must be a JSON object"),
        Err(_) => return err("body is not valid JSON"),
    };
    if let Err(e) = message::check(&proto.messages[spec.body].schema, &obj, "") {
        return err(&e.describe());
    }
    let centre = match session::position(&obj, &spec.latitude, &spec.longitude) {
        Ok(p) => p,
        Err(e) => return err(&e),
    };
    let radius = match obj
        .get(&spec.radius_km)
        .and_then(Value::as_f64)
        .map(Radius::from_km)
    {
        Some(Ok(r)) => r,
        Some(Err(e)) => return err(&format!("{}: {e}", spec.radius_km)),
        None => return err(&format!("{}: required field is missing", spec.radius_km)),
    };
    let max = match &spec.max {
        None => 1,
        Some(f) => match obj.get(f).and_then(Value::as_u64) {
            None => 1,
            Some(n) if n >= 1 && n as usize <= spec.max_limit => n as usize,
            Some(_) => return err(&format!("{f}: must be between 1 and {}", spec.max_limit)),
        },
    };
    let sub = spec
        .sub
        .as_deref()
        .and_then(|f| session::text(&obj, f))
        .filter(|s| !s.is_empty());
    let (key, job, seeker_room) = {
        let mut never = || 0;
        let mut ctx = RenderCtx {
            params: &[],
            param_names: &[],
            claims: None,
            user_id: None,
            inbound: Some(&obj),
            now_ms: unix_ms(),
            next_id: &mut never,
            geo: None,
            minted: None,
        };
        (
            ctx.string(&spec.key),
            ctx.string(&spec.job),
            ctx.string(&spec.seeker_room),
        )
    };
    let (tx, rx) = futures::channel::oneshot::channel();
    let ask = GeoMsg::Nearest {
        pool: spec.pool,
        key: key.clone(),
        centre,
        radius,
        sub,
        max,
        reply: tx,
    };
    let clustered = cluster_geo::enabled(shard);
    let found = if clustered {
        let GeoMsg::Nearest {
            centre,
            radius,
            sub,
            ..
        } = ask
        else {
            unreachable!("built above")
        };
        let asked = cluster_geo::nearest(shard, spec.pool, &key, centre, radius, sub, max);
        let Some(found) = asked.await else {
            return Err(HttpError::new(
                HttpErrorKind::Unavailable,
                "geo home did not answer (broker down, or no node holds the geo pools yet)",
            ));
        };
        found
    } else {
        let target = pool_room(&proto, spec.pool, &key);
        if !to_owner_waiting(shard, &target, ask).await {
            return Err(HttpError::new(
                HttpErrorKind::Overloaded { retry_after_s: 1 },
                "overloaded; retry later",
            ));
        }
        let Ok(found) = rx.await else {
            return Err(HttpError::new(
                HttpErrorKind::Unavailable,
                "pool owner did not answer",
            ));
        };
        found
    };

    let mut out = Outbox::new(shard.shared.nr_shards);
    let mut notified = Vec::with_capacity(found.len());
    for n in &found {
        let vars = GeoVars {
            provider_id: &n.provider,
            latitude: n.pos.lat(),
            longitude: n.pos.lon(),
            distance_km: n.distance_km,
            pool_key: &key,
            sub: &n.sub,
        };
        let frame = render_send(&proto, shard, &spec.send, Some(&obj), Some(&vars));
        let room = {
            let mut never = || 0;
            let mut ctx = RenderCtx {
                params: &[],
                param_names: &[],
                claims: None,
                user_id: None,
                inbound: Some(&obj),
                now_ms: 0,
                next_id: &mut never,
                geo: Some(&vars),
                minted: None,
            };
            ctx.string(&spec.to)
        };
        out.push(room.clone(), frame);
        notified.push((n.provider.clone(), room));
    }
    let provider_ids: Vec<Value> = found
        .iter()
        .map(|n| message::id_value(&n.provider))
        .collect();
    let taken = render_send(&proto, shard, &spec.taken, Some(&obj), None);
    // The job exists before any provider can see the offer: the job owner's inbox is FIFO, and
    // the offer is sent after this push, so a response always finds its job.
    let create = GeoMsg::JobCreate {
        dispatch: idx,
        job: job.clone(),
        seeker_room,
        notified,
        taken,
        ttl_ms: spec.job_ttl_ms,
    };
    // Clustered: published on the geo channel before the offers, on the same connection, so
    // the home has the job before any provider sees its offer.
    let created = if clustered {
        cluster_geo::send_job(shard, &create)
    } else {
        to_owner_waiting(shard, &job_room(&proto, idx, &job), create).await
    };
    if !created {
        return Err(HttpError::new(
            HttpErrorKind::Overloaded { retry_after_s: 1 },
            "overloaded; retry later",
        ));
    }
    out.flush(shard, Traffic::GeoFrames);
    Ok(json!({"job": job, "provider_ids": provider_ids, "notified": provider_ids.len()}))
}

/// A dispatch's request for the owner of `target`, handled in place when that is this shard;
/// `false` when the owner's inbox stayed full (the dispatch answers 503).
async fn to_owner_waiting(shard: &Rc<Shard>, target: &str, msg: GeoMsg) -> bool {
    match router::dest(shard, target) {
        Dest::Here => {
            handle(shard, msg);
            true
        }
        Dest::Shard(owner) => {
            let msg = ShardMsg::Geo(Box::new(msg));
            router::send(shard, owner, msg, Traffic::Dispatch)
                .await
                .is_ok()
        }
    }
}

/// Seekers currently holding a search in some pool instance this shard owns (tests).
pub fn search_rooms(shard: &Shard) -> HashSet<String> {
    state(shard)
        .borrow()
        .pools
        .values()
        .flat_map(|p| p.seekers.ids.keys().cloned())
        .collect()
}
