//! Token rules and their verifiers: one per protocol token kind. Crosses shards (Send).

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::key::{header_algorithm, KeyError, KeyMaterial, SigKey, MAX_LEEWAY_S};
use super::user_id::UserId;

/// Largest token accepted, in bytes; anything longer is refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

// A legitimate header is `{"alg":..,"typ":..,"kid":..}`; bounding it keeps the decode on the
// stack and refuses x5c chains and other bulk we never read.
const MAX_HEADER_BYTES: usize = 1024;
// An RSA-8192 signature, the largest aws-lc accepts.
const MAX_SIGNATURE_BYTES: usize = 1024;

/// How the protocol declares one kind of token ("access", "ws"). Startup data.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRule {
    /// The protocol's name for this token kind, e.g. `access`.
    pub name: String,
    /// Algorithms a token's header may name; all must suit `key`.
    pub algorithms: Vec<Algorithm>,
    pub key: KeyMaterial,
    /// Claim holding the user id, e.g. `user_id` (Django simplejwt) or `sub`.
    pub user_id_claim: String,
    /// Claims that must be present and not null. `exp` is always required regardless.
    pub required_claims: Vec<String>,
    /// Claims that must be present with exactly this JSON value, e.g. `token_type = "access"`.
    /// Compared as JSON values: `1` and `1.0` differ.
    pub exact_claims: Vec<(String, Value)>,
    /// Required `iss`, compared exactly.
    pub issuer: Option<String>,
    /// Required member of `aud` (a string or an array of strings in the token).
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, at most [`MAX_LEEWAY_S`].
    pub leeway_s: u64,
}

/// Why a token was refused. Plain data: no text is formatted on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenError {
    /// Not a compact JWS, too large, bad base64 or JSON, a `crit` header, or a time claim
    /// (`exp`, `nbf`) that is not a JSON number.
    Malformed,
    /// The header names an algorithm this rule does not allow (including `none`).
    AlgorithmNotAllowed,
    BadSignature,
    Expired,
    NotYetValid,
    /// A required claim is absent (or null): `exp`, the user id, `iss`/`aud` when the rule
    /// sets them, or one of the rule's required or exact claims.
    MissingClaim,
    /// An exact claim has another value.
    ClaimMismatch,
    WrongIssuer,
    /// `aud` does not name the rule's audience, or the token carries an `aud` the rule does
    /// not expect (RFC 7519 4.1.3: a recipient not named in `aud` must refuse).
    WrongAudience,
    /// The user id claim is present but not an integer or an acceptable string.
    BadUserId,
}

impl TokenError {
    /// How the protocol answers: each class maps to one close code.
    pub fn class(&self) -> TokenRejection {
        match self {
            TokenError::Expired => TokenRejection::Expired,
            _ => TokenRejection::Invalid,
        }
    }

    /// A stable snake_case code for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::MissingClaim => "missing_claim",
            TokenError::ClaimMismatch => "claim_mismatch",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::BadUserId => "bad_user_id",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for TokenError {}

/// The two answers a client can act on: fetch a fresh token, or give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRejection {
    Invalid,
    Expired,
}

/// Tries each of `kinds` (indices into `verifiers`); the first that verifies wins. When none
/// does, the token is `Expired` only if some kind recognised it as its own but stale: a stale
/// token of one kind must not read as "expired" to a client holding a forged one of another.
pub fn verify_any(
    verifiers: &[Verifier],
    kinds: &[usize],
    token: &str,
    now_unix: u64,
) -> Result<Identity, TokenRejection> {
    let mut expired = false;
    for v in kinds.iter().filter_map(|&k| verifiers.get(k)) {
        match v.verify(token, now_unix) {
            Ok(id) => return Ok(id),
            Err(e) => expired |= e.class() == TokenRejection::Expired,
        }
    }
    Err(if expired {
        TokenRejection::Expired
    } else {
        TokenRejection::Invalid
    })
}

/// Who a verified token speaks for. Crosses shards (Send).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: UserId,
    /// Every claim of the token, for authorization rules that read more than the user id.
    pub claims: Map<String, Value>,
    /// `exp`, rounded down to whole seconds.
    pub expires_at: u64,
    /// The [`TokenRule::name`] that accepted the token.
    pub token_kind: Arc<str>,
}

