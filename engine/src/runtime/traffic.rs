//! The kinds of traffic between shards and what a full inbox does to each: the one policy
//! table. [`super::router`] applies it.
//!
//! Inboxes are bounded, so every kind of traffic declares what happens when the owner's inbox
//! is full ([`Traffic::policy`]), and every message that does not get through is counted in
//! `beacon_inbox_full_total{traffic}` (the shard's probe):
//!
//! | traffic | full inbox |
//! |---|---|
//! | `broadcast`: a socket's or `[[http]]` broadcast to another shard's room | dropped |
//! | `geo`: a connection's provider update, search or job response for the owner | dropped |
//! | `geo_frames`: geo notifications and dispatch offers for members' rooms | dropped |
//! | `publish`: the first part of `POST /api/publish` for a shard | waits up to 200 ms, then the request answers 503 |
//! | `publish_rest`: the rest of a publish once a part is out | waits until it fits (all or nothing) |
//! | `dispatch`: a dispatch's nearest-providers question and its job | waits up to 200 ms, then 503 |
//! | `rate_check`: a per-caller `[[http]]` rate check | waits up to 200 ms, then the request is refused as over its limit (429, `Retry-After: 1`) |
//! | `handoff`: an upgraded socket for its home room's owner | waits up to 1 s, then 503 (or close 1013) |
//! | `fan`: a spread room's message, sequenced by its owner, for its members on another shard | dropped |
//! | `spread_join`: a socket that stays on its shard asks its room's owner for the room's messages | waits up to 1 s, then 503 (or close 1013) |
//! | `spread_ack`: the owner's answer, after which the socket joins | dropped (the socket is refused after its wait) |
//! | `spread_leave`: a spread member left | waits until it fits |
//!
//! Dropping is for traffic nobody waits on: stalling the sending shard for a drowning owner
//! would slow every other connection of the sender. Traffic with a caller waiting (an HTTP
//! request, a handshake) waits instead, and gives the message back when it cannot, so the
//! caller can answer.

use std::time::Duration;

/// A kind of traffic between shards; it decides what a full inbox does (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Broadcast,
    Geo,
    GeoFrames,
    Publish,
    PublishRest,
    Dispatch,
    RateCheck,
    Handoff,
    Fan,
    SpreadJoin,
    SpreadAck,
    SpreadLeave,
}

/// What a full inbox does to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Dropped at once.
    Drop,
    /// Retried with a short backoff for up to this long, then given back to the caller.
    Wait(Duration),
    /// Retried until it fits.
    MustArrive,
}

impl Traffic {
    pub const ALL: [Traffic; 12] = [
        Traffic::Broadcast,
        Traffic::Geo,
        Traffic::GeoFrames,
        Traffic::Publish,
        Traffic::PublishRest,
        Traffic::Dispatch,
        Traffic::RateCheck,
        Traffic::Handoff,
        Traffic::Fan,
        Traffic::SpreadJoin,
        Traffic::SpreadAck,
        Traffic::SpreadLeave,
    ];

    pub fn policy(self) -> Policy {
        match self {
            Traffic::Broadcast
            | Traffic::Geo
            | Traffic::GeoFrames
            | Traffic::Fan
            | Traffic::SpreadAck => Policy::Drop,
            Traffic::Publish | Traffic::Dispatch | Traffic::RateCheck => {
                Policy::Wait(Duration::from_millis(200))
            }
            Traffic::Handoff | Traffic::SpreadJoin => Policy::Wait(Duration::from_secs(1)),
            Traffic::PublishRest | Traffic::SpreadLeave => Policy::MustArrive,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Traffic::Broadcast => "broadcast",
            Traffic::Geo => "geo",
            Traffic::GeoFrames => "geo_frames",
            Traffic::Publish => "publish",
            Traffic::PublishRest => "publish_rest",
            Traffic::Dispatch => "dispatch",
            Traffic::RateCheck => "rate_check",
            Traffic::Handoff => "handoff",
            Traffic::Fan => "fan",
            Traffic::SpreadJoin => "spread_join",
            Traffic::SpreadAck => "spread_ack",
            Traffic::SpreadLeave => "spread_leave",
        }
    }
}
