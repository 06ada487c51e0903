//! Geo index micro-benchmarks: moving one provider and a 5 km radius query, at 1k, 100k and
//! 1M providers spread over a 50 km x 50 km city and over the whole globe.
//!
//! The subject, `GeoPool` (3D R-tree), runs beside two baselines kept in this file: a brute
//! force scan (the correctness oracle's algorithm) and a uniform lat/lon grid hash with cells
//! about the query radius, the structure most hand-rolled "nearby" services start with. All
//! three return the same thing, every match sorted nearest first by the same haversine; the
//! setup checks that they agree before timing them.
//!
//! `cargo bench --bench geo -- --warm-up-time 1 --measurement-time 3`; `-- --test` runs each
//! once as a smoke test.

use std::collections::HashMap;
use std::hint::black_box;

use beacon::geo::{haversine_km, GeoEvent, GeoPool, Match, MovedLimit, Position, Radius, SubCode};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
const KOZHIKODE: (f64, f64) = (11.2588, 75.7804);
const CITY_HALF_SIDE_KM: f64 = 25.0;
const KM_PER_DEGREE: f64 = 111.195;
const QUERY_KM: f64 = 5.0;
const MOVERS: usize = 4096;
const STANDING_SEARCHES: u32 = 1_000;

/// splitmix64: deterministic, dependency-free, good enough to scatter points.
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

#[derive(Clone, Copy)]
enum Spread {
    City,
    Global,
}

impl Spread {
    fn name(self) -> &'static str {
        match self {
            Spread::City => "city",
            Spread::Global => "global",
        }
    }

    fn position(self, rng: &mut Rng) -> Position {
        match self {
            Spread::City => {
                let dlat = CITY_HALF_SIDE_KM / KM_PER_DEGREE;
                let dlon = dlat / KOZHIKODE.0.to_radians().cos();
                position(
                    KOZHIKODE.0 + rng.between(-dlat, dlat),
                    KOZHIKODE.1 + rng.between(-dlon, dlon),
                )
            }
            // Uniform on the sphere, poles and antimeridian included.
            Spread::Global => position(
                rng.between(-1.0, 1.0).asin().to_degrees(),
                rng.between(-180.0, 180.0),
            ),
        }
    }
}

fn position(lat: f64, lon: f64) -> Position {
    let lon = if lon > 180.0 {
        lon - 360.0
    } else if lon < -180.0 {
        lon + 360.0
    } else {
        lon
    };
    Position::new(lat.clamp(-90.0, 90.0), lon).expect("generated position is valid")
}

/// A nearby spot, as a GPS fix moves between two updates (up to ~100 m).
fn jitter(from: Position, rng: &mut Rng) -> Position {
    let d = 0.1 / KM_PER_DEGREE;
    position(
        from.lat() + rng.between(-d, d),
        from.lon() + rng.between(-d, d),
    )
}

fn sub_of(id: u64) -> SubCode {
    SubCode((id % 4) as u32)
}

fn by_nearness(a: &Match<u64>, b: &Match<u64>) -> std::cmp::Ordering {
    a.distance_km
        .total_cmp(&b.distance_km)
        .then(a.provider.cmp(&b.provider))
}

/// Baseline: every query scans every provider.
struct BruteForce {
    providers: Vec<(Position, SubCode)>,
}

impl BruteForce {
    fn upsert(&mut self, id: u64, pos: Position, sub: SubCode) {
        self.providers[id as usize] = (pos, sub);
    }

    fn within(&self, centre: Position, radius_km: f64) -> Vec<Match<u64>> {
        let mut matches: Vec<Match<u64>> = self
            .providers
            .iter()
            .enumerate()
            .filter_map(|(id, &(pos, sub))| {
                let distance_km = haversine_km(centre, pos);
                (distance_km <= radius_km).then_some(Match {
                    provider: id as u64,
                    pos,
                    distance_km,
                    sub,
                })
            })
            .collect();
        matches.sort_unstable_by(by_nearness);
        matches
    }
}

/// A grid cell as (latitude row, longitude column).
type Cell = (i32, i32);

