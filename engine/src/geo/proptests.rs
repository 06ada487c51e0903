//! The pool against a brute-force oracle that keeps plain vectors and recomputes everything
//! with the same [`haversine_km`] after every operation: every query's matches and order, and
//! every notification (`Entered` / `Moved` / `Left`, with positions and distances, and which
//! `Moved` the rate limit holds back) must be exactly the oracle's.
//!
//! Positions cluster around the poles, the antimeridian and one city so that searches and
//! providers overlap often, with exact repeats for distance ties. The case count is proptest's
//! default, overridable with `PROPTEST_CASES`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

type Pool = GeoPool<u64, u32>;

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        id: u64,
        pos: Position,
        sub: u32,
        /// Milliseconds the clock moves on before this update.
        after_ms: u64,
    },
    Remove {
        id: u64,
    },
    SetSearch {
        seeker: u32,
        centre: Position,
        radius: Radius,
        sub_filter: Option<u32>,
    },
    ClearSearch {
        seeker: u32,
    },
    Nearest {
        centre: Position,
        radius: Radius,
        sub_filter: Option<u32>,
        max: usize,
    },
}

const ANCHORS: [(f64, f64); 8] = [
    (90.0, 0.0),
    (-90.0, 0.0),
    (0.0, 180.0),
    (0.0, -180.0),
    (89.99, 179.99),
    (-60.0, -179.95),
    (11.2588, 75.7804),
    (11.2588, 75.7804),
];

fn wrap_lon(lon: f64) -> f64 {
    if lon > 180.0 {
        lon - 360.0
    } else if lon < -180.0 {
        lon + 360.0
    } else {
        lon
    }
}

fn position() -> impl Strategy<Value = Position> {
    let near_anchor = (0..ANCHORS.len(), -0.2f64..0.2, -0.5f64..0.5).prop_map(|(i, dlat, dlon)| {
        let (lat, lon) = ANCHORS[i];
        Position::new((lat + dlat).clamp(-90.0, 90.0), wrap_lon(lon + dlon)).unwrap()
    });
    let exact_anchor =
        (0..ANCHORS.len()).prop_map(|i| Position::new(ANCHORS[i].0, ANCHORS[i].1).unwrap());
    let anywhere = (-90.0f64..=90.0, -180.0f64..=180.0)
        .prop_map(|(lat, lon)| Position::new(lat, lon).unwrap());
    // Steps of tens of metres stay within the provider tree's anchor slack (about 100 m).
    let close_to_anchor =
        (0..ANCHORS.len(), -0.0006f64..0.0006, -0.0006f64..0.0006).prop_map(|(i, dlat, dlon)| {
            let (lat, lon) = ANCHORS[i];
            Position::new((lat + dlat).clamp(-90.0, 90.0), wrap_lon(lon + dlon)).unwrap()
        });
    prop_oneof![5 => near_anchor, 3 => close_to_anchor, 2 => exact_anchor, 1 => anywhere]
}

fn radius() -> impl Strategy<Value = Radius> {
    prop_oneof![
        // About the size of a step and of the provider tree's anchor slack.
        4 => 0.005f64..0.2,
        8 => 0.01f64..60.0,
        1 => 60.0f64..5_000.0,
        1 => 5_000.0f64..=MAX_RADIUS_KM,
    ]
    .prop_map(|km| Radius::from_km(km).unwrap())
}

fn sub_filter() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![2 => Just(None), 1 => (0u32..3).prop_map(Some)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Coarse clock steps so that updates land exactly on the rate limit's boundary too.
        8 => (0u64..12, position(), 0u32..3, 0u64..5).prop_map(
            |(id, pos, sub, quarters)| Op::Upsert { id, pos, sub, after_ms: quarters * 250 }
        ),
        2 => (0u64..12).prop_map(|id| Op::Remove { id }),
        3 => (0u32..4, position(), radius(), sub_filter()).prop_map(
            |(seeker, centre, radius, sub_filter)| Op::SetSearch { seeker, centre, radius, sub_filter }
        ),
        1 => (0u32..4).prop_map(|seeker| Op::ClearSearch { seeker }),
        2 => (position(), radius(), sub_filter(), 0usize..6).prop_map(
            |(centre, radius, sub_filter, max)| Op::Nearest { centre, radius, sub_filter, max }
        ),
    ]
}

