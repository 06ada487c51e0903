//! Minting short-lived tokens for a protocol's own endpoints. Crosses shards (Send).

use std::fmt;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::key::{hmac_key, KeyError, KeyMaterial};

// JavaScript clients read `exp` as a double; beyond 2^53 - 1 it silently loses precision.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Signs tokens with one HMAC key. Crosses shards (Send).
///
/// For a protocol's own token endpoints, e.g. an app's `GET /api/user/ws-token/`; built once
/// at startup and shared read-only.
pub struct Issuer {
    algorithm: Algorithm,
    key: hmac::Key,
    // The header never varies, so it is encoded once.
    header_b64: String,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("token lifetime must be at least one second")]
    ZeroTtl,
    #[error("expiry time is out of range")]
    ExpiryOutOfRange,
}

impl Issuer {
    /// Builds an issuer for an HMAC algorithm (HS256/384/512). Public keys cannot sign, so any
    /// other key material is a [`KeyError::KeyAlgorithmMismatch`].
    pub fn new(algorithm: Algorithm, key: &KeyMaterial) -> Result<Issuer, KeyError> {
        let KeyMaterial::Hmac(secret) = key else {
            return Err(KeyError::KeyAlgorithmMismatch {
                algorithm,
                key: key.kind(),
            });
        };
        let key = hmac_key(algorithm, secret)?;
        let header = format!(r#"{{"alg":"{algorithm:?}","typ":"JWT"}}"#);
        Ok(Issuer {
            algorithm,
            key,
            header_b64: URL_SAFE_NO_PAD.encode(header),
        })
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Signs `claims` plus `iat = now_unix`, `exp = now_unix + ttl_s` and a random 16-hex-digit
    /// `jti`, overwriting any the caller set, so a token's lifetime is always the issuer's.
    pub fn issue(
        &self,
        claims: Map<String, Value>,
        now_unix: u64,
        ttl_s: u64,
    ) -> Result<String, IssueError> {
        let jti = format!("{:016x}", rand::random::<u64>());
        self.issue_with_jti(claims, now_unix, ttl_s, jti)
    }

    fn issue_with_jti(
        &self,
        mut claims: Map<String, Value>,
        now_unix: u64,
        ttl_s: u64,
        jti: String,
    ) -> Result<String, IssueError> {
        if ttl_s == 0 {
            return Err(IssueError::ZeroTtl);
        }
        let exp = now_unix
            .checked_add(ttl_s)
            .filter(|exp| *exp <= MAX_SAFE_INTEGER)
            .ok_or(IssueError::ExpiryOutOfRange)?;
        claims.insert("iat".to_owned(), now_unix.into());
        claims.insert("exp".to_owned(), exp.into());
        claims.insert("jti".to_owned(), jti.into());
        // A map of JSON values always serialises; `Value`'s Display is that serialisation.
        let payload = Value::Object(claims).to_string();

        let mut token = String::with_capacity(
            self.header_b64.len() + payload.len() * 4 / 3 + 4 + 2 + 88, // 88: HS512 signature
        );
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let tag = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KeyKind, TokenError, TokenRule, UserId, Verifier};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn verifier(algorithm: Algorithm) -> Verifier {
        Verifier::new(TokenRule {
            name: "ws".into(),
            algorithms: vec![algorithm],
            key: KeyMaterial::Hmac(SECRET.to_vec()),
            user_id_claim: "user_id".into(),
            required_claims: vec!["jti".into(), "iat".into()],
            exact_claims: vec![("token_type".into(), json!("ws"))],
            issuer: None,
            audience: None,
            leeway_s: 0,
        })
        .unwrap()
    }

    #[test]
    fn issued_tokens_verify_for_their_lifetime_only() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let issuer = Issuer::new(alg, &KeyMaterial::Hmac(SECRET.to_vec())).unwrap();
            let token = issuer
                .issue(
                    claims(json!({"user_id": 42, "token_type": "ws"})),
                    NOW,
                    1800,
                )
                .unwrap();
            let verifier = verifier(alg);
            let identity = verifier.verify(&token, NOW).unwrap();
            assert_eq!(identity.user_id, UserId::from_text("42").unwrap());
            assert_eq!(identity.expires_at, NOW + 1800);
            assert_eq!(identity.claims["iat"], json!(NOW));
            assert!(verifier.verify(&token, NOW + 1799).is_ok());
            assert_eq!(
                verifier.verify(&token, NOW + 1800).unwrap_err(),
                TokenError::Expired
            );
        }
    }

