//! Key material and the signature keys built from it once at startup. Crosses shards (Send).

use std::fmt;

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{ParsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// Key material as loaded by the caller (config, environment, PEM file). Crosses shards (Send).
///
/// Turned into a [`Verifier`](super::Verifier) or [`Issuer`](super::Issuer) at startup;
/// never touched on the hot path.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// A shared HMAC secret (raw bytes, not base64). Signs and verifies.
    Hmac(Vec<u8>),
    /// An RSA public key, PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`). Verifies only.
    RsaPublicPem(Vec<u8>),
    /// A P-256 public key, PEM (`PUBLIC KEY`). Verifies only.
    EcPublicPem(Vec<u8>),
}

impl KeyMaterial {
    /// The key's kind, for diagnostics.
    pub fn kind(&self) -> KeyKind {
        match self {
            KeyMaterial::Hmac(_) => KeyKind::Hmac,
            KeyMaterial::RsaPublicPem(_) => KeyKind::RsaPublic,
            KeyMaterial::EcPublicPem(_) => KeyKind::EcPublic,
        }
    }
}

// Secrets must never reach a log line through `{:?}`.
impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = match self {
            KeyMaterial::Hmac(b) | KeyMaterial::RsaPublicPem(b) | KeyMaterial::EcPublicPem(b) => {
                b.len()
            }
        };
        write!(f, "{:?}({len} bytes, redacted)", self.kind())
    }
}

/// What a [`KeyMaterial`] is, without its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Hmac,
    RsaPublic,
    EcPublic,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Hmac => "an HMAC secret",
            KeyKind::RsaPublic => "an RSA public key",
            KeyKind::EcPublic => "an EC P-256 public key",
        })
    }
}

/// Largest leeway a rule may grant, in seconds.
pub const MAX_LEEWAY_S: u64 = 300;

/// Why a token rule or issuer could not be built. Startup only, so it may carry text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no algorithm allowed; list at least one of HS256, HS384, HS512, RS256, ES256")]
    NoAlgorithms,
    #[error(
        "algorithm `{0}` is not supported; use one of HS256, HS384, HS512, RS256, ES256 \
         (\"none\" is never accepted)"
    )]
    UnsupportedAlgorithm(String),
    #[error(
        "algorithm {algorithm:?} cannot be used with {key}; one key serves one algorithm family \
         (HMAC secrets for HS*, RSA public keys for RS256, EC public keys for ES256)"
    )]
    KeyAlgorithmMismatch { algorithm: Algorithm, key: KeyKind },
    #[error(
        "HMAC secret is {len} bytes; {algorithm:?} needs at least {min} bytes (RFC 7518 3.2: \
         no shorter than the hash output); generate one with `openssl rand -base64 64`"
    )]
    WeakHmacSecret {
        algorithm: Algorithm,
        len: usize,
        min: usize,
    },
    #[error(
        "HMAC secret looks like a PEM key; a public key used as an HMAC secret lets anyone who \
         has it forge tokens (RS/HS key confusion). Configure it as an RSA or EC public key"
    )]
    HmacSecretIsPem,
    #[error(
        "could not parse {key} from PEM: expected a `-----BEGIN PUBLIC KEY-----` block holding \
         {key} (private keys and certificates are refused)"
    )]
    BadPem { key: KeyKind },
    #[error(
        "RSA public key rejected: it must be 2048 to 8192 bits (`openssl genpkey -algorithm RSA \
         -pkeyopt rsa_keygen_bits:2048`)"
    )]
    WeakRsaKey,
    #[error("leeway of {leeway_s} s is above the maximum of {max} s")]
    LeewayTooLarge { leeway_s: u64, max: u64 },
    #[error("the user id claim name is empty")]
    EmptyUserIdClaim,
}

/// Maps a protocol file's algorithm name to a supported [`Algorithm`].
///
/// Exists because [`Algorithm`] cannot spell `none`: the protocol layer needs a single place
/// that refuses it (in any case) with a diagnostic instead of a serde error.
pub fn algorithm_from_name(name: &str) -> Result<Algorithm, KeyError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(KeyError::UnsupportedAlgorithm(other.to_owned())),
    }
}

