//! Validated positions and radii, great-circle distance, and the unit-sphere mapping.

/// Mean Earth radius (IUGG), in km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Largest accepted search radius, in km. Just under half the circumference (about 20,015 km)
/// so a search never wraps onto itself and its ball never covers the whole sphere.
pub const MAX_RADIUS_KM: f64 = 20_000.0;

/// Relative and absolute widening of every chord given to an R-tree. Rounding in the unit
/// vectors and in [`haversine_km`] is around 1e-15; the slack is orders of magnitude larger
/// so the tree never misses a provider the exact haversine test would accept, and small
/// enough (about 6 cm on the ground) that the extra candidates cost nothing.
const CHORD_SLACK_REL: f64 = 1e-9;
const CHORD_SLACK_ABS: f64 = 1e-8;

/// Why a position or radius from a client was refused. The caller maps every variant to the
/// protocol's schema error. Crosses shards (Send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GeoError {
    #[error("latitude must be a finite number of degrees in [-90, 90]")]
    Latitude,
    #[error("longitude must be a finite number of degrees in [-180, 180]")]
    Longitude,
    #[error("radius must be a finite number of km in (0, 20000]")]
    Radius,
}

/// A validated point on the Earth, in degrees. Crosses shards (Send).
///
/// Fields are private so that holding a `Position` proves it is finite and in range; the index
/// never has to re-check (or panic on) NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    lat: f64,
    lon: f64,
}

impl Position {
    /// Validates a latitude in `[-90, 90]` and a longitude in `[-180, 180]` (both finite).
    pub fn new(lat: f64, lon: f64) -> Result<Self, GeoError> {
        // `contains` is false for NaN and for the infinities, so one test covers all three.
        if !(-90.0..=90.0).contains(&lat) {
            return Err(GeoError::Latitude);
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(GeoError::Longitude);
        }
        Ok(Self { lat, lon })
    }

    pub fn lat(self) -> f64 {
        self.lat
    }

    pub fn lon(self) -> f64 {
        self.lon
    }

    /// The point on the unit sphere (ECEF directions: x towards (0, 0), z towards the north
    /// pole). See the module doc for why the index works in 3D.
    pub(crate) fn unit_vector(self) -> [f64; 3] {
        let (sin_lat, cos_lat) = self.lat.to_radians().sin_cos();
        let (sin_lon, cos_lon) = self.lon.to_radians().sin_cos();
        [cos_lat * cos_lon, cos_lat * sin_lon, sin_lat]
    }
}

/// A validated search radius: finite, `> 0` and `<= MAX_RADIUS_KM`. Crosses shards (Send).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Radius {
    km: f64,
}

impl Radius {
    pub fn from_km(km: f64) -> Result<Self, GeoError> {
        // Written as a positive range test so NaN fails it.
        if km > 0.0 && km <= MAX_RADIUS_KM {
            Ok(Self { km })
        } else {
            Err(GeoError::Radius)
        }
    }

    pub fn km(self) -> f64 {
        self.km
    }

    /// Chord (on the unit sphere) that the R-trees are queried with: never smaller than the
    /// true chord of any point [`haversine_km`] puts within the radius.
    pub(crate) fn query_chord(self) -> f64 {
        widened_chord(self.km)
    }
}

/// The unit-sphere chord of a great-circle distance, widened by the rounding slack.
pub(crate) fn widened_chord(km: f64) -> f64 {
    let half_angle = (km / (2.0 * EARTH_RADIUS_KM)).clamp(0.0, std::f64::consts::FRAC_PI_2);
    2.0 * half_angle.sin() * (1.0 + CHORD_SLACK_REL) + CHORD_SLACK_ABS
}

/// Great-circle distance in km by the haversine formula (R = [`EARTH_RADIUS_KM`]).
///
/// This is the single source of truth for "within radius" and for ordering; the R-trees only
/// narrow down which providers it is evaluated for.
pub fn haversine_km(a: Position, b: Position) -> f64 {
    haversine_with(a, LatTerms::of(a), b, LatTerms::of(b))
}

/// The per-point factors of [`haversine_km`], computed once per search centre and once per
/// provider update instead of once per (search, provider) pair. Plain values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LatTerms {
    lat_rad: f64,
    cos_lat: f64,
}

impl LatTerms {
    pub(crate) fn of(p: Position) -> Self {
        let lat_rad = p.lat.to_radians();
        Self {
            lat_rad,
            cos_lat: lat_rad.cos(),
        }
    }
}

