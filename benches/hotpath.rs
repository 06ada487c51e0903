//! Micro-benchmarks of Beacon's hot path: frame encode/decode, message decode and schema
//! validation (serde_json into a `Value`, simd-json, and the engine's own `Inbound`), reply
//! rendering (a `Map` built and serialised against the compiled frame), room fan-out on a shard,
//! fan-out planning across shards, and the cross-shard inbox hop.
//!
//! `cargo bench --bench hotpath` for numbers; `cargo bench --bench hotpath -- --test` runs each
//! once (CI smoke).

use std::hint::black_box;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use beacon::config::Config;
use beacon::protocol::load_protocol;
use beacon::runtime::inbox::Inbox;
use beacon::runtime::shard::{Conn, Shard, Task};
use beacon::runtime::{owner_of, Shared};
use beacon::startup::{self, Checked};
use beacon::ws::codec::{self, Decoder, Event, Limits};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde_json::Value;

const SECRET: &str = "bench-secret-that-is-at-least-32-bytes-long";
const LOCATION: &str = r#"{"type":"location_update","booking_id":"b-1234567","lat":12.9716,"lng":77.5946,"timestamp":"2026-11-22T01:45:29.123456Z","actor":"Ravi Kumar","eta_minutes":7}"#;

fn shared() -> Arc<Shared> {
    shared_from("benches/protocol.toml")
}

/// `benches/protocol-history.toml` is the bench protocol with history on the booking rooms.
fn shared_from(file: &str) -> Arc<Shared> {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .expect("bench protocol");
    let protocol = load_protocol(&src)
        .unwrap_or_else(|d| panic!("{}", beacon::protocol::render("protocol.toml", &src, &d)));
    let checked = Checked {
        protocol,
        config: Config::default(),
        protocol_src: src,
        warnings: String::new(),
    };
    let env = |k: &str| (k == "BEACON_JWT_SECRET").then(|| SECRET.to_owned());
    let verifiers =
        startup::verifiers(&checked, Path::new("protocol.toml"), &env).expect("verifiers");
    startup::shared(checked, verifiers, Some("k".into()), 2)
}

/// A client's masked text frame (clients must mask; the server unmasks every byte).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for size in [64usize, 1024, 16 * 1024] {
        let payload = vec![b'x'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encode_text", size), &payload, |b, p| {
            b.iter(|| codec::text_frame(black_box(p)))
        });
        // 32 frames per read, as a busy socket delivers them.
        let wire: Vec<u8> = (0..32).flat_map(|_| masked_text(&payload)).collect();
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("decode_masked_x32", size),
            &wire,
            |b, w| {
                let mut d = Decoder::new(Limits {
                    max_frame_bytes: 1 << 20,
                    max_message_bytes: 1 << 20,
                });
                b.iter(|| {
                    d.feed(black_box(w));
                    let mut n = 0;
                    while let Ok(Some(ev)) = d.next_event() {
                        if let Event::Text(t) = ev {
                            n += t.len();
                        }
                    }
                    d.shrink();
                    n
                })
            },
        );
    }
    g.finish();
}

