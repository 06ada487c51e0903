//! The I/O edge: glommio executors ("shards"), one per core, each with its own listener on the
//! shared port (SO_REUSEPORT), its rooms and its connections. Shards meet only through
//! [`Inbox`]es carrying owned [`ShardMsg`]s.
//!
//! Every glommio import lives under this module, so the runtime could be swapped.

pub mod api;
pub mod client_ip;
pub mod conn;
pub mod fault;
pub mod fd;
pub mod front;
pub mod geo;
pub mod hook;
pub mod http_endpoints;
pub mod inbox;
pub mod probe;
pub mod router;
pub mod shard;
pub mod traffic;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};

use crate::auth::{Identity, Verifier};
use crate::config::Config;
use crate::protocol::Protocol;
use crate::ws::codec;
use inbox::Inbox;
use probe::Probe;
use shard::Shard;

/// The only place a shard id is computed: FNV-1a of the room name, modulo the shard count.
/// FNV is stable across builds and platforms, so a room's owner never depends on a hasher seed.
pub fn owner_of(room: &str, nr_shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % nr_shards.max(1) as u64) as usize
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the accepting shard learned about a socket before handing it over. Crosses shards
/// (Send).
#[derive(Debug)]
pub struct Admitted {
    pub endpoint: usize,
    pub params: Vec<String>,
    pub identity: Option<Identity>,
    pub room: String,
    /// The client's address (behind trusted proxies, the one they forwarded). For logs.
    pub client: std::net::IpAddr,
    /// The client's place in the per-IP cap, held until the connection ends.
    pub ip_slot: Option<client_ip::ConnSlot>,
    /// The user's place under `max_connections_per_user`, released when the socket ends.
    pub user_slot: Option<client_ip::ConnSlot>,
    /// Bytes read past the request head (early frames), to be decoded by the owner.
    pub leftover: Vec<u8>,
    /// The `101 Switching Protocols` response, when it has not been sent yet. The owner sends
    /// it after the socket has joined its room, so a publish that follows the client's `open`
    /// event always finds the socket.
    pub handshake: Option<Vec<u8>>,
}

/// Crosses shards (Send).
#[derive(Debug)]
pub struct Handoff {
    pub socket: fd::OwnedSocket,
    pub admitted: Admitted,
}

/// Work sent to run on another shard.
pub type ShardJob = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// Everything one shard asks of another. Crosses shards (Send): owned values only.
pub enum ShardMsg {
    /// An upgraded socket whose home room this shard owns.
    Handoff(Box<Handoff>),
    /// Frames for rooms this shard owns, each already encoded once. `exclude` names a
    /// connection (shard, id) that must not receive them; `reply` gets per-item counts.
    Deliver {
        items: Vec<(String, Bytes)>,
        exclude: Option<(usize, u64)>,
        reply: Option<futures::channel::oneshot::Sender<Vec<usize>>>,
    },
    /// Run on the target shard (work keyed to a value whose owner is that shard, e.g. a
    /// per-caller rate limit); the closure owns everything it needs.
    Run(ShardJob),
    /// A geo update, search, query or job for the shard that owns the pool instance or job.
    Geo(Box<geo::GeoMsg>),
    /// Stop accepting and drain.
    Shutdown,
}

/// Built once at startup, read by every shard. Crosses shards (Send + Sync).
pub struct Shared {
    pub proto: Arc<Protocol>,
    pub config: Config,
    /// One verifier per protocol token kind, by `TokenId`.
    pub verifiers: Vec<Verifier>,
    pub api_key: Option<String>,
    pub inboxes: Vec<Inbox<ShardMsg>>,
    pub probes: Vec<Arc<Probe>>,
    pub draining: AtomicBool,
    pub nr_shards: usize,
    pub ip_limiter: Arc<client_ip::ConnLimiter>,
    pub user_limiter: Arc<client_ip::ConnLimiter>,
}

impl Shared {
    pub fn ws_limits(&self) -> codec::Limits {
        codec::Limits {
            max_frame_bytes: self.proto.limits.max_frame_bytes,
            max_message_bytes: self.proto.limits.max_message_bytes,
        }
    }