/// [`haversine_km`] from precomputed [`LatTerms`]: the same operations in the same order, so
/// the result is bit-for-bit the same (the property tests compare against the plain form).
pub(crate) fn haversine_with(a: Position, ta: LatTerms, b: Position, tb: LatTerms) -> f64 {
    let half_dlat = (tb.lat_rad - ta.lat_rad) / 2.0;
    // A longitude difference of ~360° (across the antimeridian) gives the same sin² as its
    // complement, so no wrapping is needed.
    let half_dlon = (b.lon - a.lon).to_radians() / 2.0;
    let sin_dlat = half_dlat.sin();
    let sin_dlon = half_dlon.sin();
    let h = sin_dlat * sin_dlat + ta.cos_lat * tb.cos_lat * sin_dlon * sin_dlon;
    // Rounding can push h a hair above 1 for antipodes; asin would then return NaN.
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Squared straight-line distance between two unit-sphere points.
pub(crate) fn chord_2(a: [f64; 3], b: [f64; 3]) -> f64 {
    let [dx, dy, dz] = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    dx * dx + dy * dy + dz * dz
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(lat: f64, lon: f64) -> Position {
        Position::new(lat, lon).unwrap()
    }

    fn assert_close(actual: f64, expected: f64, tolerance: f64) {
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} is not within {tolerance} of {expected}"
        );
    }

    #[test]
    fn position_accepts_the_closed_ranges() {
        for (lat, lon) in [(90.0, 180.0), (-90.0, -180.0), (0.0, 0.0), (-0.0, -0.0)] {
            assert!(Position::new(lat, lon).is_ok(), "({lat}, {lon})");
        }
    }

    #[test]
    fn position_rejects_out_of_range_and_non_finite() {
        let bad_lat = [90.000001, -90.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        for lat in bad_lat {
            assert_eq!(Position::new(lat, 0.0), Err(GeoError::Latitude), "{lat}");
        }
        let bad_lon = [
            180.000001,
            -181.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for lon in bad_lon {
            assert_eq!(Position::new(0.0, lon), Err(GeoError::Longitude), "{lon}");
        }
    }

    #[test]
    fn radius_rejects_non_positive_non_finite_and_too_large() {
        for km in [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, 20_000.001] {
            assert_eq!(Radius::from_km(km), Err(GeoError::Radius), "{km}");
        }
        assert_eq!(Radius::from_km(5.0).map(Radius::km), Ok(5.0));
        assert!(Radius::from_km(MAX_RADIUS_KM).is_ok());
        assert!(Radius::from_km(f64::MIN_POSITIVE).is_ok());
    }

    #[test]
    fn haversine_kozhikode_to_kochi() {
        // Kozhikode (11.2588 N, 75.7804 E) to Kochi (9.9312 N, 76.2673 E).
        let d = haversine_km(pos(11.2588, 75.7804), pos(9.9312, 76.2673));
        assert_close(d, 156.9217, 0.001);
    }

    #[test]
    fn haversine_pole_to_pole_is_half_the_circumference() {
        let d = haversine_km(pos(90.0, 0.0), pos(-90.0, 123.0));
        assert_close(d, std::f64::consts::PI * EARTH_RADIUS_KM, 1e-6);
    }

    #[test]
    fn haversine_ignores_longitude_at_a_pole() {
        let d = haversine_km(pos(90.0, -180.0), pos(90.0, 180.0));
        assert_close(d, 0.0, 1e-9);
        let a = haversine_km(pos(90.0, 0.0), pos(89.0, 0.0));
        let b = haversine_km(pos(90.0, 77.0), pos(89.0, -150.0));
        assert_close(a, b, 1e-9);
        assert_close(a, EARTH_RADIUS_KM * 1f64.to_radians(), 1e-9);
    }

    #[test]
    fn haversine_across_the_antimeridian_is_the_short_way() {
        let d = haversine_km(pos(0.0, 179.9), pos(0.0, -179.9));
        assert_close(d, EARTH_RADIUS_KM * 0.2f64.to_radians(), 1e-9);
        assert_close(d, 22.2390, 0.001);
        assert_close(haversine_km(pos(0.0, 180.0), pos(0.0, -180.0)), 0.0, 1e-9);
    }

    #[test]
    fn haversine_is_symmetric_bit_for_bit() {
        let a = pos(11.2588, 75.7804);
        let b = pos(-33.9, 151.2);
        assert_eq!(haversine_km(a, b).to_bits(), haversine_km(b, a).to_bits());
    }

    #[test]
    fn haversine_antipodes_are_finite() {
        let d = haversine_km(pos(10.0, 20.0), pos(-10.0, -160.0));
        assert!(d.is_finite());
        // Haversine is ill-conditioned at antipodes (the reason radii stop at 20,000 km):
        // tens of centimetres off here, which no search can observe.
        assert_close(d, std::f64::consts::PI * EARTH_RADIUS_KM, 1e-3);
    }

    #[test]
    fn unit_vectors_have_length_one_and_meet_at_the_seams() {
        for (lat, lon) in [(0.0, 0.0), (90.0, 45.0), (-90.0, -10.0), (45.0, 180.0)] {
            let [x, y, z] = pos(lat, lon).unit_vector();
            assert_close(x * x + y * y + z * z, 1.0, 1e-15);
        }
        let east = pos(10.0, 180.0).unit_vector();
        let west = pos(10.0, -180.0).unit_vector();
        for axis in 0..3 {
            assert_close(east[axis], west[axis], 1e-15);
        }
    }

    #[test]
    fn widened_chord_covers_the_true_chord() {
        for km in [1e-9, 0.001, 5.0, 100.0, 5_000.0, MAX_RADIUS_KM] {
            let exact = 2.0 * (km / (2.0 * EARTH_RADIUS_KM)).sin();
            let widened = widened_chord(km);
            assert!(widened > exact && widened - exact < 1e-7, "{km}");
        }
    }
}