fn messages(c: &mut Criterion) {
    let shared = shared();
    let proto = shared.proto.clone();
    let spec = proto
        .messages
        .iter()
        .find(|m| m.name == "location_update")
        .expect("location_update");
    let mut g = c.benchmark_group("message_decode_check");
    g.throughput(Throughput::Bytes(LOCATION.len() as u64));
    g.bench_function("serde_json", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(LOCATION.as_bytes())).expect("json");
            let Value::Object(o) = v else { unreachable!() };
            beacon::message::check(&spec.schema, &o, "").is_ok()
        })
    });
    g.bench_function("simd_json", |b| {
        b.iter_batched_ref(
            || LOCATION.as_bytes().to_vec(),
            |buf| {
                let v: Value = simd_json::serde::from_slice(black_box(buf)).expect("json");
                let Value::Object(o) = v else { unreachable!() };
                beacon::message::check(&spec.schema, &o, "").is_ok()
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("inbound", |b| {
        b.iter(|| {
            let o = beacon::message::Inbound::parse(black_box(LOCATION.as_bytes()))
                .expect("json")
                .expect("object");
            beacon::message::check(&spec.schema, &o, "").is_ok()
        })
    });
    g.bench_function("serde_json_encode_once", |b| {
        let v: Value = serde_json::from_str(LOCATION).expect("json");
        let Value::Object(o) = v else { unreachable!() };
        b.iter(|| beacon::session::encode(black_box(&o)))
    });
    g.finish();
}

/// The echo's reply: `pong` with the ping's `t`, as the general renderer builds it and as the
/// compiled frame splices it.
fn reply(c: &mut Criterion) {
    use beacon::message::{build, Inbound, RenderCtx};
    let shared = shared();
    let proto = shared.proto.clone();
    let ping = proto
        .messages
        .iter()
        .find(|m| m.name == "ping")
        .expect("ping");
    let action = ping.reply.as_ref().expect("ping replies");
    let frame = action.frame.as_ref().expect("the pong compiles");
    let inbound = Inbound::parse(br#"{"type":"ping","t":1767438000123}"#)
        .expect("json")
        .expect("object");
    let params = vec!["b-1234567".to_owned()];
    let mut g = c.benchmark_group("reply");
    let mut run = |name: &str, f: &dyn Fn(&mut RenderCtx<'_>) -> bytes::Bytes| {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut next = || 0;
                f(&mut RenderCtx {
                    params: &params,
                    param_names: &[],
                    claims: None,
                    user_id: Some("42"),
                    inbound: Some(black_box(&inbound)),
                    now_ms: 1_767_438_000_123,
                    next_id: &mut next,
                    minted: None,
                    geo: None,
                })
            })
        });
    };
    run("map_build_encode", &|ctx| {
        beacon::session::encode(&build(
            &proto.messages[action.send],
            None,
            &action.with,
            ctx,
        ))
    });
    run("frame_splice", &|ctx| frame.text_frame(ctx));
    g.finish();
}

/// A member without a socket or session: the fan-out queues to it as to a busy socket.
struct Idle;

impl Task for Idle {
    fn turn(&mut self, _: &Conn, _: &mut Context<'_>, _: Option<Instant>) -> Poll<u16> {
        Poll::Pending
    }
}

fn member(shard: &Shard, room: &str) -> Rc<Conn> {
    let (id, room) = shard.new_conn(room);
    let conn: Rc<Conn> = Rc::new(Conn::new(id, room, Idle));
    shard.join(conn.clone());
    conn
}

fn fanout(c: &mut Criterion) {
    let shared = shared();
    let mut g = c.benchmark_group("fanout");
    for members in [10usize, 10_000] {
        let shard = Rc::new(Shard::new(0, shared.clone()).expect("epoll set"));
        let conns: Vec<Rc<Conn>> = (0..members)
            .map(|_| member(&shard, "booking:big"))
            .collect();
        let frame = codec::text_frame(LOCATION.as_bytes());
        g.throughput(Throughput::Elements(members as u64));
        g.bench_function(BenchmarkId::new("deliver_room", members), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut sink = Vec::new();
                for _ in 0..iters {
                    let t = Instant::now();
                    black_box(shard.deliver("booking:big", &frame, None));
                    spent += t.elapsed();
                    // Empty the queues outside the timing, as each socket's task would.
                    for c in &conns {
                        sink.clear();
                        c.drain_into(&mut sink, usize::MAX);
                    }
                }
                spent
            })
        });
    }
    // Planning a publish of 1000 rooms: owner shard per room, batched per shard.
    let rooms: Vec<String> = (0..1000).map(|i| format!("booking:b{i}")).collect();
    g.throughput(Throughput::Elements(rooms.len() as u64));
    g.bench_function("plan_1000_rooms_2_shards", |b| {
        b.iter(|| {
            let mut per: Vec<Vec<&str>> = vec![Vec::new(), Vec::new()];
            for r in &rooms {
                per[owner_of(black_box(r), 2)].push(r);
            }
            per
        })
    });
    g.finish();
}

