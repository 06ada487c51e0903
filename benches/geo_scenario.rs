//! In-process geo scenario: 100k providers in 10 categories over a 50 km city, moving at
//! 50k updates/s in total, with 10k standing searches (2-5 km, half filtered by subcategory).
//!
//! One thread per shard (`--shards`, default 2: this box's cores) owns the category pools
//! `owner_of` gives it and moves its providers at their share of the total rate. For each
//! update it runs the index (`GeoPool`, which also applies the per-(seeker, provider) `moved`
//! rate limit) and renders and encodes each notification with the VISIBLE protocol's templates
//! the way the engine does (`Frame` splicing, one WebSocket frame each): everything the
//! owner shard does except handing frames to the seekers' shards. Updates are due on a fixed
//! schedule; latency is from an update's due time to its last notification frame encoded, so
//! any backlog shows up in it.
//!
//! Accounting: "index" is the time inside `GeoPool::upsert_provider` (provider tree, search
//! tree, exact distances, the in-range diff and the rate limit); "all" adds picking the move
//! and rendering and encoding its frames. Waiting for the next due update is idle. Delivery
//! (queues, other shards, sockets) is not here; benches/geo_load.rs has it.
//!
//! Between updates a thread sleeps until the next is due (`--wait sleep`, the default): an
//! engine shard parks when idle too (glommio without `spin_before_park`) and pays the wake-up,
//! which on a shared box includes waiting for the core. `--wait spin` spins instead, as this
//! bench did before 2026-12-02: it never gives the core away, so its tail shows the work alone.
//!
//! `cargo bench --bench geo_scenario [-- --shards N --wait sleep|spin]` (release). Prints one
//! table row per shard for BENCHMARKS.md.

use std::time::{Duration, Instant};

use beacon::geo::{GeoEvent, GeoPool, MovedLimit, Position, Radius, SubCode};
use beacon::message::{Frame, GeoVars};
use beacon::protocol::{load_protocol, GeoSend, Protocol};
use hdrhistogram::Histogram;

const PROVIDERS: u32 = 100_000;
const CATEGORIES: u32 = 10;
const SUBS: u32 = 3;
const SEARCHES: u32 = 10_000;
const RATE: f64 = 50_000.0;
const SECONDS: f64 = 6.0;
const MOVED_MIN_INTERVAL_MS: u64 = 1000;
const CENTRE: (f64, f64) = (11.2588, 75.7804);
const HALF_SIDE_DEG: f64 = 25.0 / 111.195;
/// Largest step of one move, degrees (about 30 m): a phone's few-second fix while driving.
const STEP_DEG: f64 = 0.00027;

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }
}

fn clamp_city(lat: f64, lon: f64) -> Position {
    let dlon = HALF_SIDE_DEG / CENTRE.0.to_radians().cos();
    Position::new(
        lat.clamp(CENTRE.0 - HALF_SIDE_DEG, CENTRE.0 + HALF_SIDE_DEG),
        lon.clamp(CENTRE.1 - dlon, CENTRE.1 + dlon),
    )
    .expect("inside the city")
}

fn random_spot(rng: &mut Rng) -> Position {
    let dlon = HALF_SIDE_DEG / CENTRE.0.to_radians().cos();
    clamp_city(
        CENTRE.0 + rng.between(-HALF_SIDE_DEG, HALF_SIDE_DEG),
        CENTRE.1 + rng.between(-dlon, dlon),
    )
}

fn compile(proto: &Protocol, s: &GeoSend) -> Frame {
    Frame::geo(&proto.messages[s.send], &s.with).expect("visible.toml geo frames compile")
}

fn encode(frame: &Frame, vars: &GeoVars<'_>, json: &mut Vec<u8>) -> usize {
    json.clear();
    frame.render_geo(vars, json);
    beacon::ws::codec::text_frame(json).len()
}

/// What one shard thread measured.
struct ShardReport {
    shard: usize,
    pools: usize,
    updates: u64,
    wall: Duration,
    index_ns: u128,
    busy_ns: u128,
    entered: u64,
    moved: u64,
    left: u64,
    suppressed: u64,
    bytes: usize,
    initial: usize,
    latency: Histogram<u64>,
}