    pub fn new(
        proto: Arc<Protocol>,
        config: Config,
        verifiers: Vec<Verifier>,
        api_key: Option<String>,
        nr_shards: usize,
    ) -> Self {
        let mut codes: Vec<u16> = proto.closes.iter().map(|c| c.code).collect();
        codes.extend([1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1013]);
        let ip_limiter = Arc::new(client_ip::ConnLimiter::new(config.max_connections_per_ip));
        let user_limiter = Arc::new(client_ip::ConnLimiter::new(
            proto.limits.max_connections_per_user,
        ));
        Shared {
            inboxes: (0..nr_shards).map(|_| Inbox::new(16 * 1024)).collect(),
            probes: (0..nr_shards)
                .map(|i| Arc::new(Probe::new(i, &codes)))
                .collect(),
            proto,
            config,
            verifiers,
            api_key,
            draining: AtomicBool::new(false),
            nr_shards,
            ip_limiter,
            user_limiter,
        }
    }
}

/// A running server: its address and the means to stop it.
pub struct Server {
    pub local_addr: SocketAddr,
    pub shared: Arc<Shared>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0} is already in use by another process")]
    AddrInUse(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("shard {0} failed to start: {1}")]
    Shard(usize, String),
}

impl Server {
    /// Binds and starts `shared.nr_shards` shards. Returns once every shard is listening.
    pub fn start(shared: Arc<Shared>) -> Result<Server, StartError> {
        let mut addr = shared.config.listen;
        if addr.port() != 0 && someone_listens(addr) {
            return Err(StartError::AddrInUse(addr));
        }
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut handles = Vec::new();
        for id in 0..shared.nr_shards {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
            let sh = shared.clone();
            let bind_addr = addr;
            let builder = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
                .name(&format!("beacon-shard-{id}"))
                .io_memory(sh.config.io_memory)
                .ring_depth(256);
            let handle = builder
                .spawn(move || async move { run_shard(id, sh, bind_addr, ready_tx).await })
                .map_err(|e| StartError::Shard(id, e.to_string()))?;
            match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(bound)) => addr = bound,
                Ok(Err(e)) => return Err(StartError::Shard(id, e)),
                Err(_) => {
                    return Err(StartError::Shard(
                        id,
                        "did not report ready (join for details)".into(),
                    ));
                }
            }
            handles.push(handle);
        }
        Ok(Server {
            local_addr: addr,
            shared,
            handles,
        })
    }

    /// Asks every shard to drain. Idempotent.
    pub fn shutdown(&self) {
        request_shutdown(&self.shared);
    }

    /// Waits for every shard to finish. A shard that panicked makes this an error, so the
    /// process exits non-zero instead of limping on without it.
    pub fn join(self) -> Result<(), String> {
        let mut failed = Vec::new();
        for (i, h) in self.handles.into_iter().enumerate() {
            if let Err(e) = h.join() {
                failed.push(format!("shard {i}: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// glommio binds with SO_REUSEPORT, which would silently share the port with another running
/// Beacon (or any SO_REUSEPORT server of the same user). A test bind cannot tell: the
/// TIME_WAIT sockets of a just-stopped Beacon make it fail too, which would block restarts. So
/// ask the question directly: does anything accept connections there?
fn someone_listens(addr: SocketAddr) -> bool {
    let probe = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(300)).is_ok()
}

/// Tells every shard to drain (from any thread: signal handler thread, tests).
pub fn request_shutdown(shared: &Shared) {
    if shared.draining.swap(true, Ordering::SeqCst) {
        return;
    }
    for inbox in &shared.inboxes {
        let mut msg = ShardMsg::Shutdown;
        // Shutdown must arrive: spin politely until there is room.
        while let Err(m) = inbox.push(msg) {
            msg = m;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

async fn run_shard(
    id: usize,
    shared: Arc<Shared>,
    addr: SocketAddr,
    ready: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
) {
    let listener = match glommio::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("bind {addr}: {e}")));
            return;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let shard = match Shard::new(id, shared.clone()) {
        Ok(s) => Rc::new(s),
        Err(e) => {
            let _ = ready.send(Err(format!("shard {id} poller: {e}")));
            return;
        }
    };
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel();
    let (drained_tx, drained_rx) = futures::channel::oneshot::channel();
    *shard.drained.borrow_mut() = Some(drained_tx);
    STOP.with(|s| *s.borrow_mut() = Some(stop_tx));
    glommio::spawn_local(front::accept_loop(shard.clone(), listener, stop_rx)).detach();
    let inbox_task = glommio::spawn_local(inbox_loop(shard.clone()));
    let ready_task = glommio::spawn_local(readiness_loop(shard.clone()));
    let _ = ready.send(Ok(bound));
    tracing::debug!(shard = id, %bound, "shard listening");
    let _ = drained_rx.await;
    // Let in-flight API requests finish (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    while shard.active_requests.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    drop(inbox_task);
    drop(ready_task);
    tracing::debug!(shard = id, "shard drained");
}

thread_local! {
    static STOP: std::cell::RefCell<Option<futures::channel::oneshot::Sender<()>>> = const { std::cell::RefCell::new(None) };
}

async fn inbox_loop(shard: Rc<Shard>) {
    let mut batch = Vec::with_capacity(256);
    loop {
        futures::future::poll_fn(|cx| {
            shard.shared.inboxes[shard.id].poll_drain(cx, &mut batch, 256)
        })
        .await;
        for msg in batch.drain(..) {
            shard.handle(msg);
        }
        // Drained a full batch: let connection tasks run before the next one.
        glommio::yield_if_needed().await;
    }
}

/// Hands the poller's edges to the connection tasks: one ring poll on the epoll set per batch
/// of ready sockets.
async fn readiness_loop(shard: Rc<Shard>) {
    const BATCH: usize = 256;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
    let mut ready = Vec::with_capacity(BATCH);
    loop {
        if let Err(e) = glommio::net::wait_readable(shard.poller.raw()).await {
            // Only resource exhaustion gets here; the sockets' edges stay queued in the set.
            tracing::warn!(shard = shard.id, error = %e, "poller wait failed; retrying");
            glommio::timer::sleep(Duration::from_millis(1)).await;
            continue;
        }
        loop {
            ready.clear();
            let n = shard.poller.ready(&mut events, &mut ready);
            let mut now = Instant::now();
            for &(id, what) in &ready {
                // Parked connections run inline here, so the batch yields when its time slice
                // is spent; an edge not handled yet stays in `ready` and its socket stays
                // readable.
                shard.on_ready(id, what, now);
                if glommio::executor().need_preempt() {
                    glommio::yield_if_needed().await;
                    now = Instant::now();
                }
            }
            if n < BATCH {
                break;
            }
            // A full batch: let the woken connections run before the next one.
            glommio::yield_if_needed().await;
        }
    }
}

/// Closes connections with the shutdown code in batches spread over the drain window so
/// clients do not all reconnect in the same instant, then stops accepting. While draining the
/// listener stays open so load balancers read `503` from `/readyz` (and upgrades get `503`)
/// instead of connection refused.
pub fn begin_drain(shard: Rc<Shard>) {
    if shard.draining.replace(true) {
        return;
    }
    glommio::spawn_local(async move {
        let window = Duration::from_millis(shard.shared.config.drain_ms);
        const BATCHES: u32 = 10;
        let total = shard.connection_count();
        let per_batch = total.div_ceil(BATCHES as usize).max(1);
        for _ in 0..BATCHES {
            if shard.close_batch(per_batch) == 0 {
                break;
            }
            glommio::timer::sleep(window / BATCHES).await;
        }
        STOP.with(|s| {
            if let Some(tx) = s.borrow_mut().take() {
                let _ = tx.send(());
            }
        });
        // Anything that arrived meanwhile (late hand-offs) goes now.
        while shard.close_batch(usize::MAX) > 0 {}
        if shard.connection_count() == 0 {
            if let Some(tx) = shard.drained.borrow_mut().take() {
                let _ = tx.send(());
            }
        }
        // Peers that never answer our close frame are cut at the close grace period.
        glommio::timer::sleep(Duration::from_secs(3)).await;
        if let Some(tx) = shard.drained.borrow_mut().take() {
            let _ = tx.send(());
        }
    })
    .detach();
}