/// Checks tokens of one kind against its rule. Crosses shards (Send).
///
/// Built once at startup and shared read-only (e.g. in an `Arc`); `verify` takes `&self`.
pub struct Verifier {
    kind: Arc<str>,
    // At most three entries (HS256/384/512), so a scan beats any map.
    keys: Vec<(Algorithm, SigKey)>,
    user_id_claim: String,
    required_claims: Vec<String>,
    exact_claims: Vec<(String, Value)>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
    /// Signs tokens of this kind when its key is an HMAC secret (tokens Beacon mints).
    signer: Option<super::Issuer>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("kind", &self.kind)
            .field(
                "algorithms",
                &self.keys.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Only the header fields we act on; everything else (notably `kid`, of any type or size)
/// is skipped unread, so it can never select a key.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: &'a str,
    // We implement no extensions, so RFC 7515 4.1.11 obliges us to refuse any `crit`.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

impl Verifier {
    /// Parses the rule's key once and checks the rule is usable.
    pub fn new(rule: TokenRule) -> Result<Verifier, KeyError> {
        if rule.algorithms.is_empty() {
            return Err(KeyError::NoAlgorithms);
        }
        if rule.leeway_s > MAX_LEEWAY_S {
            return Err(KeyError::LeewayTooLarge {
                leeway_s: rule.leeway_s,
                max: MAX_LEEWAY_S,
            });
        }
        if rule.user_id_claim.is_empty() {
            return Err(KeyError::EmptyUserIdClaim);
        }
        let mut keys: Vec<(Algorithm, SigKey)> = Vec::with_capacity(rule.algorithms.len());
        for &algorithm in &rule.algorithms {
            if keys.iter().any(|(a, _)| *a == algorithm) {
                continue;
            }
            keys.push((algorithm, SigKey::new(algorithm, &rule.key)?));
        }
        let signer = match &rule.key {
            KeyMaterial::Hmac(_) => super::Issuer::new(rule.algorithms[0], &rule.key).ok(),
            _ => None,
        };
        debug_assert!(keys.windows(2).all(|w| w[0].0.family() == w[1].0.family()));
        debug_assert!(keys.iter().all(|(a, _)| a.family() != AlgorithmFamily::Ed));
        Ok(Verifier {
            kind: rule.name.into(),
            keys,
            user_id_claim: rule.user_id_claim,
            required_claims: rule.required_claims,
            exact_claims: rule.exact_claims,
            issuer: rule.issuer,
            audience: rule.audience,
            leeway_s: rule.leeway_s,
            signer,
        })
    }

    /// An issuer for this token kind, when its key can sign (HMAC).
    pub fn signer(&self) -> Option<&super::Issuer> {
        self.signer.as_ref()
    }

    /// The rule name this verifier checks.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Verifies a compact JWS at time `now_unix` (seconds since the epoch).
    ///
    /// Order: size, shape, header, algorithm, signature, then claims; nothing in the payload
    /// is parsed before the signature holds. Time boundaries (RFC 7519 4.1.4, 4.1.5): valid
    /// while `now < exp + leeway` (so `exp == now` is expired) and once `now + leeway >= nbf`.
    /// A fractional `exp` is rounded down and `nbf` up, both towards refusal.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, TokenError> {
        let token = token.as_bytes();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let parts = split_compact(token)?;

        let mut header_buf = [0u8; MAX_HEADER_BYTES];
        let header_len = URL_SAFE_NO_PAD
            .decode_slice(parts.header, &mut header_buf)
            .map_err(|_| TokenError::Malformed)?;
        let header: Header<'_> =
            serde_json::from_slice(&header_buf[..header_len]).map_err(|_| TokenError::Malformed)?;
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        let algorithm = header_algorithm(header.alg).ok_or(TokenError::AlgorithmNotAllowed)?;
        let key = self
            .keys
            .iter()
            .find_map(|(a, key)| (*a == algorithm).then_some(key))
            .ok_or(TokenError::AlgorithmNotAllowed)?;

        let mut signature_buf = [0u8; MAX_SIGNATURE_BYTES];
        let signature_len = URL_SAFE_NO_PAD
            .decode_slice(parts.signature, &mut signature_buf)
            .map_err(|_| TokenError::Malformed)?;
        let signed = &token[..parts.header.len() + 1 + parts.payload.len()];
        if !key.verify(signed, &signature_buf[..signature_len]) {
            return Err(TokenError::BadSignature);
        }

        let payload = URL_SAFE_NO_PAD
            .decode(parts.payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let expires_at = self.check_claims(&claims, now_unix)?;
        let user_id = match claims.get(&self.user_id_claim) {
            None | Some(Value::Null) => return Err(TokenError::MissingClaim),
            Some(value) => UserId::from_claim(value).ok_or(TokenError::BadUserId)?,
        };
        Ok(Identity {
            user_id,
            claims,
            expires_at,
            token_kind: Arc::clone(&self.kind),
        })
    }

    /// Checks times, issuer, audience and the rule's claims; returns `exp`.
    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<u64, TokenError> {
        // Types first, so a string `exp`/`nbf` is Malformed whatever the clock says: strings
        // must never be mistaken for "no time limit" (CVE-2026-25537).
        let exp = match claims.get("exp") {
            None => return Err(TokenError::MissingClaim),
            Some(v) => numeric_date(v, Rounding::Down)?,
        };
        let nbf = claims
            .get("nbf")
            .map(|v| numeric_date(v, Rounding::Up))
            .transpose()?;
        if exp.saturating_add(self.leeway_s) <= now {
            return Err(TokenError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway_s)) {
            return Err(TokenError::NotYetValid);
        }

        if let Some(expected) = &self.issuer {
            match claims.get("iss") {
                None | Some(Value::Null) => return Err(TokenError::MissingClaim),
                Some(Value::String(iss)) if iss == expected => {}
                Some(_) => return Err(TokenError::WrongIssuer),
            }
        }
        match (&self.audience, claims.get("aud")) {
            (None, None | Some(Value::Null)) => {}
            (None, Some(_)) => return Err(TokenError::WrongAudience),
            (Some(_), None | Some(Value::Null)) => return Err(TokenError::MissingClaim),
            (Some(expected), Some(aud)) => {
                let named = match aud {
                    Value::String(one) => one == expected,
                    Value::Array(many) => many.iter().any(|a| a.as_str() == Some(expected)),
                    _ => false,
                };
                if !named {
                    return Err(TokenError::WrongAudience);
                }
            }
        }

        for name in &self.required_claims {
            if matches!(claims.get(name), None | Some(Value::Null)) {
                return Err(TokenError::MissingClaim);
            }
        }
        for (name, expected) in &self.exact_claims {
            match claims.get(name) {
                None => return Err(TokenError::MissingClaim),
                Some(value) if value == expected => {}
                Some(_) => return Err(TokenError::ClaimMismatch),
            }
        }
        Ok(exp)
    }
}

/// The three base64url parts of a compact JWS, still encoded.
struct Compact<'a> {
    header: &'a [u8],
    payload: &'a [u8],
    signature: &'a [u8],
}

/// Splits `header.payload.signature`; exactly two dots, no empty header or payload.
fn split_compact(token: &[u8]) -> Result<Compact<'_>, TokenError> {
    let mut parts = token.splitn(4, |b| *b == b'.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None)
            if !header.is_empty() && !payload.is_empty() =>
        {
            Ok(Compact {
                header,
                payload,
                signature,
            })
        }
        _ => Err(TokenError::Malformed),
    }
}

#[derive(Clone, Copy)]
enum Rounding {
    Down,
    Up,
}

/// Reads a NumericDate (RFC 7519 2): any JSON number, clamped into `u64` seconds. Anything
/// else, strings and null included, is Malformed.
fn numeric_date(value: &Value, rounding: Rounding) -> Result<u64, TokenError> {
    let Value::Number(n) = value else {
        return Err(TokenError::Malformed);
    };
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    if n.is_i64() {
        return Ok(0);
    }
    let f = n.as_f64().ok_or(TokenError::Malformed)?;
    let whole = match rounding {
        Rounding::Down => f.floor(),
        Rounding::Up => f.ceil(),
    };
    // `as` saturates: negatives become 0 and huge values u64::MAX, both safe ends here.
    Ok(whole as u64)
}