/// Maps a token header's `alg` to a supported algorithm; anything else (including every
/// spelling of `none`) is simply not found.
pub(super) fn header_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

fn check_supported(algorithm: Algorithm) -> Result<(), KeyError> {
    match algorithm {
        Algorithm::HS256
        | Algorithm::HS384
        | Algorithm::HS512
        | Algorithm::RS256
        | Algorithm::ES256 => Ok(()),
        other => Err(KeyError::UnsupportedAlgorithm(format!("{other:?}"))),
    }
}

fn hmac_algorithm(algorithm: Algorithm) -> Option<(hmac::Algorithm, usize)> {
    match algorithm {
        Algorithm::HS256 => Some((hmac::HMAC_SHA256, 32)),
        Algorithm::HS384 => Some((hmac::HMAC_SHA384, 48)),
        Algorithm::HS512 => Some((hmac::HMAC_SHA512, 64)),
        _ => None,
    }
}

/// Builds the HMAC key for one algorithm, refusing short or PEM-shaped secrets.
pub(super) fn hmac_key(algorithm: Algorithm, secret: &[u8]) -> Result<hmac::Key, KeyError> {
    check_supported(algorithm)?;
    let (hmac_alg, min) = hmac_algorithm(algorithm).ok_or(KeyError::KeyAlgorithmMismatch {
        algorithm,
        key: KeyKind::Hmac,
    })?;
    if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Err(KeyError::HmacSecretIsPem);
    }
    if secret.len() < min {
        return Err(KeyError::WeakHmacSecret {
            algorithm,
            len: secret.len(),
            min,
        });
    }
    Ok(hmac::Key::new(hmac_alg, secret))
}

/// A key ready to check one algorithm's signatures, parsed once.
// Built once and kept in a Vec of at most three, so the HMAC variant's size costs nothing;
// boxing it would add a pointer chase per verify.
#[allow(clippy::large_enum_variant)]
pub(super) enum SigKey {
    Hmac(hmac::Key),
    // aws-lc's parsed key keeps the EVP_PKEY, so RSA/EC verification does not re-parse DER
    // per token (jsonwebtoken's `decode` does, and builds a boxed verifier each call).
    Public(ParsedPublicKey),
}

impl SigKey {
    /// Builds the key for `algorithm` from `material`, refusing family mismatches.
    pub(super) fn new(algorithm: Algorithm, material: &KeyMaterial) -> Result<SigKey, KeyError> {
        check_supported(algorithm)?;
        let mismatch = KeyError::KeyAlgorithmMismatch {
            algorithm,
            key: material.kind(),
        };
        match (algorithm.family(), material) {
            (AlgorithmFamily::Hmac, KeyMaterial::Hmac(secret)) => {
                Ok(SigKey::Hmac(hmac_key(algorithm, secret)?))
            }
            (AlgorithmFamily::Rsa, KeyMaterial::RsaPublicPem(pem)) => {
                let bad = KeyError::BadPem {
                    key: KeyKind::RsaPublic,
                };
                let key = DecodingKey::from_rsa_pem(pem).map_err(|_| bad.clone())?;
                let der = match key.kind() {
                    jsonwebtoken::DecodingKeyKind::SecretOrDer(der) => der,
                    jsonwebtoken::DecodingKeyKind::RsaModulusExponent { .. } => return Err(bad),
                };
                // aws-lc parses any modulus size here and only refuses a short one at verify
                // time, which would turn a config mistake into "every token is invalid".
                match rsa_modulus_bits(der) {
                    Some(2048..=8192) => {}
                    Some(_) => return Err(KeyError::WeakRsaKey),
                    None => return Err(bad),
                }
                ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
                    .map(SigKey::Public)
                    .map_err(|_| bad)
            }
            (AlgorithmFamily::Ec, KeyMaterial::EcPublicPem(pem)) => {
                let bad = KeyError::BadPem {
                    key: KeyKind::EcPublic,
                };
                let key = DecodingKey::from_ec_pem(pem).map_err(|_| bad.clone())?;
                let point = match key.kind() {
                    jsonwebtoken::DecodingKeyKind::SecretOrDer(point) => point,
                    jsonwebtoken::DecodingKeyKind::RsaModulusExponent { .. } => return Err(bad),
                };
                ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .map(SigKey::Public)
                    .map_err(|_| bad)
            }
            _ => Err(mismatch),
        }
    }

