//! Which standing searches can hold a point: a uniform 3D grid of search balls, with an R-tree
//! for the few searches too large for its cells.

use foldhash::{HashMap, HashMapExt};
use rstar::{RTree, RTreeObject, AABB};

use super::position::chord_2;

/// Finest and coarsest cell side (unit-sphere chord, about 200 m and 2,000 km): a cell much
/// smaller than the searches puts each search in many cells, a much larger one puts many
/// searches in each cell. Either is still correct.
const MIN_CELL: f64 = 0.2 / super::position::EARTH_RADIUS_KM;
const MAX_CELL: f64 = 2_000.0 / super::position::EARTH_RADIUS_KM;

/// A search whose box spans at most this many cells per axis goes in the grid.
const MAX_CELLS_PER_AXIS: i64 = 4;

/// The grid is re-cut when this many searches (and more than are in the grid) have had to go
/// in the R-tree; small in tests so that the property tests re-cut it.
const RECUT_AFTER: usize = if cfg!(test) { 2 } else { 32 };

/// One search in one cell. Owned by its grid.
///
/// Enough to rule the search out without touching the search itself.
#[derive(Debug, Clone, Copy)]
struct Entry {
    point: [f64; 3],
    chord_2: f64,
    slot: u32,
}

/// An oversized search in the grid's R-tree. Owned by its grid.
#[derive(Debug, Clone, Copy, PartialEq)]
struct WideBox {
    bounds: AABB<[f64; 3]>,
    slot: u32,
}

impl RTreeObject for WideBox {
    type Envelope = AABB<[f64; 3]>;

    fn envelope(&self) -> Self::Envelope {
        self.bounds
    }
}

/// The standing searches of one pool, for point lookups. Owned by the pool's owner shard.
///
/// A lookup hashes the point's cell once and scans that cell's entries, which sit together in
/// memory; the R-tree this replaced spent most of an update on cache misses walking nodes. The
/// cell side is set from the searches' own sizes (twice the median chord) and re-chosen when
/// too many searches no longer fit it.
pub(crate) struct SearchGrid {
    cell: f64,
    cells: HashMap<[i32; 3], Vec<Entry>>,
    gridded: usize,
    wide: RTree<WideBox>,
    /// Wide searches that trigger the next re-cut: doubling each time, so that searches no
    /// cell size suits (most of them continent-sized, say) cost amortised O(1) re-cuts.
    recut_at: usize,
}

/// What the grid needs to know of a search. Owned by its pool (a plain value).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ball {
    pub point: [f64; 3],
    pub chord: f64,
    pub slot: u32,
}

impl Ball {
    fn chord_2(&self) -> f64 {
        self.chord * self.chord
    }

    fn bounds(&self) -> AABB<[f64; 3]> {
        let [x, y, z] = self.point;
        let c = self.chord;
        AABB::from_corners([x - c, y - c, z - c], [x + c, y + c, z + c])
    }
}

impl SearchGrid {
    pub(crate) fn new() -> Self {
        Self {
            cell: 0.0,
            cells: HashMap::new(),
            gridded: 0,
            wide: RTree::new(),
            recut_at: RECUT_AFTER,
        }
    }

    fn cell_of(&self, point: [f64; 3]) -> [i32; 3] {
        point.map(|c| (c / self.cell).floor() as i32)
    }

    /// The cells `ball`'s box overlaps, or `None` when that is too many for the grid.
    fn span(&self, ball: &Ball) -> Option<([i32; 3], [i32; 3])> {
        if self.cell == 0.0 {
            return None;
        }
        let lo = self.cell_of(ball.point.map(|c| c - ball.chord));
        let hi = self.cell_of(ball.point.map(|c| c + ball.chord));
        let fits = (0..3).all(|a| i64::from(hi[a]) - i64::from(lo[a]) < MAX_CELLS_PER_AXIS);
        fits.then_some((lo, hi))
    }

    /// Adds a search; `all` lists every search the pool holds, this one included, in case the
    /// grid is re-cut for them.
    pub(crate) fn insert(&mut self, ball: Ball, all: impl Iterator<Item = Ball>) {
        if self.cell == 0.0
            || (self.wide.size() >= self.recut_at && self.wide.size() > self.gridded)
        {
            self.rebuild(all.collect());
            self.recut_at = RECUT_AFTER.max(2 * self.wide.size());
            return;
        }
        self.place(ball);
    }

    fn place(&mut self, ball: Ball) {
        let Some((lo, hi)) = self.span(&ball) else {
            self.wide.insert(WideBox {
                bounds: ball.bounds(),
                slot: ball.slot,
            });
            return;
        };
        let entry = Entry {
            point: ball.point,
            chord_2: ball.chord_2(),
            slot: ball.slot,
        };
        for x in lo[0]..=hi[0] {
            for y in lo[1]..=hi[1] {
                for z in lo[2]..=hi[2] {
                    self.cells.entry([x, y, z]).or_default().push(entry);
                }
            }
        }
        self.gridded += 1;
    }

    /// Removes a search, given as it was inserted.
    pub(crate) fn remove(&mut self, ball: Ball) {
        let Some((lo, hi)) = self.span(&ball) else {
            self.wide.remove(&WideBox {
                bounds: ball.bounds(),
                slot: ball.slot,
            });
            return;
        };
        for x in lo[0]..=hi[0] {
            for y in lo[1]..=hi[1] {
                for z in lo[2]..=hi[2] {
                    let key = [x, y, z];
                    if let Some(entries) = self.cells.get_mut(&key) {
                        if let Some(at) = entries.iter().position(|e| e.slot == ball.slot) {
                            entries.swap_remove(at);
                        }
                        if entries.is_empty() {
                            self.cells.remove(&key);
                        }
                    }
                }
            }
        }
        self.gridded -= 1;
    }

    fn rebuild(&mut self, mut all: Vec<Ball>) {
        self.cells.clear();
        self.gridded = 0;
        self.wide = RTree::new();
        if all.is_empty() {
            self.cell = 0.0;
            return;
        }
        let mid = all.len() / 2;
        all.select_nth_unstable_by(mid, |a, b| a.chord.total_cmp(&b.chord));
        self.cell = (2.0 * all[mid].chord).clamp(MIN_CELL, MAX_CELL);
        for ball in all {
            self.place(ball);
        }
    }

    /// Calls `found` with the slot of every search whose widened ball holds `point` (each
    /// once), and possibly a few whose box holds it; the caller decides each exactly.
    pub(crate) fn candidates(&self, point: [f64; 3], mut found: impl FnMut(u32)) {
        if self.gridded > 0 {
            if let Some(entries) = self.cells.get(&self.cell_of(point)) {
                for e in entries {
                    if chord_2(e.point, point) <= e.chord_2 {
                        found(e.slot);
                    }
                }
            }
        }
        if self.wide.size() > 0 {
            for b in self
                .wide
                .locate_in_envelope_intersecting(&AABB::from_point(point))
            {
                found(b.slot);
            }
        }
    }
}
