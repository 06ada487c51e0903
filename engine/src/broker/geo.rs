//! Geo requests between nodes (`[cluster]` on Redis): what a node publishes on the cluster's
//! geo channel for the node that holds the geo pools and jobs (the *geo home*), and what the
//! home answers on the asking shard's service channel. Sans-IO: plain values, JSON on the
//! wire (geo traffic is a status update every few seconds per provider, not the fan-out path,
//! and JSON keeps it readable with `redis-cli SUBSCRIBE`).
//!
//! Pools and dispatches travel by name, not by index, so a node whose protocol lacks one
//! refuses the request instead of filing it under another pool. Positions travel as the
//! client's degrees (serde_json's `float_roundtrip` keeps them bit for bit); frames
//! (already-encoded WebSocket frames) as base64.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The connection that caused a request, so only its end removes what it put in.
/// Crosses nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct From {
    pub node: String,
    pub shard: u16,
    pub conn: u64,
    /// Its home room (where a seeker's answers go).
    pub room: String,
}

/// A provider's change, as [`crate::session::ProviderChange`]. Crosses nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "c", rename_all = "snake_case")]
pub enum Provider {
    Upsert { lat: f64, lon: f64, sub: String },
    Deactivate,
    Disconnected,
}

/// A search's change, as [`crate::session::SearchChange`]. Crosses nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "c", rename_all = "snake_case")]
pub enum Search {
    Set {
        lat: f64,
        lon: f64,
        radius_km: f64,
        sub: Option<String>,
    },
    Clear,
    Disconnected,
}

/// One matched provider in a [`Wire::Found`]. Crosses nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    pub provider: String,
    pub lat: f64,
    pub lon: f64,
    pub distance_km: f64,
    pub sub: String,
}

/// Everything that travels on the geo channel or back to an asking shard. Crosses nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Wire {
    /// A provider's status update, move or end, for the pool instance `pool`/`key`.
    Provider {
        from: From,
        pool: String,
        key: String,
        provider: String,
        change: Provider,
    },
    /// A seeker's standing search.
    Search {
        from: From,
        pool: String,
        key: String,
        change: Search,
    },
    /// A provider's answer to a job it was offered; `frame` is the relay for the seeker.
    Respond {
        from: From,
        dispatch: String,
        job: String,
        provider: String,
        accepted: bool,
        frame: String,
    },
    /// The dispatch endpoint asks for the nearest providers; the answer ([`Wire::Found`]) goes
    /// to the channel `reply` with the same `id`.
    Nearest {
        id: u64,
        reply: String,
        pool: String,
        key: String,
        lat: f64,
        lon: f64,
        radius_km: f64,
        sub: Option<String>,
        max: usize,
    },
    /// A node's heartbeat (every second, from its shard 0): the home drops the providers and
    /// searches of a node it has not heard from for a while (killed).
    Alive { node: String },
    /// The answer to [`Wire::Nearest`].
    Found { id: u64, providers: Vec<Match> },
    /// A job offered to `notified` (user id, room); `taken` is the frame they get once one of
    /// them accepts.
    JobCreate {
        dispatch: String,
        job: String,
        seeker_room: String,
        notified: Vec<(String, String)>,
        taken: String,
        ttl_ms: u64,
    },
}

impl Wire {
    pub fn encode(&self) -> Vec<u8> {
        // Only strings, numbers and finite floats: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(payload: &[u8]) -> Result<Wire, String> {
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    }
}

/// A frame for the wire.
pub fn frame_text(frame: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(frame)
}

/// A frame from the wire.
pub fn frame_bytes(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("frame: {e}"))
}

/// The cluster's geo channel: every node publishes geo requests here; only the geo home
/// subscribes.
pub fn geo_channel(prefix: &str) -> Vec<u8> {
    format!("{prefix}.geo").into_bytes()
}

/// The Redis key whose holder is the geo home (a lease: set if absent, renewed by its holder).
pub fn home_key(prefix: &str) -> Vec<u8> {
    format!("{prefix}.geo.home").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn from() -> From {
        From {
            node: "n1".into(),
            shard: 3,
            conn: u64::MAX,
            room: "location:seeker:201".into(),
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let frame = b"\x81\x05hello".to_vec();
        let all = [
            Wire::Provider {
                from: from(),
                pool: "nearby".into(),
                key: "MS0001".into(),
                provider: "101".into(),
                change: Provider::Upsert {
                    lat: 11.2588,
                    lon: -75.857_700_000_000_01,
                    sub: "SS0001".into(),
                },
            },
            Wire::Provider {
                from: from(),
                pool: "nearby".into(),
                key: "k".into(),
                provider: "p".into(),
                change: Provider::Disconnected,
            },
            Wire::Search {
                from: from(),
                pool: "nearby".into(),
                key: "k".into(),
                change: Search::Set {
                    lat: 0.1,
                    lon: 179.999,
                    radius_km: 5.0,
                    sub: None,
                },
            },
            Wire::Search {
                from: from(),
                pool: "nearby".into(),
                key: "k".into(),
                change: Search::Clear,
            },
            Wire::Respond {
                from: from(),
                dispatch: "work".into(),
                job: "123".into(),
                provider: "101".into(),
                accepted: true,
                frame: frame_text(&frame),
            },
            Wire::Nearest {
                id: 7,
                reply: "beacon.node.n1.0".into(),
                pool: "nearby".into(),
                key: "k".into(),
                lat: 1.0,
                lon: 2.0,
                radius_km: 3.0,
                sub: Some("SS".into()),
                max: 2,
            },
            Wire::Alive { node: "n2".into() },
            Wire::Found {
                id: 7,
                providers: vec![Match {
                    provider: "101".into(),
                    lat: 1.0,
                    lon: 2.0,
                    distance_km: 0.25,
                    sub: "SS".into(),
                }],
            },
            Wire::JobCreate {
                dispatch: "work".into(),
                job: "123".into(),
                seeker_room: "work:seeker:456".into(),
                notified: vec![("101".into(), "work:provider:101".into())],
                taken: frame_text(&frame),
                ttl_ms: 3_600_000,
            },
        ];
        for w in all {
            assert_eq!(Wire::decode(&w.encode()).unwrap(), w);
        }
        assert_eq!(frame_bytes(&frame_text(&frame)).unwrap(), frame);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"{", b"{\"k\":\"nope\"}", b"\xff\xfe", b"[1,2]"] {
            assert!(Wire::decode(bad).is_err());
        }
        assert!(frame_bytes("not base64!").is_err());
    }

    proptest! {
        #[test]
        fn positions_come_back_bit_for_bit(lat in -90.0f64..=90.0, lon in -180.0f64..=180.0) {
            let w = Wire::Provider {
                from: from(),
                pool: "p".into(),
                key: "k".into(),
                provider: "1".into(),
                change: Provider::Upsert { lat, lon, sub: String::new() },
            };
            prop_assert_eq!(Wire::decode(&w.encode()).unwrap(), w);
        }
    }
}