/// Baseline: a uniform lat/lon grid hash. Longitude cells wrap at the antimeridian; a query
/// that reaches a pole scans whole latitude rows, which is where this structure degrades.
struct Grid {
    cell_deg: f64,
    cells: HashMap<Cell, Vec<(u64, Position, SubCode)>>,
    cell_of: Vec<Cell>,
}

impl Grid {
    fn new(cell_km: f64, providers: &[(Position, SubCode)]) -> Self {
        let mut grid = Grid {
            cell_deg: cell_km / KM_PER_DEGREE,
            cells: HashMap::new(),
            cell_of: Vec::with_capacity(providers.len()),
        };
        for (id, &(pos, sub)) in providers.iter().enumerate() {
            let cell = grid.cell(pos);
            grid.cells
                .entry(cell)
                .or_default()
                .push((id as u64, pos, sub));
            grid.cell_of.push(cell);
        }
        grid
    }

    fn lon_cells(&self) -> i32 {
        (360.0 / self.cell_deg).ceil() as i32
    }

    fn cell(&self, pos: Position) -> Cell {
        let row = ((pos.lat() + 90.0) / self.cell_deg).floor() as i32;
        let col = ((pos.lon() + 180.0) / self.cell_deg).floor() as i32;
        (row, col.rem_euclid(self.lon_cells()))
    }

    fn upsert(&mut self, id: u64, pos: Position, sub: SubCode) {
        let old = self.cell_of[id as usize];
        if let Some(members) = self.cells.get_mut(&old) {
            if let Some(i) = members.iter().position(|m| m.0 == id) {
                members.swap_remove(i);
            }
        }
        let new = self.cell(pos);
        self.cells.entry(new).or_default().push((id, pos, sub));
        self.cell_of[id as usize] = new;
    }

    fn within(&self, centre: Position, radius_km: f64) -> Vec<Match<u64>> {
        let dlat = radius_km / KM_PER_DEGREE * 1.001;
        let lat_low = centre.lat() - dlat;
        let lat_high = centre.lat() + dlat;
        let widest = lat_low.abs().max(lat_high.abs());
        let lon_cells = self.lon_cells();
        let (col_low, col_high) = if widest >= 89.999 {
            (0, lon_cells - 1)
        } else {
            let dlon = dlat / widest.to_radians().cos();
            if dlon >= 180.0 {
                (0, lon_cells - 1)
            } else {
                (
                    ((centre.lon() - dlon + 180.0) / self.cell_deg).floor() as i32,
                    ((centre.lon() + dlon + 180.0) / self.cell_deg).floor() as i32,
                )
            }
        };
        let row_low = ((lat_low.max(-90.0) + 90.0) / self.cell_deg).floor() as i32;
        let row_high = ((lat_high.min(90.0) + 90.0) / self.cell_deg).floor() as i32;
        let mut matches = Vec::new();
        for row in row_low..=row_high {
            for col in col_low..=col_high {
                let Some(members) = self.cells.get(&(row, col.rem_euclid(lon_cells))) else {
                    continue;
                };
                for &(provider, pos, sub) in members {
                    let distance_km = haversine_km(centre, pos);
                    if distance_km <= radius_km {
                        matches.push(Match {
                            provider,
                            pos,
                            distance_km,
                            sub,
                        });
                    }
                }
            }
        }
        matches.sort_unstable_by(by_nearness);
        matches
    }
}

/// Each iteration moves the next of `MOVERS` providers between two nearby spots, so every
/// update is a real move and positions never drift.
struct Moves {
    moves: Vec<(u64, [Position; 2])>,
    step: usize,
}

impl Moves {
    fn next(&mut self) -> (u64, Position) {
        let (id, spots) = self.moves[self.step % self.moves.len()];
        let phase = (self.step / self.moves.len()) % 2;
        self.step += 1;
        // Providers start at spots[0], so the first pass moves them to spots[1].
        (id, spots[1 - phase])
    }
}

