//! R-tree provider index and standing radius searches ("nearby providers"), and the table of
//! jobs dispatched to the providers found there.
//!
//! Sans-IO: plain data structures, no runtime, no clock, no I/O. The shard that owns a pool
//! feeds it provider updates and seekers' searches, and turns the returned [`GeoEvent`]s and
//! [`Match`]es into messages. The rate limit on [`GeoEvent::Moved`] is applied inside the pool,
//! with the caller's clock passed in ([`MovedLimit`]): the pool already holds one record per
//! (search, provider) pair in range, so the limit's timestamp costs nothing extra there.
//!
//! # Why 3D chords instead of latitude/longitude boxes
//!
//! A lat/lon R-tree is wrong exactly where on-demand apps are least forgiving of surprises: a
//! 5 km circle around a point near longitude 180 is two boxes on either side of the
//! antimeridian, and near a pole a small circle spans every longitude, so the box degenerates to
//! a band around the globe. Patching those cases means splitting queries, special-casing poles
//! and still scaling longitude by `cos(lat)`, each a place for an off-by-one-boundary bug.
//!
//! Instead every position is indexed as a point on the unit sphere (`[x, y, z]`, ECEF scaled to
//! radius 1). On the sphere, great-circle distance `d` and straight-line chord length `c` are
//! tied by `c = 2 sin(d / 2R)`, a strictly increasing function on `[0, πR]`. So "within `r` km
//! along the surface" is exactly "within chord `2 sin(r / 2R)` in 3D": one Euclidean ball query
//! in one R-tree, with no seams at the antimeridian and no singularity at the poles, because
//! 3D space has neither.
//!
//! The R-tree only proposes candidates. Every answer is then decided by [`haversine_km`], the
//! same function a brute-force oracle uses, so the index agrees with the oracle bit for bit on
//! which providers match and in which order. To make "proposes" a guaranteed superset despite
//! floating-point rounding, the chord handed to the tree is widened by a small slack (well
//! under a metre); the exact `distance <= radius` test afterwards removes anything the slack
//! let in.
//!
//! Standing searches are indexed by their balls in the same 3D space, in a uniform grid whose
//! cell side follows the searches' sizes (twice the median chord); each cell lists the balls
//! overlapping it, so "which searches can hold this point" is one hash lookup and a scan of
//! one contiguous list. The few searches too large for the grid's cells go in an R-tree of
//! their boxes instead. Each provider keeps the sorted list of searches it matches now. An
//! update decides the new point's candidates exactly and merges the result with that list: new
//! entries are `Entered`, common ones `Moved`, missing ones `Left`. The old position is never
//! queried and no per-search set is touched.
//!
//! The provider tree holds each provider at an anchor that may lag its true position by up to
//! about 100 m; it is updated only when a provider drifts further. Queries widen their reach by
//! that slack and decide on the true position, so a stream of small moves rarely touches the
//! tree at all.
//!
//! # Dispatched jobs
//!
//! A job is one seeker's request offered to the nearest few providers; the first to accept
//! takes it, the others are told it is taken, and it lapses after the dispatch's TTL. Its
//! state lives in a [`JobTable`] on the shard that owns `job:<dispatch>:<job id>`, which may
//! differ from the pool's owner: the pool only answers "who is nearest", once, when the job is
//! dispatched. The table decides every answer from the time passed in; see [`jobs`].

pub mod jobs;
mod pool;
mod position;
mod search_grid;

#[cfg(test)]
mod proptests;

pub use jobs::{Answer, JobKey, JobTable, Offer, Outcome};
pub use pool::{GeoEvent, GeoId, GeoPool, Match, MovedLimit, SubCode};
pub use position::{haversine_km, GeoError, Position, Radius, EARTH_RADIUS_KM, MAX_RADIUS_KM};
