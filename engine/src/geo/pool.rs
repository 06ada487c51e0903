//! One pool of providers and the standing searches over it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::hash::Hash;

// Provider updates do a handful of id lookups per affected search; SipHash dominated them in
// benches/geo.rs. foldhash keeps a per-process random seed.
use foldhash::{HashMap, HashMapExt, HashSet};

use rstar::{Envelope, PointDistance, RTree, RTreeObject, AABB};

use super::position::{haversine_km, widened_chord, Position, Radius};

/// Identifiers the pool keys providers and seekers by. The engine maps its user ids to these;
/// `Ord` gives the deterministic tie-break between equally distant providers.
pub trait GeoId: Copy + Eq + Hash + Ord {}

impl<T: Copy + Eq + Hash + Ord> GeoId for T {}

/// A provider's subcategory, interned to a number by the caller. Crosses shards (Send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubCode(pub u32);

/// An active provider matching a query, as returned by [`GeoPool::set_search`],
/// [`GeoPool::within`] and [`GeoPool::nearest`]. Crosses shards (Send).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match<P> {
    pub provider: P,
    pub pos: Position,
    pub distance_km: f64,
    pub sub: SubCode,
}

/// A change in one standing search's set of in-range providers. Crosses shards (Send).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GeoEvent<P, S> {
    /// The provider now matches the search and did not before: it became active inside the
    /// radius, moved into it, or changed to a subcategory the search accepts.
    Entered {
        seeker: S,
        provider: P,
        pos: Position,
        distance_km: f64,
    },
    /// The provider still matches and its position changed.
    Moved {
        seeker: S,
        provider: P,
        pos: Position,
        distance_km: f64,
    },
    /// The provider matched and no longer does: it moved out, changed subcategory, or was
    /// removed.
    Left { seeker: S, provider: P },
}

/// A provider as stored in the R-tree. Position and subcategory ride along so that queries
/// decide each candidate without a hash lookup.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ProviderPoint<P> {
    point: [f64; 3],
    pos: Position,
    sub: SubCode,
    id: P,
}

impl<P> RTreeObject for ProviderPoint<P> {
    type Envelope = AABB<[f64; 3]>;

    fn envelope(&self) -> Self::Envelope {
        AABB::from_point(self.point)
    }
}

impl<P> PointDistance for ProviderPoint<P> {
    fn distance_2(&self, other: &[f64; 3]) -> f64 {
        let [dx, dy, dz] = [
            self.point[0] - other[0],
            self.point[1] - other[1],
            self.point[2] - other[2],
        ];
        dx * dx + dy * dy + dz * dz
    }

    fn contains_point(&self, other: &[f64; 3]) -> bool {
        self.point == *other
    }
}

/// A standing search as stored in the search R-tree: the box around its (widened) ball.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SearchBounds<S> {
    bounds: AABB<[f64; 3]>,
    seeker: S,
}

impl<S> RTreeObject for SearchBounds<S> {
    type Envelope = AABB<[f64; 3]>;

    fn envelope(&self) -> Self::Envelope {
        self.bounds
    }
}

struct Search<P> {
    centre: Position,
    radius: Radius,
    sub_filter: Option<SubCode>,
    bounds: AABB<[f64; 3]>,
    in_range: HashSet<P>,
}

impl<P> Search<P> {
    /// The distance if a provider at `pos` with `sub` matches, decided exactly as the oracle
    /// would: haversine against the radius.
    fn distance_if_matching(&self, pos: Position, sub: SubCode) -> Option<f64> {
        if !accepts(self.sub_filter, sub) {
            return None;
        }
        let distance_km = haversine_km(self.centre, pos);
        (distance_km <= self.radius.km()).then_some(distance_km)
    }
}

fn accepts(sub_filter: Option<SubCode>, sub: SubCode) -> bool {
    sub_filter.is_none_or(|wanted| wanted == sub)
}

/// Nearest first, then lowest id: the one order every query returns.
fn nearness<P: Ord>(a: &Match<P>, b: &Match<P>) -> Ordering {
    a.distance_km
        .total_cmp(&b.distance_km)
        .then_with(|| a.provider.cmp(&b.provider))
}

/// Heap entry for [`GeoPool::nearest`]: the greatest is the worst of the best so far.
struct ByNearness<P>(Match<P>);

impl<P: Ord> PartialEq for ByNearness<P> {
    fn eq(&self, other: &Self) -> bool {
        nearness(&self.0, &other.0) == Ordering::Equal
    }
}

