//! Fixtures the fuzz targets share: the protocols, token verifiers and identity the engine
//! would run with, built once per process so each iteration only pays for the code under test.
//!
//! # Layout
//! - `fuzz_targets/`: one thin target per input-facing layer (see README.md).
//! - `corpus/<target>/`: committed seeds, real inputs taken from tests, fixtures and seed docs.
//! - this file: the shared fixtures.

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use beacon::auth::{Algorithm, Identity, KeyMaterial, TokenRule, UserId, Verifier};
use beacon::protocol::{load_protocol, Protocol};
use beacon::ws::codec;
use serde_json::{json, Map, Value};

/// The clock every target runs at: Unix seconds, inside the tokens' validity in the corpus.
pub const NOW_S: u64 = 1_700_000_000;
pub const NOW_MS: u64 = NOW_S * 1000;

/// The HMAC secret of the fuzzed HS256 rule; the corpus tokens are signed with it.
pub const HS256_SECRET: &[u8] = b"beacon-fuzz-hs256-secret-0123456789abcdef";
const RSA_PUBLIC: &[u8] = include_bytes!("../../engine/src/auth/testdata/rsa_public.pem");

const DEFAULT_PROTOCOL: &str = include_str!("../../protocol.toml");
const CORE_PROTOCOL: &str = include_str!("../../tests/fixtures/core.toml");

fn load(src: &str) -> Protocol {
    match load_protocol(src) {
        Ok(p) => p,
        Err(d) => panic!("{}", beacon::protocol::render("fixture", src, &d)),
    }
}

/// The default `protocol.toml`, whose limits are the production ones.
pub fn default_protocol() -> &'static Protocol {
    static P: OnceLock<Protocol> = OnceLock::new();
    P.get_or_init(|| load(DEFAULT_PROTOCOL))
}

/// `tests/fixtures/core.toml`: every engine-core construct (typed fields, enums, templates
/// with `{gen.id}`/`{now.iso}`, forwarding, rate limits), so decode and render paths the
/// default protocol leaves unused are reached too.
pub fn core_protocol() -> &'static Protocol {
    static P: OnceLock<Protocol> = OnceLock::new();
    P.get_or_init(|| load(CORE_PROTOCOL))
}

/// The default protocol with a `[channel_layer]` mapping booking and user groups (the same
/// as `channel_layer`'s unit tests), for the channel-layer target.
pub fn channel_layer_protocol() -> &'static Protocol {
    static P: OnceLock<Protocol> = OnceLock::new();
    P.get_or_init(|| {
        load(&format!(
            "{DEFAULT_PROTOCOL}{}",
            r#"
[channel_layer]
about = "Booking and user groups."
groups = [
  { group = "booking_{id}", room = "booking:{id}" },
  { group = "user_{id}", room = "user:{id}" },
]
events."booking.status" = { send = "booking_status" }
events."notify" = { send = "notification", from = "payload" }
"#
        ))
    })
}

pub fn protocols() -> [&'static Protocol; 2] {
    [default_protocol(), core_protocol()]
}

/// The frame limits a production connection decodes with (`protocol.toml`'s `[limits]`).
pub fn server_ws_limits() -> codec::Limits {
    let l = &default_protocol().limits;
    codec::Limits {
        max_frame_bytes: l.max_frame_bytes,
        max_message_bytes: l.max_message_bytes,
    }
}

/// An HS256 rule shaped like `protocol.toml`'s `access` token, and an RS256 rule that also
/// checks issuer, audience and leeway.
pub fn verifiers() -> &'static [Verifier; 2] {
    static V: OnceLock<[Verifier; 2]> = OnceLock::new();
    V.get_or_init(|| {
        let hs = TokenRule {
            name: "access".into(),
            algorithms: vec![Algorithm::HS256],
            key: KeyMaterial::Hmac(HS256_SECRET.to_vec()),
            user_id_claim: "user_id".into(),
            required_claims: vec!["exp".into(), "user_id".into()],
            exact_claims: vec![("token_type".into(), json!("access"))],
            issuer: None,
            audience: None,
            leeway_s: 0,
        };
        let rs = TokenRule {
            name: "rs".into(),
            algorithms: vec![Algorithm::RS256],
            key: KeyMaterial::RsaPublicPem(RSA_PUBLIC.to_vec()),
            user_id_claim: "sub".into(),
            required_claims: vec![],
            exact_claims: vec![],
            issuer: Some("https://issuer.example".into()),
            audience: Some("beacon".into()),
            leeway_s: 30,
        };
        [
            Verifier::new(hs).expect("HS256 rule"),
            Verifier::new(rs).expect("RS256 rule"),
        ]
    })
}

/// Signs raw header and payload text with [`HS256_SECRET`], so a target can reach the claim
/// checks that sit behind the signature.
pub fn sign_hs256(header: &str, payload: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(HS256_SECRET);
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("HMAC signing cannot fail");
    format!("{message}.{sig}")
}

/// A member with staff rights: passes every authorize rule in the fixture protocols, so the
/// message target exercises what an admitted client can send.
pub fn identity() -> Identity {
    let mut claims = Map::new();
    claims.insert("user_id".into(), json!(7));
    claims.insert("role".into(), json!("member"));
    claims.insert("is_staff".into(), json!(true));
    claims.insert("token_type".into(), json!("access"));
    claims.insert("exp".into(), json!(NOW_S + 300));
    Identity {
        user_id: UserId::from_claim(&json!(7)).expect("integer user id"),
        claims,
        expires_at: NOW_S + 300,
        token_kind: Arc::from("access"),
    }
}

/// Path parameters for an endpoint: `7` satisfies both the string and the int type.
pub fn params_for(proto: &Protocol, endpoint: usize) -> Vec<String> {
    vec!["7".to_owned(); proto.endpoints[endpoint].path.params.len()]
}

/// The JSON object inside an unmasked server text frame; panics if it is anything else,
/// since every frame the engine renders must be one.
pub fn frame_json(frame: &[u8]) -> Map<String, Value> {
    assert_eq!(frame.first(), Some(&0x81), "not a final text frame");
    let (len, start) = match frame.get(1).copied().unwrap_or(0) {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    assert_eq!(
        frame.len(),
        start + len,
        "frame length disagrees with its header"
    );
    match serde_json::from_slice(&frame[start..]) {
        Ok(Value::Object(o)) => o,
        other => panic!("server frame is not a JSON object: {other:?}"),
    }
}
