//! The I/O edge: glommio executors ("shards"), one per core, each with its own listener on the
//! shared port (SO_REUSEPORT), its rooms and its connections. Shards meet only through
//! [`Inbox`]es carrying owned [`ShardMsg`]s.
//!
//! Every glommio import lives under this module, so the runtime could be swapped.

pub mod api;
pub mod backend;
pub mod channel_layer;
pub mod client_ip;
pub mod cluster;
pub mod cluster_geo;
pub mod cluster_presence;
pub mod conn;
pub mod fault;
pub mod fd;
pub mod forward;
pub mod front;
pub mod geo;
pub mod hook;
pub mod http_endpoints;
pub mod inbox;
pub mod msg;
pub mod probe;
pub mod router;
pub mod shard;
pub mod shared;
pub mod spread;
pub mod traffic;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

pub use msg::{Admitted, Handoff, ShardMsg};
use shard::Shard;
pub use shared::{owner_of, unix_ms, Shared};

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
    let batch_task = glommio::spawn_local(batch_loop(shard.clone()));
    let sweep_task = glommio::spawn_local(history_sweep_loop(shard.clone()));
    cluster::start(shard.clone());
    cluster::set_receiver(geo::from_broker);
    cluster_geo::start(
        shard.clone(),
        cluster_geo::Hooks {
            node_gone: geo::node_gone,
            reset: geo::reset_all,
        },
    );
    channel_layer::start(shard.clone());
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
    drop(batch_task);
    drop(sweep_task);
    tracing::debug!(shard = id, "shard drained");
}

thread_local! {
    static STOP: std::cell::RefCell<Option<futures::channel::oneshot::Sender<()>>> = const { std::cell::RefCell::new(None) };
}

async fn inbox_loop(shard: Rc<Shard>) {
    // A batch of a busy room's messages queues each of them for every member before the
    // members' tasks run again: a batch as long as a member's queue bound would close healthy
    // members as slow consumers. A quarter of the bound leaves them room to catch up.
    let per_batch = (shard.shared.proto.limits.queue_max_messages / 4).clamp(8, 256);
    let mut batch = Vec::with_capacity(per_batch);
    loop {
        futures::future::poll_fn(|cx| {
            shard.shared.inboxes[shard.id].poll_drain(cx, &mut batch, per_batch)
        })
        .await;
        let full = batch.len() == per_batch;
        for msg in batch.drain(..) {
            handle(&shard, msg);
        }
        shard.write_batch();
        if full {
            // More is waiting: let the connection tasks this batch woke write first.
            yield_now().await;
        } else {
            glommio::yield_if_needed().await;
        }
    }
}

/// Returns once, after every task woken before it has run.
async fn yield_now() {
    let mut yielded = false;
    futures::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Handles one message from another shard or thread: the one place inbox traffic is
/// dispatched to the part of the runtime that serves it.
fn handle(shard: &Rc<Shard>, msg: ShardMsg) {
    match msg {
        ShardMsg::Handoff(h) => conn::start(shard.clone(), h.socket, h.admitted),
        ShardMsg::Deliver {
            items,
            exclude,
            reply,
        } => {
            let counts: Vec<usize> = items
                .iter()
                .map(|(room, frame)| shard.deliver_from(room, frame, exclude))
                .collect();
            if let Some(tx) = reply {
                let _ = tx.send(counts);
            }
        }
        ShardMsg::Run(f) => f(),
        ShardMsg::Geo(m) => geo::handle(shard, *m),
        ShardMsg::Fan {
            room,
            frame,
            exclude,
        } => shard.fan_in(&room, &frame, exclude),
        ShardMsg::Spread(m) => {
            // Never with presence (`spread::wanted`): no count across nodes to carry.
            if let Some((socket, admitted)) = spread::handle(shard, m) {
                conn::start_now(shard.clone(), socket, admitted, None);
            }
        }
        ShardMsg::Shutdown => begin_drain(shard.clone()),
    }
}

/// Writes fan-outs queued by tasks that end their turn without writing them (HTTP publishes,
/// connection tasks woken by glommio): it runs as soon as such a task yields.
async fn batch_loop(shard: Rc<Shard>) {
    loop {
        futures::future::poll_fn(|cx| shard.poll_batch(cx)).await;
        if let Some(due) = shard.batch_due() {
            glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
        }
        shard.write_batch();
    }
}

/// Releases expired room histories now and then, so rooms published to once do not hold
/// memory forever.
async fn history_sweep_loop(shard: Rc<Shard>) {
    if shard.shared.proto.history.is_empty() {
        return;
    }
    loop {
        glommio::timer::sleep(Duration::from_secs(10)).await;
        shard.sweep_history();
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
            // The batch's fan-outs, one write per member.
            shard.write_batch();
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

#[cfg(test)]
mod layering {
    //! The runtime's modules form layers: a module names only modules below it, so each can
    //! be read, tested and changed without the ones above (ARCHITECTURE.md, "Layers").

    use std::collections::{BTreeMap, BTreeSet};

    /// `super::x` paths in a child module's code (tests and comments left out), as module
    /// names; an item of `mod.rs` itself counts as `mod`.
    fn references(src: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
        let code = src.split("#[cfg(test)]").next().unwrap_or("");
        let code: String = code
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut out = BTreeSet::new();
        for (i, _) in code.match_indices("super::") {
            let rest = &code[i + "super::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(list) => list[..list.find('}').unwrap_or(0)]
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or(""))
                    .collect(),
                None => vec![rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")],
            };
            for n in names.into_iter().filter(|n| !n.is_empty()) {
                out.insert(if modules.contains(n) { n } else { "mod" }.to_owned());
            }
        }
        out
    }

    #[test]
    fn runtime_modules_have_no_import_cycle() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/runtime");
        let files: BTreeMap<String, String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .map(|p| {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .collect();
        let modules: BTreeSet<String> = files.keys().filter(|k| *k != "mod").cloned().collect();
        let edges: BTreeMap<String, BTreeSet<String>> = files
            .iter()
            .filter(|(name, _)| *name != "mod")
            .map(|(name, src)| {
                let mut refs = references(src, &modules);
                refs.remove(name);
                (name.clone(), refs)
            })
            .collect();
        // mod.rs declares and starts everything: it may name any child, so no child may name
        // an item of mod.rs.
        for (name, refs) in &edges {
            assert!(
                !refs.contains("mod"),
                "runtime/{name}.rs names an item of runtime/mod.rs; import it from its own module"
            );
        }
        // Depth-first search for a cycle among the children.
        fn visit<'a>(
            n: &'a str,
            edges: &'a BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) {
            if done.contains(n) {
                return;
            }
            if let Some(i) = path.iter().position(|p| *p == n) {
                panic!(
                    "import cycle in runtime/: {} -> {n}",
                    path[i..].join(" -> ")
                );
            }
            path.push(n);
            for m in edges.get(n).into_iter().flatten() {
                visit(m, edges, path, done);
            }
            path.pop();
            done.insert(n);
        }
        let mut done = BTreeSet::new();
        for n in edges.keys() {
            visit(n, &edges, &mut Vec::new(), &mut done);
        }
        // fd, probe, shared; msg and traffic since the owner of a spread room hands its
        // messages to the member shards itself (`spread.rs`).
        assert!(
            edges["shard"].len() <= 5,
            "shard.rs grew dependencies: {:?}",
            edges["shard"]
        );
    }
}
