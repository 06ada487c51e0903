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

use std::collections::BTreeMap;

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
    /// A [`Wire::Provider`] or [`Wire::Search`] a connection sent before, sent again to a new
    /// home ([`Mirror::snapshot`]): the home applies it as the live message, except that it
    /// changes nothing (no frame to anyone) when the home already holds exactly that from that
    /// connection.
    Again { said: Box<Wire> },
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

/// The key where the geo home says which of its subscriptions to the geo channel is confirmed
/// (its *epoch*, see [`Claim`]). Beside the lease: on Redis Cluster `keyspace` carries the
/// partition's hash tag, so one script reads and writes both.
pub fn ready_key(keyspace: &str) -> Vec<u8> {
    format!("{keyspace}.geo.home.ready").into_bytes()
}

/// What the lease script answers every node each second: who holds the lease, and the epoch
/// the holder advertises once it hears its own heartbeat on the geo channel (empty until
/// then). A new epoch means a home whose pools may lack what the nodes' connections last said:
/// every node sends it its connections' geo state ([`Mirror`]). Crosses nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub holder: String,
    pub epoch: String,
}

impl Claim {
    /// Reads the script's answer, `<holder>\n<epoch>`.
    pub fn parse(answer: &[u8]) -> Result<Claim, String> {
        let text = std::str::from_utf8(answer).map_err(|e| format!("lease answer: {e}"))?;
        let (holder, epoch) = text
            .split_once('\n')
            .ok_or_else(|| format!("lease answer without an epoch: {text:?}"))?;
        Ok(Claim {
            holder: holder.to_owned(),
            epoch: epoch.to_owned(),
        })
    }
}

/// What one shard's connections last said to the geo home, by connection id: each one's
/// placed provider (its last status update or move) and its standing search, as the
/// [`Wire`] messages that said it. A new home starts empty; every node re-sends
/// [`Mirror::snapshot`] to it, in the same forms as live updates, so the home needs no other
/// path. One entry per connection with a provider placed or a search standing, gone with the
/// connection's `Disconnected` (or its `Deactivate` / `Clear`). Owned by the connections' shard
/// (one per shard thread, `runtime/cluster_geo.rs`).
#[derive(Debug, Default)]
pub struct Mirror {
    said: BTreeMap<u64, Said>,
}

/// One connection's part of a [`Mirror`]. Owned by the connection's shard.
#[derive(Debug, Default)]
struct Said {
    provider: Option<Wire>,
    search: Option<Wire>,
}

impl Mirror {
    /// Notes a message a connection sends the home (anything else is ignored). A removal
    /// takes out only what it names: a status update to another pool instance deactivates the
    /// old one first, then places the new.
    pub fn note(&mut self, w: &Wire) {
        let conn = match w {
            Wire::Provider { from, .. } | Wire::Search { from, .. } => from.conn,
            _ => return,
        };
        let said = self.said.entry(conn).or_default();
        match w {
            Wire::Provider {
                change: Provider::Upsert { .. },
                ..
            } => said.provider = Some(w.clone()),
            Wire::Provider {
                pool,
                key,
                provider,
                ..
            } => {
                if matches!(&said.provider, Some(Wire::Provider { pool: p, key: k, provider: v, .. })
                        if p == pool && k == key && v == provider)
                {
                    said.provider = None;
                }
            }
            Wire::Search {
                change: Search::Set { .. },
                ..
            } => said.search = Some(w.clone()),
            Wire::Search { pool, key, .. } => {
                if matches!(&said.search, Some(Wire::Search { pool: p, key: k, .. })
                        if p == pool && k == key)
                {
                    said.search = None;
                }
            }
            _ => {}
        }
        if said.provider.is_none() && said.search.is_none() {
            self.said.remove(&conn);
        }
    }

    /// Drops what a connection said (it is gone, whatever it sent last).
    pub fn forget(&mut self, conn: u64) {
        self.said.remove(&conn);
    }

    /// The connections with something to re-send.
    pub fn conns(&self) -> Vec<u64> {
        self.said.keys().copied().collect()
    }

    /// Connections with something to re-send.
    pub fn len(&self) -> usize {
        self.said.len()
    }

    pub fn is_empty(&self) -> bool {
        self.said.is_empty()
    }

    /// What to re-send for one connection: its provider, then its search.
    pub fn said(&self, conn: u64) -> Vec<Wire> {
        self.said
            .get(&conn)
            .map(|s| s.provider.iter().chain(s.search.iter()).cloned().collect())
            .unwrap_or_default()
    }

