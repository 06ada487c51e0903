//! Sans-IO HTTP/1.1 upgrade parsing and the RFC 6455 frame codec. Owned by the connection's shard.
//!
//! Nothing here touches a socket, a clock or the runtime: the network layer feeds bytes in and
//! writes the bytes these functions return, so every rule is testable with plain buffers.
//!
//! - [`http`]: request-head parsing.
//! - [`http_error`]: every HTTP error answer, and the one table from it to status and headers.
//! - [`handshake`]: upgrade validation (RFC 6455 §4.2) and response builders.
//! - [`codec`]: the inbound frame [`codec::Decoder`] and outbound frame encoders.

pub mod codec;
pub mod handshake;
pub mod http;
pub mod http_error;