impl<P: Ord> Eq for ByNearness<P> {}

impl<P: Ord> PartialOrd for ByNearness<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<P: Ord> Ord for ByNearness<P> {
    fn cmp(&self, other: &Self) -> Ordering {
        nearness(&self.0, &other.0)
    }
}

fn point_bounds(point: [f64; 3]) -> AABB<[f64; 3]> {
    AABB::from_point(point)
}

/// Box around the ball of radius `chord` at `centre`; it contains the search's spherical cap.
fn ball_bounds(centre: [f64; 3], chord: f64) -> AABB<[f64; 3]> {
    AABB::from_corners(
        [centre[0] - chord, centre[1] - chord, centre[2] - chord],
        [centre[0] + chord, centre[1] + chord, centre[2] + chord],
    )
}

/// The active providers of one pool (e.g. one category) and the seekers' standing searches
/// over them, with each search's exact set of in-range providers. Owned by the pool's owner
/// shard.
///
/// `P` identifies providers and `S` seekers. Every operation is O(log n + k) expected, where
/// k is the number of providers or searches near the positions involved.
pub struct GeoPool<P, S> {
    providers: HashMap<P, ProviderPoint<P>>,
    provider_tree: RTree<ProviderPoint<P>>,
    searches: HashMap<S, Search<P>>,
    search_tree: RTree<SearchBounds<S>>,
    in_range_total: usize,
}

impl<P: GeoId, S: GeoId> Default for GeoPool<P, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: GeoId, S: GeoId> GeoPool<P, S> {
    pub fn new() -> Self {
        Self {
            providers: HashMap::new(),
            provider_tree: RTree::new(),
            searches: HashMap::new(),
            search_tree: RTree::new(),
            in_range_total: 0,
        }
    }

    /// A pool with these providers and no searches, built by bulk loading (much faster than
    /// one upsert each, e.g. when a shard restores a pool). A repeated id keeps its last entry.
    pub fn with_providers(providers: impl IntoIterator<Item = (P, Position, SubCode)>) -> Self {
        let providers: HashMap<P, ProviderPoint<P>> = providers
            .into_iter()
            .map(|(id, pos, sub)| {
                let point = pos.unit_vector();
                (
                    id,
                    ProviderPoint {
                        point,
                        pos,
                        sub,
                        id,
                    },
                )
            })
            .collect();
        let provider_tree = RTree::bulk_load(providers.values().copied().collect());
        Self {
            providers,
            provider_tree,
            ..Self::new()
        }
    }

    /// Number of active providers.
    pub fn provider_count(&self) -> usize {
        self.providers.len()
    }

    /// Number of standing searches.
    pub fn search_count(&self) -> usize {
        self.searches.len()
    }

    /// Number of (search, provider) pairs currently in range, summed over all searches.
    pub fn in_range_count(&self) -> usize {
        self.in_range_total
    }

    /// A provider's current position and subcategory, if it is active.
    pub fn provider(&self, id: P) -> Option<(Position, SubCode)> {
        self.providers.get(&id).map(|p| (p.pos, p.sub))
    }

    /// Makes a provider active at `pos` with `sub`, or moves / re-categorises it, and appends
    /// to `events` the transitions of every search it affects (in no particular order).
    ///
    /// An update that changes neither position nor subcategory emits nothing.
    pub fn upsert_provider(
        &mut self,
        id: P,
        pos: Position,
        sub: SubCode,
        events: &mut Vec<GeoEvent<P, S>>,
    ) {
        let new = ProviderPoint {
            point: pos.unit_vector(),
            pos,
            sub,
            id,
        };
        let old = self.providers.insert(id, new);
        if let Some(old) = old {
            if old.pos == pos && old.sub == sub {
                return;
            }
            self.provider_tree.remove(&old);
        }
        self.provider_tree.insert(new);
        let moved = old.is_some_and(|old| old.pos != pos);

        // Every search the provider can match after the update has its box around the new
        // point, so these are all the candidates for Entered and Moved, and for Left where the
        // new point is still inside the box.
        for candidate in self
            .search_tree
            .locate_in_envelope_intersecting(&point_bounds(new.point))
        {
            let Some(search) = self.searches.get_mut(&candidate.seeker) else {
                continue;
            };
            let seeker = candidate.seeker;
            match search.distance_if_matching(pos, sub) {
                Some(distance_km) => {
                    if search.in_range.insert(id) {
                        self.in_range_total += 1;
                        events.push(GeoEvent::Entered {
                            seeker,
                            provider: id,
                            pos,
                            distance_km,
                        });
                    } else if moved {
                        events.push(GeoEvent::Moved {
                            seeker,
                            provider: id,
                            pos,
                            distance_km,
                        });
                    }
                }
                None => {
                    if search.in_range.remove(&id) {
                        self.in_range_total -= 1;
                        events.push(GeoEvent::Left {
                            seeker,
                            provider: id,
                        });
                    }
                }
            }
        }

        // A search that had the provider has its box around the old point. If that box does
        // not hold the new point, the loop above did not see it and the provider cannot match
        // it any more.
        let Some(old) = old else {
            return;
        };
        if old.point == new.point {
            return;
        }
        for candidate in self
            .search_tree
            .locate_in_envelope_intersecting(&point_bounds(old.point))
        {
            if candidate.bounds.contains_point(&new.point) {
                continue;
            }
            let Some(search) = self.searches.get_mut(&candidate.seeker) else {
                continue;
            };
            if search.in_range.remove(&id) {
                self.in_range_total -= 1;
                events.push(GeoEvent::Left {
                    seeker: candidate.seeker,
                    provider: id,
                });
            }
        }
    }

