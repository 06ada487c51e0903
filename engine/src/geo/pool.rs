//! One pool of providers and the standing searches over it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::hash::Hash;

// Provider updates do one id lookup each; SipHash dominated them in benches/geo.rs. foldhash
// keeps a per-process random seed.
use foldhash::{HashMap, HashMapExt};

use rstar::{PointDistance, RTree, RTreeObject, AABB};

use super::position::{
    chord_2, haversine_with, widened_chord, LatTerms, Position, Radius, EARTH_RADIUS_KM,
};
use super::search_grid::{Ball, SearchGrid};

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
    /// The provider still matches, its position changed, and the [`MovedLimit`] let it through.
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

/// The `moved` rate limit for one update, with the caller's clock. Crosses shards (Send).
///
/// At most one [`GeoEvent::Moved`] per (search, provider) every `min_interval_ms`, judged at
/// `now_ms` (passed in: the pool never reads a clock). An `Entered` restarts the interval,
/// because it carried the position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MovedLimit {
    pub now_ms: u64,
    pub min_interval_ms: u64,
}

impl MovedLimit {
    /// Every move is reported.
    pub const NONE: MovedLimit = MovedLimit {
        now_ms: 0,
        min_interval_ms: 0,
    };

    fn holds_back(self, last_ms: u64) -> bool {
        last_ms != NEVER_MOVED && self.now_ms < last_ms.saturating_add(self.min_interval_ms)
    }
}

/// `last_moved_ms` of a pair that has had neither an `Entered` nor a `Moved` yet (it was in
/// the search's first answer), so its first move goes out at once.
const NEVER_MOVED: u64 = u64::MAX;

/// How far (as a unit-sphere chord, about 100 m) a provider may drift from where the provider
/// tree has it before the tree is updated. Moves are mostly a few metres, and an R-tree
/// remove plus insert cost more than the rest of an update; queries widen by this much and
/// decide on the true position, so answers are unchanged.
const ANCHOR_SLACK: f64 = 0.1 / EARTH_RADIUS_KM;

/// A provider as the provider tree holds it. Owned by its pool's provider tree.
///
/// Where it was anchored, and its slot.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Anchor {
    point: [f64; 3],
    slot: u32,
}

impl RTreeObject for Anchor {
    type Envelope = AABB<[f64; 3]>;

    fn envelope(&self) -> Self::Envelope {
        AABB::from_point(self.point)
    }
}

impl PointDistance for Anchor {
    fn distance_2(&self, other: &[f64; 3]) -> f64 {
        chord_2(self.point, *other)
    }

    fn contains_point(&self, other: &[f64; 3]) -> bool {
        self.point == *other
    }
}

/// One search a provider is in range of. Owned by the provider's entry in its pool.
///
/// With when its last `Moved` for that search was let through.
#[derive(Debug, Clone, Copy)]
struct Member {
    search: u32,
    last_moved_ms: u64,
}

/// An active provider. Owned by its pool, so by the pool's owner shard.
struct Provider<P> {
    id: P,
    pos: Position,
    point: [f64; 3],
    terms: LatTerms,
    sub: SubCode,
    anchor: [f64; 3],
    /// Every search this provider matches now, sorted by search slot. The pool's only record
    /// of who is in range: an update diffs it against the fresh matches, so neither the old
    /// position's searches nor any per-search set has to be looked at.
    matched: Vec<Member>,
}

/// A standing search, or with `S = ()` a one-shot query. Owned by its pool, or by the query.
struct Search<S> {
    seeker: S,
    centre: Position,
    terms: LatTerms,
    point: [f64; 3],
    /// The widened chord and its square: a provider farther than this cannot match.
    chord: f64,
    chord_2: f64,
    radius: Radius,
    sub_filter: Option<SubCode>,
}

impl<S> Search<S> {
    /// `seeker` is `()` for a one-shot query: it shares the matching rule and is never stored.
    fn new(seeker: S, centre: Position, radius: Radius, sub_filter: Option<SubCode>) -> Self {
        let point = centre.unit_vector();
        let chord = radius.query_chord();
        Search {
            seeker,
            centre,
            terms: LatTerms::of(centre),
            point,
            chord,
            chord_2: chord * chord,
            radius,
            sub_filter,
        }
    }

