//! Beacon: a thread-per-core realtime WebSocket engine whose wire protocol is declared in
//! `protocol.toml`.
//!
//! # Layout
//!
//! Plain, sans-IO code (no glommio, no clock reads, no spawning):
//! - [`ws`]: HTTP/1.1 upgrade parsing and the RFC 6455 frame codec.
//! - [`auth`]: JWT verification against the protocol's declared token rules.
//! - [`protocol`]: the protocol file model: raw TOML, validation with diagnostics, frozen form.
//! - [`geo`]: the R-tree provider index and standing radius searches, and dispatched jobs.
//! - [`history`]: room history, resume by offset and epoch, the seam, latest-value rooms.
//! - [`message`]: schema checks and template rendering of messages.
//! - [`publish`]: the publish API's body rules (validation and encoding, no socket).
//! - [`admission`]: which endpoint an upgrade opens, its token, its home room, its refusals.
//! - [`session`]: what each inbound message does, per connection.
//! - [`lifecycle`]: a connection's pings, idle timeout, token expiry and close handshake.
//! - [`token_bucket`]: the one rate limiter, for message rates and HTTP caller rates.
//! - [`config`]: deployment settings.
//! - [`broker`]: RESP (Redis) and NATS codecs, and the envelope a delivery wears between nodes.
//! - [`asyncapi`]: the protocol as an AsyncAPI 3.0 document.
//!
//! I/O at the edge:
//! - [`runtime`]: glommio shards, the accept/hand-off path, rooms, the HTTP API.

pub mod admission;
pub mod asyncapi;
pub mod auth;
pub mod broker;
pub mod channel_layer;
pub mod config;
pub mod geo;
pub mod history;
pub mod lifecycle;
pub mod message;
pub mod protocol;
pub mod publish;
pub mod runtime;
pub mod session;
pub mod startup;
pub mod token_bucket;
pub mod ws;