/// The cost history adds on the owner: a delivery to a room of 10 with and without history
/// (stamping the frame once and keeping it), and the catch-up of a client 100 behind.
fn history(c: &mut Criterion) {
    use beacon::history::store::{Since, Store};
    use beacon::history::{Epoch, Position};
    let mut g = c.benchmark_group("history");
    for (name, file) in [
        ("deliver_room_10_plain", "benches/protocol.toml"),
        ("deliver_room_10_history", "benches/protocol-history.toml"),
    ] {
        let shared = shared_from(file);
        let shard = Rc::new(Shard::new(0, shared.clone()).expect("epoll set"));
        let conns: Vec<Rc<Conn>> = (0..10).map(|_| member(&shard, "booking:big")).collect();
        let frame = codec::text_frame(LOCATION.as_bytes());
        g.throughput(Throughput::Elements(10));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut sink = Vec::new();
                for _ in 0..iters {
                    let t = Instant::now();
                    black_box(shard.deliver("booking:big", &frame, None));
                    spent += t.elapsed();
                    for c in &conns {
                        sink.clear();
                        c.drain_into(&mut sink, usize::MAX);
                    }
                }
                spent
            })
        });
    }
    let shared = shared_from("benches/protocol-history.toml");
    let proto = &shared.proto;
    let rule = proto.history_for("booking:b1").expect("history rule");
    let mut store = Store::in_memory(7);
    let frame = codec::text_frame(LOCATION.as_bytes());
    let mut epoch = Epoch(0);
    for _ in 0..100 {
        let stamped = store
            .append(proto, rule, "booking:b1", &frame, 0)
            .expect("enters");
        let v = beacon::session::frame_object(&stamped.frame).expect("JSON");
        epoch = Epoch(
            v["epoch"]
                .as_str()
                .and_then(|e| e.parse().ok())
                .expect("epoch"),
        );
    }
    g.throughput(Throughput::Elements(100));
    g.bench_function("catch_up_100_behind", |b| {
        b.iter(|| {
            let since = Since::At(Position { offset: 0, epoch });
            let caught = store.catch_up(proto, rule, "booking:b1", since, 0);
            assert_eq!(caught.deliver.len(), 100);
            black_box(caught)
        })
    });
    g.finish();
}

fn inbox_hop(c: &mut Criterion) {
    let mut g = c.benchmark_group("inbox");
    const N: u64 = 10_000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("cross_thread_hop_10k", |b| {
        b.iter_custom(|iters| {
            let inbox = Arc::new(Inbox::<(String, bytes::Bytes)>::new(16 * 1024));
            let frame = codec::text_frame(LOCATION.as_bytes());
            let total = iters * N;
            let consumer = {
                let inbox = inbox.clone();
                std::thread::spawn(move || {
                    let waker = futures::task::noop_waker();
                    let mut cx = std::task::Context::from_waker(&waker);
                    let mut got = 0u64;
                    let mut out = Vec::with_capacity(256);
                    while got < total {
                        if inbox.poll_drain(&mut cx, &mut out, 256).is_ready() {
                            got += out.len() as u64;
                            out.clear();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                })
            };
            let t = Instant::now();
            for i in 0..total {
                let mut msg = (String::from("booking:b1"), frame.clone());
                loop {
                    match inbox.push(msg) {
                        Ok(()) => break,
                        Err(m) => {
                            msg = m;
                            std::thread::yield_now();
                        }
                    }
                }
                black_box(i);
            }
            consumer.join().expect("consumer");
            t.elapsed()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = frames, messages, reply, fanout, history, inbox_hop
}
criterion_main!(benches);