    /// Everything to re-send to a new home, by connection: its provider, then its search.
    pub fn snapshot(&self) -> Vec<Wire> {
        self.said
            .values()
            .flat_map(|s| s.provider.iter().chain(s.search.iter()))
            .cloned()
            .collect()
    }
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
            Wire::Again {
                said: Box::new(Wire::Search {
                    from: from(),
                    pool: "nearby".into(),
                    key: "k".into(),
                    change: Search::Clear,
                }),
            },
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

    fn said(
        conn: u64,
        provider: Option<(&str, Provider)>,
        search: Option<(&str, Search)>,
    ) -> Vec<Wire> {
        let from = From {
            node: "n1".into(),
            shard: 0,
            conn,
            room: format!("r{conn}"),
        };
        let mut out = Vec::new();
        if let Some((key, change)) = provider {
            out.push(Wire::Provider {
                from: from.clone(),
                pool: "nearby".into(),
                key: key.into(),
                provider: format!("u{conn}"),
                change,
            });
        }
        if let Some((key, change)) = search {
            out.push(Wire::Search {
                from,
                pool: "nearby".into(),
                key: key.into(),
                change,
            });
        }
        out
    }

    fn upsert(lat: f64) -> Provider {
        Provider::Upsert {
            lat,
            lon: 0.0,
            sub: "S".into(),
        }
    }

    fn set(lat: f64) -> Search {
        Search::Set {
            lat,
            lon: 0.0,
            radius_km: 5.0,
            sub: None,
        }
    }

    #[test]
    fn the_mirror_keeps_each_connections_last_word_and_forgets_what_it_took_back() {
        let mut m = Mirror::default();
        for w in said(1, Some(("A", upsert(1.0))), Some(("A", set(1.0))))
            .into_iter()
            .chain(said(1, Some(("A", upsert(2.0))), None))
            .chain(said(2, Some(("A", upsert(3.0))), None))
        {
            m.note(&w);
        }
        assert_eq!(m.len(), 2);
        let snap = m.snapshot();
        assert_eq!(
            snap,
            [
                said(1, Some(("A", upsert(2.0))), Some(("A", set(1.0)))),
                said(2, Some(("A", upsert(3.0))), None)
            ]
            .concat(),
            "the newest position, provider before search, by connection"
        );
        // A removal naming another pool instance leaves the placed provider alone (a status
        // update moving it sends the old instance's deactivation first).
        for w in said(
            1,
            Some(("B", Provider::Deactivate)),
            Some(("B", Search::Clear)),
        ) {
            m.note(&w);
        }
        assert_eq!(m.snapshot(), snap);
        for w in said(2, Some(("A", Provider::Deactivate)), None) {
            m.note(&w);
        }
        for w in said(
            1,
            Some(("A", Provider::Disconnected)),
            Some(("A", Search::Disconnected)),
        ) {
            m.note(&w);
        }
        assert!(
            m.is_empty(),
            "nothing left to resurrect: {:?}",
            m.snapshot()
        );
        // What is not a connection's state is not kept.
        m.note(&Wire::Alive { node: "n2".into() });
        assert!(m.is_empty());
        for w in said(3, Some(("A", upsert(1.0))), None) {
            m.note(&w);
        }
        m.forget(3);
        assert!(m.is_empty());
    }

    #[test]
    fn the_lease_answer_names_holder_and_epoch() {
        assert_eq!(
            Claim::parse(b"n1\nn1#00ff/2").unwrap(),
            Claim {
                holder: "n1".into(),
                epoch: "n1#00ff/2".into()
            }
        );
        assert_eq!(Claim::parse(b"n2\n").unwrap().epoch, "");
        assert!(Claim::parse(b"1").is_err());
        assert!(Claim::parse(b"\xff\n").is_err());
        assert_eq!(ready_key("app"), b"app.geo.home.ready");
    }

    /// A connection's step, as a session makes them: (action, pool instance, latitude).
    #[derive(Debug, Clone)]
    enum Step {
        Status(bool, u8, u8),
        Move(u8),
        Search(bool, u8, u8),
        Close,
    }

    fn step() -> impl Strategy<Value = (u64, Step)> {
        let s = prop_oneof![
            (any::<bool>(), 0..3u8, 0..50u8).prop_map(|(a, k, l)| Step::Status(a, k, l)),
            (0..50u8).prop_map(Step::Move),
            (any::<bool>(), 0..3u8, 0..50u8).prop_map(|(a, k, l)| Step::Search(a, k, l)),
            Just(Step::Close),
        ];
        (0..4u64, s)
    }