    /// Makes a provider inactive (went offline, disconnected) and appends a `Left` for every
    /// search that had it in range. Returns whether it was active.
    pub fn remove_provider(&mut self, id: P, events: &mut Vec<GeoEvent<P, S>>) -> bool {
        let Some(old) = self.providers.remove(&id) else {
            return false;
        };
        self.provider_tree.remove(&old);
        for candidate in self
            .search_tree
            .locate_in_envelope_intersecting(&point_bounds(old.point))
        {
            let Some(search) = self.searches.get_mut(&candidate.seeker) else {
                continue;
            };
            if search.in_range.remove(&id) {
                self.in_range_total -= 1;
                events.push(GeoEvent::Left {
                    seeker: candidate.seeker,
                    provider: id,
                });
            }
        }
        true
    }

    /// Starts (or replaces) `seeker`'s standing search and returns its current matches,
    /// nearest first, ties by provider id. From now on, provider updates report this search's
    /// transitions relative to exactly this set.
    pub fn set_search(
        &mut self,
        seeker: S,
        centre: Position,
        radius: Radius,
        sub_filter: Option<SubCode>,
    ) -> Vec<Match<P>> {
        self.clear_search(seeker);
        let matches = self.within(centre, radius, sub_filter);
        let in_range: HashSet<P> = matches.iter().map(|m| m.provider).collect();
        self.in_range_total += in_range.len();
        let bounds = ball_bounds(centre.unit_vector(), radius.query_chord());
        self.search_tree.insert(SearchBounds { bounds, seeker });
        self.searches.insert(
            seeker,
            Search {
                centre,
                radius,
                sub_filter,
                bounds,
                in_range,
            },
        );
        matches
    }

    /// Ends `seeker`'s standing search. Returns whether it had one.
    pub fn clear_search(&mut self, seeker: S) -> bool {
        let Some(search) = self.searches.remove(&seeker) else {
            return false;
        };
        self.in_range_total -= search.in_range.len();
        self.search_tree.remove(&SearchBounds {
            bounds: search.bounds,
            seeker,
        });
        true
    }

    /// Every active provider matching `sub_filter` within `radius` of `centre`, nearest first,
    /// ties by provider id. A one-shot query: nothing is stored.
    pub fn within(
        &self,
        centre: Position,
        radius: Radius,
        sub_filter: Option<SubCode>,
    ) -> Vec<Match<P>> {
        let chord = radius.query_chord();
        let mut matches: Vec<Match<P>> = self
            .provider_tree
            .locate_within_distance(centre.unit_vector(), chord * chord)
            .filter(|p| accepts(sub_filter, p.sub))
            .filter_map(|p| {
                let distance_km = haversine_km(centre, p.pos);
                (distance_km <= radius.km()).then_some(Match {
                    provider: p.id,
                    pos: p.pos,
                    distance_km,
                    sub: p.sub,
                })
            })
            .collect();
        matches.sort_unstable_by(nearness);
        matches
    }

