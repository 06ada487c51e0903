//! Django's channel layer, served (`[channel_layer]` in the config and in the protocol): an
//! unchanged backend's `group_send` reaches the sockets of the room its group maps to. What
//! must match channels_redis is decided in [`crate::channel_layer`]; this module only talks to
//! Redis.
//!
//! Each shard is one channels "process" with its own two connections:
//!
//! - the *membership* connection: when a room this shard owns gains its first member and maps
//!   to a group, `ZADD <prefix>:group:<group> <now> specific.<client>!<group>` and `EXPIRE`
//!   (channels_redis' own `group_add`); `ZREM` when the room empties; every membership renewed
//!   at a quarter of `group_expiry_s`, and all of them again after a reconnect;
//! - the *inbox* connection: `BZPOPMIN` on the shard's one key, one copy at a time, each
//!   delivered to the rooms it names.
//!
//! With the pubsub layer there is one connection, subscribed to each joined group's channel.
//!
//! Every copy ends counted in `beacon_channel_layer_events_total{result}`: `delivered`, or why
//! not ([`crate::channel_layer::Dropped`]). Events reach this node's members only, also on a
//! clustered node: every node joins the group with its own channel and gets its own copy.
//!
//! A connection that fails is rebuilt after a growing delay (at most 5 s); memberships and
//! subscriptions are then made again. Copies that arrive while the inbox connection is down
//! wait in Redis (channels_redis keeps them `expiry`, 60 s by default, up to `capacity`).
//!
//! Exists on every shard (one [`Layer`] per shard thread when configured).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use glommio::net::TcpStream;

use super::probe::Probe;
use super::shard::Shard;
use crate::broker::resp::{self, Pushed, Value};
use crate::channel_layer::{self as cl, Flavor, Names};
use crate::config::ChannelLayerConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Seconds one `BZPOPMIN` blocks before it is asked again, so a dead connection shows.
const POP_WAIT_S: &[u8] = b"2";

/// A change to this shard's group memberships.
enum Change {
    Join(String),
    Leave(String),
}

/// One shard's part in the channel layer. Owned by its shard.
pub struct Layer {
    cfg: ChannelLayerConfig,
    names: Names,
    /// Groups this shard is in (rooms it owns with members here), by room.
    joined: RefCell<HashMap<String, String>>,
    changes: mpsc::UnboundedSender<Change>,
}

thread_local! {
    static LAYER: RefCell<Option<Rc<Layer>>> = const { RefCell::new(None) };
}

fn layer() -> Option<Rc<Layer>> {
    LAYER.with(|l| l.borrow().clone())
}

/// Starts this shard's connections when the deployment configures a channel layer and the
/// protocol maps groups to rooms.
pub fn start(shard: Rc<Shard>) {
    let Some(cfg) = shard.shared.config.channel_layer.clone() else {
        return;
    };
    if shard.shared.proto.channel_layer.is_none() {
        return;
    }
    let (tx, rx) = mpsc::unbounded();
    let l = Rc::new(Layer {
        names: Names::new(&cfg.prefix, &cfg.client, shard.id),
        cfg,
        joined: RefCell::new(HashMap::new()),
        changes: tx,
    });
    LAYER.with(|slot| *slot.borrow_mut() = Some(l.clone()));
    shard.probe.channel_layer.enabled.store(true, Relaxed);
    glommio::spawn_local(membership(shard.clone(), l.clone(), rx)).detach();
    if l.cfg.flavor == Flavor::Core {
        glommio::spawn_local(inbox(shard, l)).detach();
    }
}

/// A socket joined `room` on its owner shard: joins the room's group when the room has one
/// and this is its first member here.
pub fn room_joined(shard: &Shard, room: &str) {
    let Some(l) = layer() else { return };
    if l.joined.borrow().contains_key(room) {
        return;
    }
    let Some(spec) = &shard.shared.proto.channel_layer else {
        return;
    };
    let Some(group) = cl::group_of(&spec.groups, room) else {
        return;
    };
    if l.names.channel(&group).is_none() {
        // channels refuses names of 100 characters or more: this room cannot be reached by
        // group_send, which the operator must hear about (nothing arrives to be counted).
        tracing::warn!(room, group = %group, "channel name too long for channels_redis; the room is not joined to its group");
        return;
    }
    l.joined.borrow_mut().insert(room.to_owned(), group.clone());
    let _ = l.changes.unbounded_send(Change::Join(group));
}