    #[test]
    fn issued_tokens_match_jsonwebtoken() {
        let issuer = Issuer::new(Algorithm::HS256, &KeyMaterial::Hmac(SECRET.to_vec())).unwrap();
        let token = issuer
            .issue(claims(json!({"user_id": "u-1"})), NOW, 60)
            .unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(SECRET),
            &validation,
        )
        .unwrap();
        assert_eq!(data.header.typ.as_deref(), Some("JWT"));
        assert_eq!(data.claims["exp"], json!(NOW + 60));
    }

    #[test]
    fn caller_cannot_override_lifetime_claims() {
        let issuer = Issuer::new(Algorithm::HS256, &KeyMaterial::Hmac(SECRET.to_vec())).unwrap();
        let token = issuer
            .issue_with_jti(
                claims(json!({"user_id": 1, "exp": u64::MAX, "iat": 0, "jti": "mine"})),
                NOW,
                60,
                "0000000000000001".into(),
            )
            .unwrap();
        let identity = verifier(Algorithm::HS256).verify(&token, NOW);
        // token_type is missing, but the claims were still overwritten.
        assert_eq!(identity.unwrap_err(), TokenError::MissingClaim);
        let payload = token.split('.').nth(1).unwrap();
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(payload["exp"], json!(NOW + 60));
        assert_eq!(payload["iat"], json!(NOW));
        assert_eq!(payload["jti"], json!("0000000000000001"));
    }

    #[test]
    fn jti_is_random_hex() {
        let issuer = Issuer::new(Algorithm::HS256, &KeyMaterial::Hmac(SECRET.to_vec())).unwrap();
        let jti = |token: String| {
            let payload = token.split('.').nth(1).unwrap().to_owned();
            let payload: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
            payload["jti"].as_str().unwrap().to_owned()
        };
        let a = jti(issuer.issue(Map::new(), NOW, 60).unwrap());
        let b = jti(issuer.issue(Map::new(), NOW, 60).unwrap());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn bad_lifetimes_are_refused() {
        let issuer = Issuer::new(Algorithm::HS256, &KeyMaterial::Hmac(SECRET.to_vec())).unwrap();
        assert_eq!(issuer.issue(Map::new(), NOW, 0), Err(IssueError::ZeroTtl));
        assert_eq!(
            issuer.issue(Map::new(), u64::MAX, 1),
            Err(IssueError::ExpiryOutOfRange)
        );
        assert_eq!(
            issuer.issue(Map::new(), MAX_SAFE_INTEGER, 1),
            Err(IssueError::ExpiryOutOfRange)
        );
    }

    #[test]
    fn only_strong_hmac_keys_issue() {
        let rsa = KeyMaterial::RsaPublicPem(include_bytes!("testdata/rsa_public.pem").to_vec());
        assert_eq!(
            Issuer::new(Algorithm::RS256, &rsa).unwrap_err(),
            KeyError::KeyAlgorithmMismatch {
                algorithm: Algorithm::RS256,
                key: KeyKind::RsaPublic
            }
        );
        assert_eq!(
            Issuer::new(Algorithm::RS256, &KeyMaterial::Hmac(SECRET.to_vec())).unwrap_err(),
            KeyError::KeyAlgorithmMismatch {
                algorithm: Algorithm::RS256,
                key: KeyKind::Hmac
            }
        );
        assert!(matches!(
            Issuer::new(Algorithm::HS256, &KeyMaterial::Hmac(b"short".to_vec())),
            Err(KeyError::WeakHmacSecret { .. })
        ));
        assert!(matches!(
            Issuer::new(Algorithm::PS256, &KeyMaterial::Hmac(SECRET.to_vec())),
            Err(KeyError::UnsupportedAlgorithm(_))
        ));
    }
}