    fn ball(&self, slot: u32) -> Ball {
        Ball {
            point: self.point,
            chord: self.chord,
            slot,
        }
    }

    /// The distance if a provider matches, decided exactly as the oracle would (haversine
    /// against the radius); the chord test in front only skips the trigonometry for providers
    /// that the widened chord already proves too far. Every path (update, set, clear, query)
    /// asks this one function, which keeps the providers' `matched` lists exact.
    fn distance_if_matching<P>(&self, p: &Provider<P>) -> Option<f64> {
        if !accepts(self.sub_filter, p.sub) || chord_2(self.point, p.point) > self.chord_2 {
            return None;
        }
        let distance_km = haversine_with(self.centre, self.terms, p.pos, p.terms);
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

/// A dense slot for a new entry, reusing a freed one first.
fn claim_slot<T>(slots: &mut Vec<Option<T>>, free: &mut Vec<u32>, value: T) -> u32 {
    match free.pop() {
        Some(slot) => {
            slots[slot as usize] = Some(value);
            slot
        }
        None => {
            slots.push(Some(value));
            (slots.len() - 1) as u32
        }
    }
}

/// The active providers of one pool (e.g. one category) and the seekers' standing searches
/// over them, with each provider's exact set of matching searches. Owned by the pool's owner
/// shard.
///
/// `P` identifies providers and `S` seekers; inside, both live in dense slots so that the hot
/// path does one hash lookup per update. Every operation is O(log n + k) expected, where k is
/// the number of providers or searches near the positions involved.
pub struct GeoPool<P, S> {
    provider_ids: HashMap<P, u32>,
    providers: Vec<Option<Provider<P>>>,
    free_providers: Vec<u32>,
    provider_tree: RTree<Anchor>,
    search_ids: HashMap<S, u32>,
    searches: Vec<Option<Search<S>>>,
    free_searches: Vec<u32>,
    search_grid: SearchGrid,
    in_range_total: usize,
    /// Reused buffers of [`GeoPool::upsert_provider`], so a steady stream of moves allocates
    /// nothing.
    fresh: Vec<(u32, f64)>,
    spare_matched: Vec<Member>,
}

impl<P: GeoId, S: GeoId> Default for GeoPool<P, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: GeoId, S: GeoId> GeoPool<P, S> {
    pub fn new() -> Self {
        Self {
            provider_ids: HashMap::new(),
            providers: Vec::new(),
            free_providers: Vec::new(),
            provider_tree: RTree::new(),
            search_ids: HashMap::new(),
            searches: Vec::new(),
            free_searches: Vec::new(),
            search_grid: SearchGrid::new(),
            in_range_total: 0,
            fresh: Vec::new(),
            spare_matched: Vec::new(),
        }
    }

    /// A pool with these providers and no searches, built by bulk loading (much faster than
    /// one upsert each, e.g. when a shard restores a pool). A repeated id keeps its last entry.
    pub fn with_providers(providers: impl IntoIterator<Item = (P, Position, SubCode)>) -> Self {
        let mut pool = Self::new();
        for (id, pos, sub) in providers {
            let point = pos.unit_vector();
            let provider = Provider {
                id,
                pos,
                point,
                terms: LatTerms::of(pos),
                sub,
                anchor: point,
                matched: Vec::new(),
            };
            match pool.provider_ids.get(&id) {
                Some(&slot) => pool.providers[slot as usize] = Some(provider),
                None => {
                    let slot = claim_slot(&mut pool.providers, &mut pool.free_providers, provider);
                    pool.provider_ids.insert(id, slot);
                }
            }
        }
        let anchors = pool
            .providers
            .iter()
            .enumerate()
            .filter_map(|(slot, p)| {
                p.as_ref().map(|p| Anchor {
                    point: p.anchor,
                    slot: slot as u32,
                })
            })
            .collect();
        pool.provider_tree = RTree::bulk_load(anchors);
        pool
    }

    /// Number of active providers.
    pub fn provider_count(&self) -> usize {
        self.provider_ids.len()
    }

    /// Number of standing searches.
    pub fn search_count(&self) -> usize {
        self.search_ids.len()
    }

    /// Number of (search, provider) pairs currently in range, summed over all searches.
    pub fn in_range_count(&self) -> usize {
        self.in_range_total
    }

    /// A provider's current position and subcategory, if it is active.
    pub fn provider(&self, id: P) -> Option<(Position, SubCode)> {
        let slot = *self.provider_ids.get(&id)?;
        self.providers[slot as usize]
            .as_ref()
            .map(|p| (p.pos, p.sub))
    }

    /// Makes a provider active at `pos` with `sub`, or moves / re-categorises it, and appends
    /// to `events` the transitions of every search it affects (in no particular order).
    /// `Moved` events go through `limit`; returns how many it held back.
    ///
    /// An update that changes neither position nor subcategory emits nothing.
    pub fn upsert_provider(
        &mut self,
        id: P,
        pos: Position,
        sub: SubCode,
        limit: MovedLimit,
        events: &mut Vec<GeoEvent<P, S>>,
    ) -> usize {
        let point = pos.unit_vector();
        let terms = LatTerms::of(pos);
        let (slot, moved) = match self.provider_ids.get(&id) {
            Some(&slot) => {
                let Some(p) = self.providers[slot as usize].as_mut() else {
                    return 0;
                };
                if p.pos == pos && p.sub == sub {
                    return 0;
                }
                if chord_2(p.anchor, point) > ANCHOR_SLACK * ANCHOR_SLACK {
                    self.provider_tree.remove(&Anchor {
                        point: p.anchor,
                        slot,
                    });
                    self.provider_tree.insert(Anchor { point, slot });
                    p.anchor = point;
                }
                let moved = p.pos != pos;
                (p.pos, p.point, p.terms, p.sub) = (pos, point, terms, sub);
                (slot, moved)
            }
            None => {
                let provider = Provider {
                    id,
                    pos,
                    point,
                    terms,
                    sub,
                    anchor: point,
                    matched: Vec::new(),
                };
                let slot = claim_slot(&mut self.providers, &mut self.free_providers, provider);
                self.provider_ids.insert(id, slot);
                self.provider_tree.insert(Anchor { point, slot });
                (slot, false)
            }
        };
        let Some(p) = self.providers[slot as usize].as_mut() else {
            return 0;
        };

        // Every search the provider matches now holds the new point in its widened ball.
        let fresh = &mut self.fresh;
        fresh.clear();
        let searches = &self.searches;
        self.search_grid.candidates(point, |slot| {
            if let Some(search) = searches[slot as usize].as_ref() {
                if let Some(distance_km) = search.distance_if_matching(p) {
                    fresh.push((slot, distance_km));
                }
            }
        });
        fresh.sort_unstable_by_key(|&(search, _)| search);

        // Both lists are sorted by search slot: one merge yields every transition.
        let old = std::mem::take(&mut p.matched);
        let mut now = std::mem::take(&mut self.spare_matched);
        now.clear();
        let seeker_of = |search: u32| self.searches[search as usize].as_ref().map(|s| s.seeker);
        let (mut i, mut j, mut held_back) = (0, 0, 0);
        while i < old.len() || j < fresh.len() {
            let was = old.get(i).map_or(u32::MAX, |m| m.search);
            let is = fresh.get(j).map_or(u32::MAX, |f| f.0);
            match was.cmp(&is) {
                Ordering::Less => {
                    if let Some(seeker) = seeker_of(was) {
                        events.push(GeoEvent::Left {
                            seeker,
                            provider: id,
                        });
                    }
                    i += 1;
                }
                Ordering::Greater => {
                    if let Some(seeker) = seeker_of(is) {
                        events.push(GeoEvent::Entered {
                            seeker,
                            provider: id,
                            pos,
                            distance_km: fresh[j].1,
                        });
                    }
                    now.push(Member {
                        search: is,
                        last_moved_ms: limit.now_ms,
                    });
                    j += 1;
                }
                Ordering::Equal => {
                    let mut member = old[i];
                    if moved {
                        if limit.holds_back(member.last_moved_ms) {
                            held_back += 1;
                        } else if let Some(seeker) = seeker_of(is) {
                            events.push(GeoEvent::Moved {
                                seeker,
                                provider: id,
                                pos,
                                distance_km: fresh[j].1,
                            });
                            member.last_moved_ms = limit.now_ms;
                        }
                    }
                    now.push(member);
                    i += 1;
                    j += 1;
                }
            }
        }
        self.in_range_total = self.in_range_total + now.len() - old.len();
        p.matched = now;
        self.spare_matched = old;
        held_back
    }

    /// Makes a provider inactive (went offline, disconnected) and appends a `Left` for every
    /// search that had it in range. Returns whether it was active.
    pub fn remove_provider(&mut self, id: P, events: &mut Vec<GeoEvent<P, S>>) -> bool {
        let Some(slot) = self.provider_ids.remove(&id) else {
            return false;
        };
        let Some(old) = self.providers[slot as usize].take() else {
            return false;
        };
        self.free_providers.push(slot);
        self.provider_tree.remove(&Anchor {
            point: old.anchor,
            slot,
        });
        self.in_range_total -= old.matched.len();
        for m in &old.matched {
            if let Some(search) = self.searches[m.search as usize].as_ref() {
                events.push(GeoEvent::Left {
                    seeker: search.seeker,
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
        let search = Search::new(seeker, centre, radius, sub_filter);
        let mut found = self.matching(&search);
        let slot = claim_slot(&mut self.searches, &mut self.free_searches, search);
        self.search_ids.insert(seeker, slot);
        let all = self.searches.iter().enumerate();
        let all = all.filter_map(|(slot, s)| s.as_ref().map(|s| s.ball(slot as u32)));
        if let Some(search) = self.searches[slot as usize].as_ref() {
            self.search_grid.insert(search.ball(slot), all);
        }
        for &(_, provider) in &found {
            if let Some(p) = self.providers[provider as usize].as_mut() {
                if let Err(at) = p.matched.binary_search_by_key(&slot, |m| m.search) {
                    p.matched.insert(
                        at,
                        Member {
                            search: slot,
                            last_moved_ms: NEVER_MOVED,
                        },
                    );
                }
            }
        }
        self.in_range_total += found.len();
        found.sort_unstable_by(|a, b| nearness(&a.0, &b.0));
        found.into_iter().map(|(m, _)| m).collect()
    }

    /// Ends `seeker`'s standing search. Returns whether it had one.
    pub fn clear_search(&mut self, seeker: S) -> bool {
        let Some(slot) = self.search_ids.remove(&seeker) else {
            return false;
        };
        let Some(search) = self.searches[slot as usize].take() else {
            return false;
        };
        self.search_grid.remove(search.ball(slot));
        // The providers that list this search are exactly those matching it now.
        for (_, provider) in self.matching(&search) {
            if let Some(p) = self.providers[provider as usize].as_mut() {
                if let Ok(at) = p.matched.binary_search_by_key(&slot, |m| m.search) {
                    p.matched.remove(at);
                    self.in_range_total -= 1;
                }
            }
        }
        self.free_searches.push(slot);
        true
    }

    /// Every active provider matching `search`, with its slot, in no particular order.
    fn matching<T>(&self, search: &Search<T>) -> Vec<(Match<P>, u32)> {
        let reach = search.chord_2.sqrt() + ANCHOR_SLACK;
        self.provider_tree
            .locate_within_distance(search.point, reach * reach)
            .filter_map(|anchor| {
                let p = self.providers[anchor.slot as usize].as_ref()?;
                let distance_km = search.distance_if_matching(p)?;
                let m = Match {
                    provider: p.id,
                    pos: p.pos,
                    distance_km,
                    sub: p.sub,
                };
                Some((m, anchor.slot))
            })
            .collect()
    }

    /// Every active provider matching `sub_filter` within `radius` of `centre`, nearest first,
    /// ties by provider id. A one-shot query: nothing is stored.
    pub fn within(
        &self,
        centre: Position,
        radius: Radius,
        sub_filter: Option<SubCode>,
    ) -> Vec<Match<P>> {
        let mut matches: Vec<Match<P>> = self
            .matching(&Search::new((), centre, radius, sub_filter))
            .into_iter()
            .map(|(m, _)| m)
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
        let query = Search::new((), centre, radius, sub_filter);
        // The tree orders anchors, which are within ANCHOR_SLACK of the true points.
        let reach = |chord: f64| (chord + ANCHOR_SLACK) * (chord + ANCHOR_SLACK);
        let mut stop_2 = reach(radius.query_chord());
        let mut best: BinaryHeap<ByNearness<P>> = BinaryHeap::with_capacity(max.min(1024) + 1);
        for (anchor, anchor_2) in self
            .provider_tree
            .nearest_neighbor_iter_with_distance_2(&query.point)
        {
            if anchor_2 > stop_2 {
                break;
            }
            let Some(p) = self.providers[anchor.slot as usize].as_ref() else {
                continue;
            };
            let Some(distance_km) = query.distance_if_matching(p) else {
                continue;
            };
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
                    stop_2 = stop_2.min(reach(widened_chord(worst.0.distance_km)));
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
    use crate::geo::haversine_km;

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
        pool.upsert_provider(id, at, SubCode(sub), MovedLimit::NONE, &mut events);
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
    fn drift_within_the_anchor_slack_is_seen_by_every_query() {
        // One metre of latitude in degrees, on Beacon's sphere.
        let m = 180.0 / (std::f64::consts::PI * EARTH_RADIUS_KM * 1000.0);
        let (lat, lon) = KOZHIKODE;
        let mut pool = Pool::new();
        upsert(&mut pool, 1, pos(lat, lon), 0);
        // 90 m on: the tree still has it at the first spot.
        let there = pos(lat + 90.0 * m, lon);
        assert_eq!(upsert(&mut pool, 1, there, 0), vec![]);
        let centre = pos(lat + 140.0 * m, lon);
        let radius = km(0.06);
        assert_eq!(ids(&pool.set_search(7, centre, radius, None)), vec![1]);
        assert_eq!(ids(&pool.within(centre, radius, None)), vec![1]);
        assert_eq!(ids(&pool.nearest(centre, radius, None, 1)), vec![1]);
        assert_eq!(pool.in_range_count(), 1);
        assert_eq!(
            upsert(&mut pool, 1, pos(lat + 10.0 * m, lon), 0),
            vec![GeoEvent::Left {
                seeker: 7,
                provider: 1
            }]
        );
        assert!(upsert(&mut pool, 1, there, 0).len() == 1);
        assert!(pool.clear_search(7));
        assert_eq!(pool.in_range_count(), 0);
        assert_eq!(upsert(&mut pool, 1, pos(lat + 95.0 * m, lon), 0), vec![]);
    }

    #[test]
    fn moved_limit_holds_back_until_the_interval_has_passed() {
        let mut pool = Pool::new();
        let centre = pos(KOZHIKODE.0, KOZHIKODE.1);
        pool.set_search(1, centre, km(5.0), None);
        let at = |ms: u64| MovedLimit {
            now_ms: ms,
            min_interval_ms: 1000,
        };
        let mut events = Vec::new();
        let mut step = |lat: f64, ms: u64, events: &mut Vec<GeoEvent<u64, u32>>| {
            events.clear();
            pool.upsert_provider(9, pos(lat, KOZHIKODE.1), SubCode(0), at(ms), events)
        };
        assert_eq!(step(11.26, 0, &mut events), 0);
        assert!(matches!(events[..], [GeoEvent::Entered { .. }]));
        // Entering restarted the interval: a move 999 ms later is held back, at 1000 ms it goes.
        assert_eq!(step(11.261, 999, &mut events), 1);
        assert_eq!(events, vec![]);
        assert_eq!(step(11.262, 1000, &mut events), 0);
        assert!(matches!(events[..], [GeoEvent::Moved { .. }]));
        assert_eq!(step(11.263, 1500, &mut events), 1);
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
            incremental.upsert_provider(id, at, sub, MovedLimit::NONE, &mut Vec::new());
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