    /// The `max` nearest active providers matching `sub_filter` within `radius` of `centre`,
    /// nearest first, ties by provider id (e.g. whom to offer a job to first).
    pub fn nearest(
        &self,
        centre: Position,
        radius: Radius,
        sub_filter: Option<SubCode>,
        max: usize,
    ) -> Vec<Match<P>> {
        if max == 0 {
            return Vec::new();
        }
        let radius_chord = radius.query_chord();
        let mut stop_2 = radius_chord * radius_chord;
        let mut best: BinaryHeap<ByNearness<P>> = BinaryHeap::with_capacity(max.min(1024) + 1);
        for (p, chord_2) in self
            .provider_tree
            .nearest_neighbor_iter_with_distance_2(&centre.unit_vector())
        {
            if chord_2 > stop_2 {
                break;
            }
            if !accepts(sub_filter, p.sub) {
                continue;
            }
            let distance_km = haversine_km(centre, p.pos);
            if distance_km > radius.km() {
                continue;
            }
            best.push(ByNearness(Match {
                provider: p.id,
                pos: p.pos,
                distance_km,
                sub: p.sub,
            }));
            if best.len() > max {
                best.pop();
            }
            if best.len() == max {
                // The tree yields candidates by chord, the answer is ordered by haversine; they
                // agree up to rounding, so keep going until the chord is past the current worst
                // by more than the slack, which catches ties that sort before it by id.
                if let Some(worst) = best.peek() {
                    let worst_chord = widened_chord(worst.0.distance_km);
                    stop_2 = stop_2.min(worst_chord * worst_chord);
                }
            }
        }
        let mut matches: Vec<Match<P>> = best.into_iter().map(|b| b.0).collect();
        matches.sort_unstable_by(nearness);
        matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pool = GeoPool<u64, u32>;

    fn pos(lat: f64, lon: f64) -> Position {
        Position::new(lat, lon).unwrap()
    }

    fn km(km: f64) -> Radius {
        Radius::from_km(km).unwrap()
    }

    fn ids(matches: &[Match<u64>]) -> Vec<u64> {
        matches.iter().map(|m| m.provider).collect()
    }

    const KOZHIKODE: (f64, f64) = (11.2588, 75.7804);

    fn upsert(pool: &mut Pool, id: u64, at: Position, sub: u32) -> Vec<GeoEvent<u64, u32>> {
        let mut events = Vec::new();
        pool.upsert_provider(id, at, SubCode(sub), &mut events);
        events
    }

    #[test]
    fn search_lists_matches_nearest_first_with_id_tie_break() {
        let mut pool = Pool::new();
        let centre = pos(KOZHIKODE.0, KOZHIKODE.1);
        upsert(&mut pool, 9, pos(11.27, 75.78), 1);
        upsert(&mut pool, 3, pos(11.27, 75.78), 1);
        upsert(&mut pool, 5, pos(11.26, 75.78), 1);
        upsert(&mut pool, 7, pos(11.26, 75.78), 2);
        upsert(&mut pool, 1, pos(12.5, 75.78), 1);
        let matches = pool.set_search(10, centre, km(5.0), Some(SubCode(1)));
        assert_eq!(ids(&matches), vec![5, 3, 9]);
        assert_eq!(matches[1].distance_km, matches[2].distance_km);
        let all = pool.within(centre, km(5.0), None);
        assert_eq!(ids(&all), vec![5, 7, 3, 9]);
        assert_eq!(ids(&pool.nearest(centre, km(5.0), None, 3)), vec![5, 7, 3]);
        assert_eq!(pool.nearest(centre, km(5.0), None, 0), vec![]);
        assert_eq!(pool.in_range_count(), 3);
    }

    #[test]
    fn radius_boundary_is_inclusive() {
        let mut pool = Pool::new();
        let centre = pos(45.0, 179.99);
        let edge = pos(45.01, -179.98);
        upsert(&mut pool, 1, edge, 0);
        let exact = haversine_km(centre, edge);
        assert_eq!(ids(&pool.within(centre, km(exact), None)), vec![1]);
        let below = f64::from_bits(exact.to_bits() - 1);
        assert_eq!(
            ids(&pool.within(centre, km(below), None)),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn moves_emit_entered_moved_left() {
        let mut pool = Pool::new();
        let centre = pos(0.0, 179.95);
        assert!(pool.set_search(1, centre, km(10.0), None).is_empty());

        let far = pos(0.0, -179.0);
        assert_eq!(upsert(&mut pool, 42, far, 0), vec![]);

        let near = pos(0.0, -179.99);
        let d_near = haversine_km(centre, near);
        assert_eq!(
            upsert(&mut pool, 42, near, 0),
            vec![GeoEvent::Entered {
                seeker: 1,
                provider: 42,
                pos: near,
                distance_km: d_near
            }]
        );
        assert_eq!(upsert(&mut pool, 42, near, 0), vec![]);

        let nearer = pos(0.0, 179.96);
        let d = haversine_km(centre, nearer);
        assert_eq!(
            upsert(&mut pool, 42, nearer, 0),
            vec![GeoEvent::Moved {
                seeker: 1,
                provider: 42,
                pos: nearer,
                distance_km: d
            }]
        );
        // Still inside, only the subcategory changed: nothing to say to an unfiltered search.
        assert_eq!(upsert(&mut pool, 42, nearer, 3), vec![]);

        assert_eq!(
            upsert(&mut pool, 42, far, 0),
            vec![GeoEvent::Left {
                seeker: 1,
                provider: 42
            }]
        );
        assert_eq!(pool.in_range_count(), 0);
    }

    #[test]
    fn sub_change_leaves_and_enters_a_filtered_search() {
        let mut pool = Pool::new();
        let centre = pos(-89.99, 0.0);
        let spot = pos(-89.995, 120.0);
        upsert(&mut pool, 7, spot, 1);
        assert_eq!(
            ids(&pool.set_search(2, centre, km(5.0), Some(SubCode(1)))),
            vec![7]
        );
        assert_eq!(
            upsert(&mut pool, 7, spot, 2),
            vec![GeoEvent::Left {
                seeker: 2,
                provider: 7
            }]
        );
        let back = upsert(&mut pool, 7, spot, 1);
        assert!(matches!(
            back[..],
            [GeoEvent::Entered {
                seeker: 2,
                provider: 7,
                ..
            }]
        ));
    }

    #[test]
    fn remove_provider_leaves_every_search_that_had_it() {
        let mut pool = Pool::new();
        let at = pos(89.999, 10.0);
        upsert(&mut pool, 1, at, 0);
        pool.set_search(100, pos(90.0, 0.0), km(1.0), None);
        pool.set_search(200, pos(89.999, -170.0), km(1.0), None);
        pool.set_search(300, pos(0.0, 0.0), km(1.0), None);
        let mut events = Vec::new();
        assert!(pool.remove_provider(1, &mut events));
        events.sort_by_key(|e| match e {
            GeoEvent::Left { seeker, .. } => *seeker,
            _ => u32::MAX,
        });
        assert_eq!(
            events,
            vec![
                GeoEvent::Left {
                    seeker: 100,
                    provider: 1
                },
                GeoEvent::Left {
                    seeker: 200,
                    provider: 1
                }
            ]
        );
        assert!(!pool.remove_provider(1, &mut events));
        assert_eq!(pool.provider_count(), 0);
        assert_eq!(pool.in_range_count(), 0);
    }

    #[test]
    fn replaced_and_cleared_searches_stop_reporting() {
        let mut pool = Pool::new();
        let a = pos(10.0, 10.0);
        let b = pos(20.0, 20.0);
        pool.set_search(1, a, km(5.0), None);
        pool.set_search(1, b, km(5.0), None);
        assert_eq!(pool.search_count(), 1);
        assert_eq!(upsert(&mut pool, 5, a, 0), vec![]);
        assert_eq!(upsert(&mut pool, 6, b, 0).len(), 1);
        assert!(pool.clear_search(1));
        assert!(!pool.clear_search(1));
        assert_eq!(upsert(&mut pool, 6, pos(20.001, 20.0), 0), vec![]);
        assert_eq!(pool.in_range_count(), 0);
    }

    #[test]
    fn bulk_loaded_pool_answers_like_an_incremental_one() {
        let points: Vec<(u64, Position, SubCode)> = (0..500u64)
            .map(|i| {
                let lat = -89.0 + (i as f64 * 0.357) % 178.0;
                let lon = -180.0 + (i as f64 * 7.13) % 360.0;
                (i, pos(lat, lon), SubCode((i % 3) as u32))
            })
            .collect();
        let bulk: Pool = GeoPool::with_providers(points.iter().copied());
        let mut incremental = Pool::new();
        for &(id, at, sub) in &points {
            incremental.upsert_provider(id, at, sub, &mut Vec::new());
        }
        assert_eq!(bulk.provider_count(), 500);
        let centre = pos(30.0, 100.0);
        for r in [50.0, 500.0, 5000.0, 20_000.0] {
            let want = incremental.within(centre, km(r), Some(SubCode(1)));
            assert_eq!(bulk.within(centre, km(r), Some(SubCode(1))), want);
            let n = bulk.nearest(centre, km(r), Some(SubCode(1)), 7);
            assert_eq!(n[..], want[..want.len().min(7)]);
        }
    }
}