struct OracleSearch {
    seeker: u32,
    centre: Position,
    radius: Radius,
    sub_filter: Option<SubCode>,
    /// In-range providers and when their last `Moved` (or `Entered`) went out; `None` for the
    /// search's first answer.
    in_range: BTreeMap<u64, Option<u64>>,
}

#[derive(Default)]
struct Oracle {
    providers: Vec<(u64, Position, SubCode)>,
    searches: Vec<OracleSearch>,
    now_ms: u64,
    min_interval_ms: u64,
}

impl Oracle {
    fn within(
        &self,
        centre: Position,
        radius: Radius,
        sub_filter: Option<SubCode>,
    ) -> Vec<Match<u64>> {
        let mut matches: Vec<Match<u64>> = self
            .providers
            .iter()
            .filter(|(_, _, sub)| sub_filter.is_none_or(|f| f == *sub))
            .map(|&(provider, pos, sub)| Match {
                provider,
                pos,
                distance_km: haversine_km(centre, pos),
                sub,
            })
            .filter(|m| m.distance_km <= radius.km())
            .collect();
        matches.sort_by(|a, b| {
            a.distance_km
                .partial_cmp(&b.distance_km)
                .unwrap_or(Ordering::Equal)
                .then(a.provider.cmp(&b.provider))
        });
        matches
    }

    fn position_of(&self, id: u64) -> Option<Position> {
        self.providers.iter().find(|p| p.0 == id).map(|p| p.1)
    }

    /// Recomputes every search's in-range set from scratch and returns the difference as
    /// events, and how many `Moved` the rate limit held back; `moved` is the provider whose
    /// position just changed, if any.
    fn refresh(&mut self, moved: Option<u64>) -> (Vec<GeoEvent<u64, u32>>, usize) {
        let (now_ms, interval) = (self.now_ms, self.min_interval_ms);
        let mut events = Vec::new();
        let mut held_back = 0;
        let fresh: Vec<Vec<Match<u64>>> = self
            .searches
            .iter()
            .map(|s| self.within(s.centre, s.radius, s.sub_filter))
            .collect();
        for (search, now) in self.searches.iter_mut().zip(fresh) {
            let now_ids: BTreeSet<u64> = now.iter().map(|m| m.provider).collect();
            let mut next = BTreeMap::new();
            for m in &now {
                match search.in_range.get(&m.provider) {
                    None => {
                        events.push(GeoEvent::Entered {
                            seeker: search.seeker,
                            provider: m.provider,
                            pos: m.pos,
                            distance_km: m.distance_km,
                        });
                        next.insert(m.provider, Some(now_ms));
                    }
                    Some(&last) if moved == Some(m.provider) => {
                        if last.is_some_and(|last| now_ms < last + interval) {
                            held_back += 1;
                            next.insert(m.provider, last);
                        } else {
                            events.push(GeoEvent::Moved {
                                seeker: search.seeker,
                                provider: m.provider,
                                pos: m.pos,
                                distance_km: m.distance_km,
                            });
                            next.insert(m.provider, Some(now_ms));
                        }
                    }
                    Some(&last) => {
                        next.insert(m.provider, last);
                    }
                }
            }
            for &gone in search.in_range.keys() {
                if !now_ids.contains(&gone) {
                    events.push(GeoEvent::Left {
                        seeker: search.seeker,
                        provider: gone,
                    });
                }
            }
            search.in_range = next;
        }
        (events, held_back)
    }
}

fn event_key(event: &GeoEvent<u64, u32>) -> (u32, u64, u8) {
    match *event {
        GeoEvent::Entered {
            seeker, provider, ..
        } => (seeker, provider, 0),
        GeoEvent::Moved {
            seeker, provider, ..
        } => (seeker, provider, 1),
        GeoEvent::Left { seeker, provider } => (seeker, provider, 2),
    }
}

fn sorted(mut events: Vec<GeoEvent<u64, u32>>) -> Vec<GeoEvent<u64, u32>> {
    events.sort_by_key(event_key);
    events
}