/// How a shard thread waits for its next update.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Sleep,
    Spin,
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn main() {
    let nr_shards: usize = arg("--shards").and_then(|v| v.parse().ok()).unwrap_or(2);
    let wait = match arg("--wait").as_deref() {
        Some("spin") => Wait::Spin,
        _ => Wait::Sleep,
    };
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/protocols/visible.toml"),
    )
    .unwrap();
    let proto = std::sync::Arc::new(load_protocol(&src).expect("visible.toml validates"));
    // Each category pool lives on the shard that owns its room, exactly as in the engine.
    let owner: Vec<usize> = (0..CATEGORIES)
        .map(|c| beacon::runtime::owner_of(&format!("geo:nearby:MS000{c}"), nr_shards))
        .collect();
    let threads: Vec<_> = (0..nr_shards)
        .map(|shard| {
            let proto = proto.clone();
            let cats: Vec<u32> = (0..CATEGORIES)
                .filter(|c| owner[*c as usize] == shard)
                .collect();
            std::thread::spawn(move || run_shard(&proto, shard, &cats, wait))
        })
        .collect();
    let reports: Vec<ShardReport> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    println!(
        "providers {PROVIDERS} in {CATEGORIES} categories, standing searches {SEARCHES} \
         ({} initial matches), {RATE} updates/s in total for {SECONDS} s, {nr_shards} shard threads",
        reports.iter().map(|r| r.initial).sum::<usize>()
    );
    let mut all = Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3).unwrap();
    for r in &reports {
        all.add(&r.latency).unwrap();
        let frames = r.entered + r.moved + r.left;
        let wall = r.wall.as_secs_f64();
        let us = |q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "shard {}: {} pools; updates handled/s {:.0}; notifications/s {:.0} (entered {}, moved {}, \
             left {}, suppressed {}), {:.0} B/frame; core time: index {:.1} %, all {:.1} %, \
             index {:.2} us/update; latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            r.shard,
            r.pools,
            r.updates as f64 / wall,
            frames as f64 / wall,
            r.entered,
            r.moved,
            r.left,
            r.suppressed,
            r.bytes as f64 / frames.max(1) as f64,
            r.index_ns as f64 / r.wall.as_nanos() as f64 * 100.0,
            r.busy_ns as f64 / r.wall.as_nanos() as f64 * 100.0,
            r.index_ns as f64 / r.updates.max(1) as f64 / 1000.0,
            us(0.5),
            us(0.99),
            us(0.999),
            r.latency.max() as f64 / 1000.0,
        );
    }
    println!(
        "all: updates handled/s {:.0}; latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
        reports
            .iter()
            .map(|r| r.updates as f64 / r.wall.as_secs_f64())
            .sum::<f64>(),
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        all.value_at_quantile(0.999) as f64 / 1000.0,
    );
}