fn bench_size(c: &mut Criterion, spread: Spread, n: usize) {
    let mut rng = Rng(0x5eed ^ n as u64);
    let mut providers: Vec<(Position, SubCode)> = (0..n as u64)
        .map(|id| (spread.position(&mut rng), sub_of(id)))
        .collect();
    let movers = n.min(MOVERS);
    let moves: Vec<(u64, [Position; 2])> = (0..movers)
        .map(|_| {
            let id = rng.next_u64() % n as u64;
            (id, providers[id as usize].0)
        })
        .collect::<HashMap<u64, Position>>()
        .into_iter()
        .map(|(id, from)| (id, [from, jitter(from, &mut rng)]))
        .collect();
    for &(id, [start, _]) in &moves {
        providers[id as usize].0 = start;
    }
    let centres: Vec<Position> = (0..256).map(|_| spread.position(&mut rng)).collect();
    let radius = Radius::from_km(QUERY_KM).expect("valid radius");

    let mut pool: GeoPool<u64, u32> = GeoPool::with_providers(
        providers
            .iter()
            .enumerate()
            .map(|(id, &(pos, sub))| (id as u64, pos, sub)),
    );
    let mut brute = BruteForce {
        providers: providers.clone(),
    };
    let mut grid = Grid::new(QUERY_KM, &providers);
    for &centre in centres.iter().take(4) {
        let want = brute.within(centre, QUERY_KM);
        assert_eq!(pool.within(centre, radius, None), want);
        assert_eq!(grid.within(centre, QUERY_KM), want);
    }

    let mut group = c.benchmark_group(format!("geo_{}_{}", spread.name(), n));
    if n >= 1_000_000 {
        group.sample_size(10).sampling_mode(SamplingMode::Flat);
    }
    let mut events: Vec<GeoEvent<u64, u32>> = Vec::new();

    let mut plan = Moves {
        moves: moves.clone(),
        step: 0,
    };
    group.bench_function(BenchmarkId::new("update_rstar", n), |b| {
        b.iter(|| {
            let (id, pos) = plan.next();
            pool.upsert_provider(id, pos, sub_of(id), MovedLimit::NONE, &mut events);
            events.clear();
        })
    });
    let mut plan = Moves {
        moves: moves.clone(),
        step: 0,
    };
    group.bench_function(BenchmarkId::new("update_brute", n), |b| {
        b.iter(|| {
            let (id, pos) = plan.next();
            brute.upsert(id, pos, sub_of(id));
        })
    });
    let mut plan = Moves {
        moves: moves.clone(),
        step: 0,
    };
    group.bench_function(BenchmarkId::new("update_grid", n), |b| {
        b.iter(|| {
            let (id, pos) = plan.next();
            grid.upsert(id, pos, sub_of(id));
        })
    });

    let mut next_centre = centres.iter().copied().cycle();
    group.bench_function(BenchmarkId::new("query5km_rstar", n), |b| {
        b.iter(|| black_box(pool.within(next_centre.next().unwrap_or(centres[0]), radius, None)))
    });
    group.bench_function(BenchmarkId::new("nearest20_rstar", n), |b| {
        b.iter(|| {
            black_box(pool.nearest(next_centre.next().unwrap_or(centres[0]), radius, None, 20))
        })
    });
    group.bench_function(BenchmarkId::new("query5km_brute", n), |b| {
        b.iter(|| black_box(brute.within(next_centre.next().unwrap_or(centres[0]), QUERY_KM)))
    });
    group.bench_function(BenchmarkId::new("query5km_grid", n), |b| {
        b.iter(|| black_box(grid.within(next_centre.next().unwrap_or(centres[0]), QUERY_KM)))
    });

    // The same pool with standing searches: each move now also finds and re-evaluates the
    // searches whose boxes hold its old or new point, and emits their events.
    for seeker in 0..STANDING_SEARCHES {
        let centre = spread.position(&mut rng);
        black_box(pool.set_search(seeker, centre, radius, None));
    }
    let mut plan = Moves { moves, step: 0 };
    group.bench_function(
        BenchmarkId::new(format!("update_rstar_{STANDING_SEARCHES}_searches"), n),
        |b| {
            b.iter(|| {
                let (id, pos) = plan.next();
                pool.upsert_provider(id, pos, sub_of(id), MovedLimit::NONE, &mut events);
                events.clear();
            })
        },
    );
    group.finish();
}

fn geo(c: &mut Criterion) {
    for spread in [Spread::City, Spread::Global] {
        for n in SIZES {
            bench_size(c, spread, n);
        }
    }
}

criterion_group!(benches, geo);
criterion_main!(benches);
