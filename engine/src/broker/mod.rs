//! Beacon nodes sharing rooms through a broker: the wire codecs and the envelope, all sans-IO
//! (no glommio, no clock). The connections themselves live in `runtime/cluster.rs`.
//!
//! Layout:
//! - [`resp`]: Redis's RESP2/RESP3 replies and pushes, and commands.
//! - [`nats`]: the core NATS client protocol, and room names as subject tokens.
//! - [`envelope`]: what one delivery looks like on a broker channel, and channel names.
//! - [`geo`]: geo requests for the node that holds the pools and jobs, and its answers.
//! - [`partition`]: which Redis (instance, or Redis Cluster slot) a room or user lives on.

pub mod envelope;
pub mod geo;
pub mod nats;
pub mod partition;
pub mod resp;