fn run_shard(proto: &Protocol, shard: usize, cats: &[u32], wait: Wait) -> ShardReport {
    let spec = &proto.geo.pools[0];
    let (entered, left, moved) = (
        compile(proto, spec.entered.as_ref().unwrap()),
        compile(proto, spec.left.as_ref().unwrap()),
        compile(proto, spec.moved.as_ref().unwrap()),
    );
    let mut json = Vec::new();
    let names: Vec<String> = (0..PROVIDERS).map(|i| (100_000 + i).to_string()).collect();
    let sub_names: Vec<String> = (0..SUBS).map(|s| format!("SS000{s}")).collect();
    let cat_names: Vec<String> = (0..CATEGORIES).map(|c| format!("MS000{c}")).collect();

    // The same city for every shard; each shard keeps only its categories.
    let mut rng = Rng(0x5eed);
    let mut pools: Vec<GeoPool<u32, u32>> = (0..CATEGORIES).map(|_| GeoPool::new()).collect();
    let mut at: Vec<Position> = Vec::with_capacity(PROVIDERS as usize);
    let mut mine: Vec<u32> = Vec::new();
    let mut events = Vec::new();
    for p in 0..PROVIDERS {
        let pos = random_spot(&mut rng);
        at.push(pos);
        if cats.contains(&(p % CATEGORIES)) {
            mine.push(p);
            pools[(p % CATEGORIES) as usize].upsert_provider(
                p,
                pos,
                SubCode(p / CATEGORIES % SUBS),
                MovedLimit::NONE,
                &mut events,
            );
        }
    }
    let mut initial = 0;
    for s in 0..SEARCHES {
        let filter = (s % 2 == 0).then_some(SubCode(s / 2 % SUBS));
        let radius = Radius::from_km(rng.between(2.0, 5.0)).unwrap();
        let centre = random_spot(&mut rng);
        if cats.contains(&(s % CATEGORIES)) {
            initial += pools[(s % CATEGORIES) as usize]
                .set_search(s, centre, radius, filter)
                .len();
        }
    }
    events.clear();
    let mut rng = Rng(0xfeed ^ shard as u64);

    let mut latency = Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3).unwrap();
    let (mut index_ns, mut busy_ns) = (0u128, 0u128);
    let (mut n_entered, mut n_moved, mut n_left, mut n_suppressed) = (0u64, 0u64, 0u64, 0u64);
    let mut bytes = 0usize;
    // This shard's share of the total rate: its providers' share.
    let rate = RATE * mine.len() as f64 / PROVIDERS as f64;
    let total = (rate * SECONDS) as u64;
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now();
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        // Oversleeping by the timer slack (tens of microseconds) is like an event loop's
        // wake-up: the updates that fell due meanwhile are then handled back to back.
        if wait == Wait::Sleep {
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(ahead);
            }
        }
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let t0 = Instant::now();
        let p = mine[(rng.next_u64() % mine.len() as u64) as usize];
        let old = at[p as usize];
        let pos = clamp_city(
            old.lat() + rng.between(-STEP_DEG, STEP_DEG),
            old.lon() + rng.between(-STEP_DEG, STEP_DEG),
        );
        at[p as usize] = pos;
        let cat = (p % CATEGORIES) as usize;
        let sub = SubCode(p / CATEGORIES % SUBS);
        let limit = MovedLimit {
            now_ms: (t0 - start).as_millis() as u64,
            min_interval_ms: MOVED_MIN_INTERVAL_MS,
        };
        n_suppressed += pools[cat].upsert_provider(p, pos, sub, limit, &mut events) as u64;
        let t1 = Instant::now();
        index_ns += (t1 - t0).as_nanos();
        for ev in events.drain(..) {
            match ev {
                GeoEvent::Entered {
                    provider,
                    pos,
                    distance_km,
                    ..
                }
                | GeoEvent::Moved {
                    provider,
                    pos,
                    distance_km,
                    ..
                } => {
                    let is_entered = matches!(ev, GeoEvent::Entered { .. });
                    let vars = GeoVars {
                        provider_id: &names[provider as usize],
                        latitude: pos.lat(),
                        longitude: pos.lon(),
                        distance_km,
                        pool_key: &cat_names[cat],
                        sub: &sub_names[sub.0 as usize],
                    };
                    if is_entered {
                        n_entered += 1;
                        bytes += encode(&entered, &vars, &mut json);
                    } else {
                        n_moved += 1;
                        bytes += encode(&moved, &vars, &mut json);
                    }
                }
                GeoEvent::Left { provider, .. } => {
                    n_left += 1;
                    let vars = GeoVars {
                        provider_id: &names[provider as usize],
                        latitude: f64::NAN,
                        longitude: f64::NAN,
                        distance_km: f64::NAN,
                        pool_key: &cat_names[cat],
                        sub: &sub_names[sub.0 as usize],
                    };
                    bytes += encode(&left, &vars, &mut json);
                }
            }
        }
        let t2 = Instant::now();
        busy_ns += (t2 - t0).as_nanos();
        latency
            .record(((t2 - due).as_nanos() as u64).clamp(100, 60_000_000_000))
            .unwrap();
    }
    ShardReport {
        shard,
        pools: cats.len(),
        updates: total,
        wall: start.elapsed(),
        index_ns,
        busy_ns,
        entered: n_entered,
        moved: n_moved,
        left: n_left,
        suppressed: n_suppressed,
        bytes,
        initial,
        latency,
    }
}