/// A member of `room` left on its owner shard: leaves the group when it was the last.
pub fn room_left(shard: &Shard, room: &str) {
    let Some(l) = layer() else { return };
    if shard.members(room) > 0 {
        return;
    }
    let left = l.joined.borrow_mut().remove(room);
    if let Some(group) = left {
        let _ = l.changes.unbounded_send(Change::Leave(group));
    }
}

/// A Redis connection used one command at a time.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(cfg: &ChannelLayerConfig) -> Result<Conn, String> {
        let url = &cfg.url;
        let stream = TcpStream::connect_timeout((url.host.as_str(), url.port), CONNECT_TIMEOUT)
            .await
            .map_err(|e| format!("connect {}: {e}", url.shown))?;
        let _ = stream.set_nodelay(true);
        let mut c = Conn {
            stream,
            buf: Vec::new(),
        };
        if let Some(auth) = url.redis_auth() {
            c.call(&auth).await?;
        }
        if cfg.db != 0 {
            c.call(&[b"SELECT", cfg.db.to_string().as_bytes()]).await?;
        }
        Ok(c)
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<(), String> {
        let mut cmd = Vec::new();
        resp::encode(&mut cmd, args);
        self.stream
            .write_all(&cmd)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// The next value the server sends.
    async fn read(&mut self) -> Result<Value, String> {
        loop {
            if let Some((v, used)) = resp::parse(&self.buf).map_err(|e| e.to_string())? {
                self.buf.drain(..used);
                return Ok(v);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed by the server".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one command and reads its reply; an error reply is an error.
    async fn call(&mut self, args: &[&[u8]]) -> Result<Value, String> {
        self.send(args).await?;
        match self.read().await? {
            Value::Error(e) => Err(format!("redis: {}", String::from_utf8_lossy(&e))),
            v => Ok(v),
        }
    }
}

/// Runs `life` again after each failure, with a growing delay; `up` follows it.
async fn keep_alive<F, Fut>(probe: &Probe, what: &str, mut life: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let why = life().await;
        probe.channel_layer.up.store(0, Relaxed);
        Probe::inc(&probe.channel_layer.reconnects, 1);
        tracing::warn!(connection = what, error = %why, "channel layer connection lost; reconnecting");
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn now_s() -> String {
    format!("{:.6}", super::shared::unix_ms() as f64 / 1000.0)
}

/// The membership connection (core) or the subscription (pubsub).
async fn membership(shard: Rc<Shard>, l: Rc<Layer>, rx: mpsc::UnboundedReceiver<Change>) {
    // Each life of the connection borrows the one receiver; changes made while it is down
    // wait in the channel (and the next life joins every group anyway).
    let rx = Rc::new(RefCell::new(Some(rx)));
    keep_alive(&shard.probe.clone(), "membership", || {
        let (shard, l, rx) = (shard.clone(), l.clone(), rx.clone());
        async move {
            let Some(mut changes) = rx.borrow_mut().take() else {
                return "no membership channel".to_owned();
            };
            let r = match l.cfg.flavor {
                Flavor::Core => members(&shard, &l, &mut changes).await,
                Flavor::PubSub => subscribed(&shard, &l, &mut changes).await,
            };
            *rx.borrow_mut() = Some(changes);
            r.err().unwrap_or_default()
        }
    })
    .await
}

async fn join(c: &mut Conn, l: &Layer, group: &str) -> Result<(), String> {
    let Some(channel) = l.names.channel(group) else {
        return Ok(());
    };
    let key = l.names.group_key(group);
    c.call(&[
        b"ZADD",
        key.as_bytes(),
        now_s().as_bytes(),
        channel.as_bytes(),
    ])
    .await?;
    let expiry = l.cfg.group_expiry_s.to_string();
    c.call(&[b"EXPIRE", key.as_bytes(), expiry.as_bytes()])
        .await?;
    Ok(())
}

/// Core layer: keeps this shard's channels in their groups.
async fn members(
    shard: &Shard,
    l: &Layer,
    rx: &mut mpsc::UnboundedReceiver<Change>,
) -> Result<(), String> {
    let mut c = Conn::open(&l.cfg).await?;
    let renew = Duration::from_secs((l.cfg.group_expiry_s / 4).max(1));
    loop {
        // Every membership again: after a (re)connect, and each renewal period.
        let groups: Vec<String> = l.joined.borrow().values().cloned().collect();
        for g in &groups {
            join(&mut c, l, g).await?;
        }
        layer_up(&shard.probe);
        let deadline = std::time::Instant::now() + renew;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let next = glommio::timer::timeout(left, async { Ok(rx.next().await) }).await;
            match next {
                Err(_) => break,
                Ok(None) => return Ok(()),
                Ok(Some(Change::Join(g))) => join(&mut c, l, &g).await?,
                Ok(Some(Change::Leave(g))) => {
                    if let Some(channel) = l.names.channel(&g) {
                        let key = l.names.group_key(&g);
                        c.call(&[b"ZREM", key.as_bytes(), channel.as_bytes()])
                            .await?;
                    }
                }
            }
        }
    }
}

fn layer_up(probe: &Probe) {
    probe.channel_layer.up.store(1, Relaxed);
}

/// Core layer: pops copies from this shard's inbox key and delivers them.
async fn inbox(shard: Rc<Shard>, l: Rc<Layer>) {
    keep_alive(&shard.probe.clone(), "inbox", || {
        let (shard, l) = (shard.clone(), l.clone());
        async move {
            let r: Result<(), String> = async {
                let mut c = Conn::open(&l.cfg).await?;
                let key = l.names.inbox_key();
                loop {
                    let v = c.call(&[b"BZPOPMIN", key.as_bytes(), POP_WAIT_S]).await?;
                    // `[key, member, score]`, or nil when nothing came within the wait.
                    match v.as_items() {
                        Some([_, Value::Bulk(member), _]) => {
                            let member = member.clone();
                            deliver(&shard, &l, None, &member);
                        }
                        None if v == Value::Null => {}
                        // Not what BZPOPMIN answers: counted with what cannot be read.
                        _ => shard.probe.channel_layer.dropped(cl::Dropped::Undecodable),
                    }
                }
            }
            .await;
            r.err().unwrap_or_default()
        }
    })
    .await
}

/// Pubsub layer: one connection subscribed to each joined group's channel; the membership
/// changes and the messages share it.
async fn subscribed(
    shard: &Rc<Shard>,
    l: &Rc<Layer>,
    rx: &mut mpsc::UnboundedReceiver<Change>,
) -> Result<(), String> {
    let c = Conn::open(&l.cfg).await?;
    let (mut reader, mut writer) = c.stream.split();
    let mut buf = c.buf;
    let groups: Vec<String> = l.joined.borrow().values().cloned().collect();
    let mut cmd = Vec::new();
    for g in &groups {
        resp::encode(
            &mut cmd,
            &[b"SUBSCRIBE", l.names.pubsub_channel(g).as_bytes()],
        );
    }
    // A PING answers once everything before it is subscribed.
    resp::encode(&mut cmd, &[b"PING"]);
    writer
        .write_all(&cmd)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let names = l.names.clone();
    let writes = async {
        loop {
            let change = rx.next().await;
            let mut cmd = Vec::new();
            match change {
                None => return Ok::<(), String>(()),
                Some(Change::Join(g)) => resp::encode(
                    &mut cmd,
                    &[b"SUBSCRIBE", names.pubsub_channel(&g).as_bytes()],
                ),
                Some(Change::Leave(g)) => resp::encode(
                    &mut cmd,
                    &[b"UNSUBSCRIBE", names.pubsub_channel(&g).as_bytes()],
                ),
            }
            writer
                .write_all(&cmd)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
    };
    let reads = async {
        loop {
            let v = loop {
                if let Some((v, used)) = resp::parse(&buf).map_err(|e| e.to_string())? {
                    buf.drain(..used);
                    break v;
                }
                let mut chunk = [0u8; 16 * 1024];
                let n = reader
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err::<(), String>("closed by the server".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            match resp::pushed(&v) {
                Some(Pushed::Message { channel, payload }) => {
                    let channel = String::from_utf8_lossy(channel).into_owned();
                    deliver(shard, l, Some(&channel), payload);
                }
                Some(Pushed::Pong) => layer_up(&shard.probe),
                Some(Pushed::Error(e)) => {
                    return Err(format!("redis: {}", String::from_utf8_lossy(e)))
                }
                _ => {}
            }
        }
    };
    futures::pin_mut!(writes, reads);
    match futures::future::select(writes, reads).await {
        futures::future::Either::Left((r, _)) | futures::future::Either::Right((r, _)) => r,
    }
}

/// One copy: to the rooms it names on this shard, or counted as dropped.
fn deliver(shard: &Shard, l: &Layer, channel: Option<&str>, copy: &[u8]) {
    let probe = &shard.probe.channel_layer;
    match cl::deliverable(&shard.shared.proto, &l.names, l.cfg.flavor, channel, copy) {
        Ok(d) => {
            for room in &d.rooms {
                shard.deliver(room, &d.frame, None);
            }
            probe.delivered();
        }
        Err(why) => {
            tracing::debug!(reason = why.label(), "channel layer event not delivered");
            probe.dropped(why);
        }
    }
}