    /// Checks `signature` over `message`; constant-time for HMAC.
    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            SigKey::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            SigKey::Public(key) => key.verify_sig(message, signature).is_ok(),
        }
    }
}

/// Reads one DER tag-length header, returning the content and what follows it.
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, after) = rest.split_at(n);
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Modulus size of a PKCS#1 `RSAPublicKey` (what jsonwebtoken extracts from the PEM).
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    let (seq, _) = der_take(der, 0x30)?;
    let (modulus, _) = der_take(seq, 0x02)?;
    let start = modulus.iter().position(|b| *b != 0)?;
    let significant = &modulus[start..];
    let top_bits = 8 - significant[0].leading_zeros() as usize;
    Some((significant.len() - 1) * 8 + top_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PUBLIC: &[u8] = include_bytes!("testdata/rsa_public.pem");
    const RSA_PRIVATE: &[u8] = include_bytes!("testdata/rsa_private.pem");
    const RSA_1024_PUBLIC: &[u8] = include_bytes!("testdata/rsa1024_public.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("testdata/ec_public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("testdata/ec_private.pem");
    const EC_384_PUBLIC: &[u8] = include_bytes!("testdata/ec384_public.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("testdata/ed25519_public.pem");

    fn err(algorithm: Algorithm, material: KeyMaterial) -> KeyError {
        match SigKey::new(algorithm, &material) {
            Ok(_) => panic!("{algorithm:?} with {material:?} should be refused"),
            Err(e) => e,
        }
    }

    #[test]
    fn names_map_to_supported_algorithms_only() {
        assert_eq!(algorithm_from_name("HS256"), Ok(Algorithm::HS256));
        assert_eq!(algorithm_from_name("ES256"), Ok(Algorithm::ES256));
        for name in [
            "none", "None", "NONE", "PS256", "EdDSA", "RS512", "hs256", "",
        ] {
            assert_eq!(
                algorithm_from_name(name),
                Err(KeyError::UnsupportedAlgorithm(name.to_owned()))
            );
        }
    }

    #[test]
    fn unsupported_library_algorithms_are_refused() {
        for alg in [
            Algorithm::PS256,
            Algorithm::EdDSA,
            Algorithm::RS384,
            Algorithm::ES384,
        ] {
            let e = err(alg, KeyMaterial::RsaPublicPem(RSA_PUBLIC.to_vec()));
            assert!(matches!(e, KeyError::UnsupportedAlgorithm(_)), "{e}");
        }
    }

    #[test]
    fn family_mismatches_are_refused() {
        let cases = [
            (
                Algorithm::HS256,
                KeyMaterial::RsaPublicPem(RSA_PUBLIC.to_vec()),
            ),
            (
                Algorithm::HS256,
                KeyMaterial::EcPublicPem(EC_PUBLIC.to_vec()),
            ),
            (Algorithm::RS256, KeyMaterial::Hmac(vec![7; 64])),
            (
                Algorithm::RS256,
                KeyMaterial::EcPublicPem(EC_PUBLIC.to_vec()),
            ),
            (
                Algorithm::ES256,
                KeyMaterial::RsaPublicPem(RSA_PUBLIC.to_vec()),
            ),
            (Algorithm::ES256, KeyMaterial::Hmac(vec![7; 64])),
        ];
        for (alg, material) in cases {
            let kind = material.kind();
            assert_eq!(
                err(alg, material),
                KeyError::KeyAlgorithmMismatch {
                    algorithm: alg,
                    key: kind
                }
            );
        }
    }

    #[test]
    fn hmac_secret_must_be_as_long_as_the_hash() {
        for (alg, min) in [
            (Algorithm::HS256, 32),
            (Algorithm::HS384, 48),
            (Algorithm::HS512, 64),
        ] {
            assert_eq!(
                err(alg, KeyMaterial::Hmac(vec![1; min - 1])),
                KeyError::WeakHmacSecret {
                    algorithm: alg,
                    len: min - 1,
                    min
                }
            );
            assert!(SigKey::new(alg, &KeyMaterial::Hmac(vec![1; min])).is_ok());
        }
    }

    #[test]
    fn pem_shaped_hmac_secret_is_refused() {
        assert_eq!(
            err(Algorithm::HS256, KeyMaterial::Hmac(RSA_PUBLIC.to_vec())),
            KeyError::HmacSecretIsPem
        );
        let mut padded = b"\n  ".to_vec();
        padded.extend_from_slice(RSA_PUBLIC);
        assert_eq!(
            err(Algorithm::HS256, KeyMaterial::Hmac(padded)),
            KeyError::HmacSecretIsPem
        );
    }

    #[test]
    fn unparsable_or_private_pem_is_refused() {
        let rsa = KeyError::BadPem {
            key: KeyKind::RsaPublic,
        };
        let ec = KeyError::BadPem {
            key: KeyKind::EcPublic,
        };
        assert_eq!(
            err(
                Algorithm::RS256,
                KeyMaterial::RsaPublicPem(b"junk".to_vec())
            ),
            rsa
        );
        assert_eq!(
            err(
                Algorithm::RS256,
                KeyMaterial::RsaPublicPem(RSA_PRIVATE.to_vec())
            ),
            rsa
        );
        assert_eq!(
            err(
                Algorithm::RS256,
                KeyMaterial::RsaPublicPem(EC_PUBLIC.to_vec())
            ),
            rsa
        );
        assert_eq!(
            err(Algorithm::ES256, KeyMaterial::EcPublicPem(b"".to_vec())),
            ec
        );
        assert_eq!(
            err(
                Algorithm::ES256,
                KeyMaterial::EcPublicPem(EC_PRIVATE.to_vec())
            ),
            ec
        );
        assert_eq!(
            err(
                Algorithm::ES256,
                KeyMaterial::EcPublicPem(EC_384_PUBLIC.to_vec())
            ),
            ec
        );
        assert_eq!(
            err(
                Algorithm::ES256,
                KeyMaterial::EcPublicPem(ED_PUBLIC.to_vec())
            ),
            ec
        );
        assert_eq!(
            err(
                Algorithm::ES256,
                KeyMaterial::EcPublicPem(RSA_PUBLIC.to_vec())
            ),
            ec
        );
    }

    #[test]
    fn small_rsa_key_is_refused() {
        assert_eq!(
            err(
                Algorithm::RS256,
                KeyMaterial::RsaPublicPem(RSA_1024_PUBLIC.to_vec())
            ),
            KeyError::WeakRsaKey
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let shown = format!("{:?}", KeyMaterial::Hmac(b"super-secret-value".to_vec()));
        assert!(!shown.contains("secret-value"), "{shown}");
        assert!(shown.contains("18 bytes"));
    }

    #[test]
    fn every_key_error_has_a_message() {
        let all = [
            KeyError::NoAlgorithms,
            KeyError::UnsupportedAlgorithm("none".into()),
            KeyError::KeyAlgorithmMismatch {
                algorithm: Algorithm::HS256,
                key: KeyKind::RsaPublic,
            },
            KeyError::WeakHmacSecret {
                algorithm: Algorithm::HS256,
                len: 3,
                min: 32,
            },
            KeyError::HmacSecretIsPem,
            KeyError::BadPem {
                key: KeyKind::EcPublic,
            },
            KeyError::WeakRsaKey,
            KeyError::LeewayTooLarge {
                leeway_s: 301,
                max: MAX_LEEWAY_S,
            },
            KeyError::EmptyUserIdClaim,
        ];
        for e in all {
            assert!(e.to_string().len() > 20, "{e:?}");
        }
    }
}