fn apply(pool: &mut Pool, oracle: &mut Oracle, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::Upsert {
            id,
            pos,
            sub,
            after_ms,
        } => {
            let sub = SubCode(sub);
            oracle.now_ms += after_ms;
            let limit = MovedLimit {
                now_ms: oracle.now_ms,
                min_interval_ms: oracle.min_interval_ms,
            };
            let mut events = Vec::new();
            let held_back = pool.upsert_provider(id, pos, sub, limit, &mut events);
            let moved = oracle.position_of(id).is_some_and(|old| old != pos);
            oracle.providers.retain(|p| p.0 != id);
            oracle.providers.push((id, pos, sub));
            let (expected, expected_held_back) = oracle.refresh(moved.then_some(id));
            prop_assert_eq!(sorted(events), sorted(expected), "after {:?}", op);
            prop_assert_eq!(held_back, expected_held_back, "after {:?}", op);
        }
        Op::Remove { id } => {
            let mut events = Vec::new();
            let was_active = pool.remove_provider(id, &mut events);
            prop_assert_eq!(was_active, oracle.position_of(id).is_some());
            oracle.providers.retain(|p| p.0 != id);
            let (expected, _) = oracle.refresh(None);
            prop_assert_eq!(sorted(events), sorted(expected), "after {:?}", op);
        }
        Op::SetSearch {
            seeker,
            centre,
            radius,
            sub_filter,
        } => {
            let sub_filter = sub_filter.map(SubCode);
            let got = pool.set_search(seeker, centre, radius, sub_filter);
            let want = oracle.within(centre, radius, sub_filter);
            prop_assert_eq!(&got, &want, "after {:?}", op);
            oracle.searches.retain(|s| s.seeker != seeker);
            oracle.searches.push(OracleSearch {
                seeker,
                centre,
                radius,
                sub_filter,
                in_range: want.iter().map(|m| (m.provider, None)).collect(),
            });
        }
        Op::ClearSearch { seeker } => {
            let had = oracle.searches.iter().any(|s| s.seeker == seeker);
            prop_assert_eq!(pool.clear_search(seeker), had);
            oracle.searches.retain(|s| s.seeker != seeker);
        }
        Op::Nearest {
            centre,
            radius,
            sub_filter,
            max,
        } => {
            let sub_filter = sub_filter.map(SubCode);
            let got = pool.nearest(centre, radius, sub_filter, max);
            let mut want = oracle.within(centre, radius, sub_filter);
            want.truncate(max);
            prop_assert_eq!(&got, &want, "after {:?}", op);
            prop_assert_eq!(
                pool.within(centre, radius, sub_filter),
                oracle.within(centre, radius, sub_filter)
            );
        }
    }
    prop_assert_eq!(pool.provider_count(), oracle.providers.len());
    prop_assert_eq!(pool.search_count(), oracle.searches.len());
    let in_range: usize = oracle.searches.iter().map(|s| s.in_range.len()).sum();
    prop_assert_eq!(pool.in_range_count(), in_range);
    Ok(())
}

proptest! {
    #[test]
    fn pool_agrees_with_brute_force_oracle(
        ops in proptest::collection::vec(op(), 1..80),
        min_interval_ms in prop_oneof![Just(0u64), Just(500), Just(1_000), 1u64..2_000],
    ) {
        let mut pool = Pool::new();
        let mut oracle = Oracle {
            min_interval_ms,
            ..Oracle::default()
        };
        for op in &ops {
            apply(&mut pool, &mut oracle, op)?;
        }
    }

    #[test]
    fn bulk_loaded_pool_agrees_with_oracle(
        providers in proptest::collection::vec((0u64..40, position(), 0u32..3), 0..60),
        queries in proptest::collection::vec((position(), radius(), sub_filter(), 0usize..8), 1..10),
    ) {
        let pool: Pool = GeoPool::with_providers(
            providers.iter().map(|&(id, pos, sub)| (id, pos, SubCode(sub))),
        );
        let mut oracle = Oracle::default();
        for &(id, pos, sub) in &providers {
            oracle.providers.retain(|p| p.0 != id);
            oracle.providers.push((id, pos, SubCode(sub)));
        }
        for (centre, radius, sub_filter, max) in queries {
            let sub_filter = sub_filter.map(SubCode);
            let want = oracle.within(centre, radius, sub_filter);
            prop_assert_eq!(pool.within(centre, radius, sub_filter), want.clone());
            prop_assert_eq!(pool.nearest(centre, radius, sub_filter, max), want[..want.len().min(max)].to_vec());
        }
    }
}
