//! Sans-IO JWT verification and issuance, built once at startup and shared read-only. Crosses shards (Send).
//!
//! The protocol declares token kinds ([`TokenRule`]); at startup each becomes a [`Verifier`]
//! whose keys are parsed once. On the hot path [`Verifier::verify`] takes the token and the
//! current time as arguments: nothing here reads a clock, touches the network or spawns.
//! Failures are plain [`TokenError`] values, each classed as a [`TokenRejection`] that the
//! protocol's close-code table maps to one code.
//!
//! # Why not `jsonwebtoken::decode`
//!
//! jsonwebtoken still parses the PEM keys, but signature checks go straight to aws-lc (the
//! backend jsonwebtoken itself uses here):
//! - `decode` builds a boxed verifier and re-parses the RSA/EC key DER on every call, and
//!   parses the claims twice; [`Verifier`] keeps parsed keys and parses the claims once.
//! - `decode` reads the system clock; we check `exp`/`nbf` against the caller's `now` and
//!   refuse non-numeric time claims outright (10.3 fixed the string-`exp` skip only when its
//!   own validation is on).
//! - Its `Header` deserialises every field (a hostile `kid` of any type fails the whole
//!   parse, a large one is copied); ours reads `alg` and `crit` only.
//!
//! # Layout
//! - `key`: [`KeyMaterial`], [`KeyError`], algorithm names, keys parsed for verification.
//! - `verify`: [`TokenRule`], [`Verifier`], [`Identity`], [`TokenError`].
//! - `user_id`: [`UserId`], the canonical form of numeric and string user ids.
//! - `issue`: [`Issuer`], HMAC tokens for the protocol's own endpoints.

mod issue;
mod key;
mod user_id;
mod verify;

pub use issue::{IssueError, Issuer};
pub use key::{algorithm_from_name, KeyError, KeyKind, KeyMaterial, MAX_LEEWAY_S};
pub use user_id::{UserId, MAX_USER_ID_BYTES};
pub use verify::{
    verify_any, Identity, TokenError, TokenRejection, TokenRule, Verifier, MAX_TOKEN_BYTES,
};

/// Re-exported so protocol code names algorithms without depending on jsonwebtoken itself.
pub use jsonwebtoken::Algorithm;

#[cfg(test)]
mod tests;

/// A verifier for a protocol's token kind with an HMAC `secret`, for unit tests elsewhere in
/// the crate.
#[cfg(test)]
pub(crate) fn hmac_verifier(t: &crate::protocol::TokenSpec, secret: &[u8]) -> Verifier {
    Verifier::new(TokenRule {
        name: t.name.clone(),
        algorithms: t.algorithms.clone(),
        key: KeyMaterial::Hmac(secret.to_vec()),
        user_id_claim: t.user_id_claim.clone(),
        required_claims: t.required_claims.clone(),
        exact_claims: t.exact_claims.clone(),
        issuer: None,
        audience: None,
        leeway_s: t.leeway_s,
    })
    .expect("an HMAC key verifies any HS algorithm")
}