    /// The home's pools as a lone pool's rules keep them: providers by (instance, user) and
    /// searches by (instance, room), each with the message that placed it.
    #[derive(Debug, Default, PartialEq)]
    struct Home {
        providers: BTreeMap<(String, String), (u64, String)>,
        searches: BTreeMap<(String, String), (u64, String)>,
    }

    impl Home {
        fn apply(&mut self, w: &Wire) {
            let text = |w: &Wire| match w {
                Wire::Provider { change, .. } => format!("{change:?}"),
                Wire::Search { change, .. } => format!("{change:?}"),
                _ => String::new(),
            };
            match w {
                Wire::Provider {
                    from,
                    key,
                    provider,
                    change,
                    ..
                } => {
                    let id = (key.clone(), provider.clone());
                    match change {
                        Provider::Upsert { .. } => {
                            self.providers.insert(id, (from.conn, text(w)));
                        }
                        Provider::Deactivate => {
                            self.providers.remove(&id);
                        }
                        Provider::Disconnected => {
                            if self.providers.get(&id).is_some_and(|p| p.0 == from.conn) {
                                self.providers.remove(&id);
                            }
                        }
                    }
                }
                Wire::Search {
                    from, key, change, ..
                } => {
                    let id = (key.clone(), from.room.clone());
                    match change {
                        Search::Set { .. } => {
                            self.searches.insert(id, (from.conn, text(w)));
                        }
                        Search::Clear => {
                            self.searches.remove(&id);
                        }
                        Search::Disconnected => {
                            if self.searches.get(&id).is_some_and(|s| s.0 == from.conn) {
                                self.searches.remove(&id);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    proptest! {
        /// A new home that hears only the mirror's snapshot holds what the old home, which
        /// heard every message, holds: nothing a connection took back comes back.
        #[test]
        fn a_snapshot_rebuilds_what_the_live_messages_built(steps in proptest::collection::vec(step(), 0..60)) {
            // Per connection: the placed provider's instance, the search's instance.
            let mut placed: BTreeMap<u64, String> = BTreeMap::new();
            let mut searching: BTreeMap<u64, String> = BTreeMap::new();
            let mut mirror = Mirror::default();
            let mut old = Home::default();
            for (conn, s) in steps {
                let key = |k: u8| format!("K{k}");
                let mut sent = Vec::new();
                match s {
                    Step::Status(true, k, lat) => {
                        if let Some(prev) = placed.insert(conn, key(k)).filter(|p| *p != key(k)) {
                            sent.extend(said(conn, Some((&prev, Provider::Deactivate)), None));
                        }
                        sent.extend(said(conn, Some((&key(k), upsert(f64::from(lat)))), None));
                    }
                    Step::Status(false, _, _) => {
                        if let Some(prev) = placed.remove(&conn) {
                            sent.extend(said(conn, Some((&prev, Provider::Deactivate)), None));
                        }
                    }
                    Step::Move(lat) => {
                        if let Some(k) = placed.get(&conn) {
                            sent.extend(said(conn, Some((k, upsert(f64::from(lat)))), None));
                        }
                    }
                    Step::Search(true, k, lat) => {
                        if let Some(prev) = searching.insert(conn, key(k)).filter(|p| *p != key(k)) {
                            sent.extend(said(conn, None, Some((&prev, Search::Clear))));
                        }
                        sent.extend(said(conn, None, Some((&key(k), set(f64::from(lat))))));
                    }
                    Step::Search(false, _, _) => {
                        if let Some(prev) = searching.remove(&conn) {
                            sent.extend(said(conn, None, Some((&prev, Search::Clear))));
                        }
                    }
                    Step::Close => {
                        let p = placed.remove(&conn);
                        let q = searching.remove(&conn);
                        sent.extend(said(
                            conn,
                            p.as_deref().map(|k| (k, Provider::Disconnected)),
                            q.as_deref().map(|k| (k, Search::Disconnected)),
                        ));
                    }
                }
                for w in &sent {
                    mirror.note(w);
                    old.apply(w);
                }
            }
            let mut new = Home::default();
            let by_conn: Vec<Wire> = mirror.conns().into_iter().flat_map(|c| mirror.said(c)).collect();
            prop_assert_eq!(&by_conn, &mirror.snapshot());
            for w in by_conn {
                new.apply(&w);
            }
            prop_assert_eq!(&new, &old);
            prop_assert_eq!(mirror.len(), placed.keys().chain(searching.keys()).collect::<std::collections::BTreeSet<_>>().len());
        }
    }
}
