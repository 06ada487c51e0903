//! Verifier tests. Tokens are signed with jsonwebtoken's own signer (`crypto::sign`,
//! `encode`), so every happy path also cross-checks our verification against the library.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Map, Value};

use super::*;

const SECRET: &[u8] = b"a-test-secret-that-is-long-enough-for-hs512-0123456789abcdefghij";
const RSA_PUBLIC: &[u8] = include_bytes!("testdata/rsa_public.pem");
const RSA_PRIVATE: &[u8] = include_bytes!("testdata/rsa_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("testdata/ec_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("testdata/ec_private.pem");
const NOW: u64 = 1_700_000_000;

fn rule(algorithms: &[Algorithm], key: KeyMaterial) -> TokenRule {
    TokenRule {
        name: "access".into(),
        algorithms: algorithms.to_vec(),
        key,
        user_id_claim: "user_id".into(),
        required_claims: vec![],
        exact_claims: vec![],
        issuer: None,
        audience: None,
        leeway_s: 0,
    }
}

fn hs256() -> Verifier {
    Verifier::new(rule(
        &[Algorithm::HS256],
        KeyMaterial::Hmac(SECRET.to_vec()),
    ))
    .unwrap()
}

fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
        _ => EncodingKey::from_secret(SECRET),
    }
}

/// Signs raw header and payload JSON text, so tests can send what no encoder would.
fn raw_token(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn hs256_token(payload: Value) -> String {
    raw_token(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &payload.to_string(),
        &encoding_key(Algorithm::HS256),
        Algorithm::HS256,
    )
}

fn good_claims() -> Value {
    json!({"user_id": 123, "exp": NOW + 300})
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

fn verify_err(verifier: &Verifier, token: &str) -> TokenError {
    verifier.verify(token, NOW).unwrap_err()
}

#[test]
fn every_algorithm_verifies_a_library_signed_token() {
    let cases = [
        (Algorithm::HS256, KeyMaterial::Hmac(SECRET.to_vec())),
        (Algorithm::HS384, KeyMaterial::Hmac(SECRET.to_vec())),
        (Algorithm::HS512, KeyMaterial::Hmac(SECRET.to_vec())),
        (
            Algorithm::RS256,
            KeyMaterial::RsaPublicPem(RSA_PUBLIC.to_vec()),
        ),
        (
            Algorithm::ES256,
            KeyMaterial::EcPublicPem(EC_PUBLIC.to_vec()),
        ),
    ];
    for (alg, material) in cases {
        let verifier = Verifier::new(rule(&[alg], material)).unwrap();
        let token =
            jsonwebtoken::encode(&Header::new(alg), &good_claims(), &encoding_key(alg)).unwrap();
        let identity = verifier
            .verify(&token, NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(identity.user_id.as_str(), "123");
        assert_eq!(identity.expires_at, NOW + 300);
        assert_eq!(&*identity.token_kind, "access");

        // Flipping any one signature character must break it.
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            verify_err(&verifier, &tampered),
            TokenError::BadSignature,
            "{alg:?}"
        );
    }
}

#[test]
fn a_rule_may_allow_several_hmac_algorithms() {
    let verifier = Verifier::new(rule(
        &[Algorithm::HS256, Algorithm::HS512, Algorithm::HS256],
        KeyMaterial::Hmac(SECRET.to_vec()),
    ))
    .unwrap();
    for alg in [Algorithm::HS256, Algorithm::HS512] {
        let token =
            jsonwebtoken::encode(&Header::new(alg), &good_claims(), &encoding_key(alg)).unwrap();
        assert!(verifier.verify(&token, NOW).is_ok());
    }
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &good_claims(),
        &encoding_key(Algorithm::HS384),
    )
    .unwrap();
    assert_eq!(
        verify_err(&verifier, &hs384),
        TokenError::AlgorithmNotAllowed
    );
}

#[test]
fn django_simplejwt_access_token() {
    let verifier = Verifier::new(TokenRule {
        required_claims: vec!["jti".into()],
        exact_claims: vec![("token_type".into(), json!("access"))],
        ..rule(&[Algorithm::HS256], KeyMaterial::Hmac(SECRET.to_vec()))
    })
    .unwrap();
    let claims = json!({
        "token_type": "access", "exp": NOW + 300, "iat": NOW,
        "jti": "e2f1c7b0a4d54b3e9f0a1b2c3d4e5f60", "user_id": 123
    });
    let identity = verifier.verify(&hs256_token(claims.clone()), NOW).unwrap();
    assert_eq!(identity.claims["jti"], claims["jti"]);

    let refresh = with(claims.clone(), "token_type", json!("refresh"));
    assert_eq!(
        verify_err(&verifier, &hs256_token(refresh)),
        TokenError::ClaimMismatch
    );
    let untyped = without(claims.clone(), "token_type");
    assert_eq!(
        verify_err(&verifier, &hs256_token(untyped)),
        TokenError::MissingClaim
    );
    let no_jti = without(claims.clone(), "jti");
    assert_eq!(
        verify_err(&verifier, &hs256_token(no_jti)),
        TokenError::MissingClaim
    );
    let null_jti = with(claims, "jti", Value::Null);
    assert_eq!(
        verify_err(&verifier, &hs256_token(null_jti)),
        TokenError::MissingClaim
    );
}

#[test]
fn numeric_and_string_user_ids_are_the_same_user() {
    let v = hs256();
    let a = v.verify(&hs256_token(good_claims()), NOW).unwrap();
    let b = v
        .verify(
            &hs256_token(with(good_claims(), "user_id", json!("123"))),
            NOW,
        )
        .unwrap();
    assert_eq!(a.user_id, b.user_id);

    let sub_rule = Verifier::new(TokenRule {
        user_id_claim: "sub".into(),
        ..rule(&[Algorithm::HS256], KeyMaterial::Hmac(SECRET.to_vec()))
    })
    .unwrap();
    let c = sub_rule.verify(&hs256_token(with(good_claims(), "sub", json!("123"))), NOW);
    assert_eq!(c.unwrap().user_id, a.user_id);
}

#[test]
fn bad_or_missing_user_ids_are_refused() {
    let v = hs256();
    for bad in [
        json!(1.5),
        json!(true),
        json!(""),
        json!({"id": 1}),
        json!([123]),
    ] {
        let token = hs256_token(with(good_claims(), "user_id", bad));
        assert_eq!(verify_err(&v, &token), TokenError::BadUserId);
    }
    let token = hs256_token(without(good_claims(), "user_id"));
    assert_eq!(verify_err(&v, &token), TokenError::MissingClaim);
    let token = hs256_token(with(good_claims(), "user_id", Value::Null));
    assert_eq!(verify_err(&v, &token), TokenError::MissingClaim);
}

#[test]
fn alg_none_is_always_refused() {
    let v = hs256();
    let payload = URL_SAFE_NO_PAD.encode(good_claims().to_string());
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        for signature in ["", "AAAA"] {
            let token = format!("{header}.{payload}.{signature}");
            assert_eq!(
                verify_err(&v, &token),
                TokenError::AlgorithmNotAllowed,
                "{alg}"
            );
        }
    }
}

#[test]
fn algorithms_outside_the_rule_are_refused() {
    let v = hs256();
    for alg in ["HS384", "RS256", "ES256", "PS256", "EdDSA", "hs256"] {
        let header = format!(r#"{{"alg":"{alg}"}}"#);
        let token = raw_token(
            &header,
            &good_claims().to_string(),
            &encoding_key(Algorithm::HS256),
            Algorithm::HS256,
        );
        assert_eq!(
            verify_err(&v, &token),
            TokenError::AlgorithmNotAllowed,
            "{alg}"
        );
    }
}

#[test]
fn rs_hs_key_confusion_is_refused() {
    let rs256 = Verifier::new(rule(
        &[Algorithm::RS256],
        KeyMaterial::RsaPublicPem(RSA_PUBLIC.to_vec()),
    ))
    .unwrap();
    // The classic attack: HMAC-sign with the public key's PEM bytes as the secret.
    let forged = raw_token(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &good_claims().to_string(),
        &EncodingKey::from_secret(RSA_PUBLIC),
        Algorithm::HS256,
    );
    assert_eq!(verify_err(&rs256, &forged), TokenError::AlgorithmNotAllowed);

    // Nor can the rule be configured to open that door.
    let mixed = rule(
        &[Algorithm::RS256, Algorithm::HS256],
        KeyMaterial::RsaPublicPem(RSA_PUBLIC.to_vec()),
    );
    assert_eq!(
        Verifier::new(mixed).unwrap_err(),
        KeyError::KeyAlgorithmMismatch {
            algorithm: Algorithm::HS256,
            key: KeyKind::RsaPublic
        }
    );
    let pem_secret = rule(&[Algorithm::HS256], KeyMaterial::Hmac(RSA_PUBLIC.to_vec()));
    assert_eq!(
        Verifier::new(pem_secret).unwrap_err(),
        KeyError::HmacSecretIsPem
    );
}

#[test]
fn hostile_kid_never_selects_a_key_nor_panics() {
    let v = hs256();
    let huge = "k".repeat(700);
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let kids = [
        json!("../../../../etc/passwd"),
        json!("/dev/zero"),
        json!("' OR 1=1 --"),
        json!(huge),
        json!(12345),
        json!(-1.5e308),
        json!(null),
        json!(true),
        json!({"$ref": "http://evil/jwks"}),
        json!(["a", {"b": []}]),
    ];
    for kid in kids {
        let header = json!({"alg": "HS256", "kid": kid}).to_string();
        let good = raw_token(
            &header,
            &good_claims().to_string(),
            &encoding_key(Algorithm::HS256),
            Algorithm::HS256,
        );
        assert!(
            v.verify(&good, NOW).is_ok(),
            "kid {kid} changed the outcome"
        );
        let forged = raw_token(
            &header,
            &good_claims().to_string(),
            &EncodingKey::from_secret(b"attacker-controlled-secret-0123456789"),
            Algorithm::HS256,
        );
        assert_eq!(
            verify_err(&v, &forged),
            TokenError::BadSignature,
            "kid {kid}"
        );
    }
    // Nesting past serde_json's recursion limit is refused, not a stack overflow.
    let header = format!(r#"{{"alg":"HS256","kid":{deep}}}"#);
    let token = raw_token(
        &header,
        &good_claims().to_string(),
        &encoding_key(Algorithm::HS256),
        Algorithm::HS256,
    );
    assert_eq!(verify_err(&v, &token), TokenError::Malformed);
}

#[test]
fn oversize_tokens_are_refused_before_parsing() {
    let v = hs256();
    let filler = "x".repeat(MAX_TOKEN_BYTES);
    let token = hs256_token(with(good_claims(), "filler", json!(filler)));
    assert!(token.len() > MAX_TOKEN_BYTES);
    assert_eq!(verify_err(&v, &token), TokenError::Malformed);
    assert_eq!(
        verify_err(&v, &".".repeat(MAX_TOKEN_BYTES + 1)),
        TokenError::Malformed
    );

    // Just under the cap still verifies: the cap is on size, not on content.
    let base = hs256_token(with(good_claims(), "filler", json!(""))).len();
    let room = (MAX_TOKEN_BYTES - base) * 3 / 4 - 2;
    let token = hs256_token(with(good_claims(), "filler", json!("y".repeat(room))));
    assert!(token.len() <= MAX_TOKEN_BYTES, "{}", token.len());
    assert!(v.verify(&token, NOW).is_ok());
}

#[test]
fn malformed_shapes_are_refused() {
    let v = hs256();
    let good = hs256_token(good_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let key = encoding_key(Algorithm::HS256);
    let sign = |header: &str, payload: &str| raw_token(header, payload, &key, Algorithm::HS256);
    let cases = [
        String::new(),
        "abc".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!(".{}.{}", parts[1], parts[2]),
        format!("{}..{}", parts[0], parts[2]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}!", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", "!!!", parts[1], parts[2]),
        format!("{}.{}.{}", "e30", parts[1], parts[2]),
        format!("{}.{}", "W10", &good[parts[0].len() + 1..]),
        sign("not json", &good_claims().to_string()),
        sign(r#"{"alg":7}"#, &good_claims().to_string()),
        sign(
            r#"{"alg":"HS256","alg":"HS256"}"#,
            &good_claims().to_string(),
        ),
        sign(
            r#"{"alg":"HS\u0032\u0035\u0036"}"#,
            &good_claims().to_string(),
        ),
        sign(
            r#"{"alg":"HS256","crit":["exp"]}"#,
            &good_claims().to_string(),
        ),
        sign(r#"{"alg":"HS256"}"#, "[1,2,3]"),
        sign(r#"{"alg":"HS256"}"#, "not json"),
        sign(r#"{"alg":"HS256"}"#, ""),
    ];
    for token in &cases {
        assert_eq!(verify_err(&v, token), TokenError::Malformed, "{token:?}");
    }
    // A valid signature over a payload that is not base64url.
    let message = format!("{}.{}", parts[0], "not*base64");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256);
    let token = format!("{message}.{}", signature.unwrap());
    assert_eq!(verify_err(&v, &token), TokenError::Malformed);
}

#[test]
fn bad_signatures_are_refused() {
    let v = hs256();
    let good = hs256_token(good_claims());
    let (message, signature) = good.rsplit_once('.').unwrap();
    let other_payload =
        URL_SAFE_NO_PAD.encode(with(good_claims(), "user_id", json!(1)).to_string());
    let header = message.split('.').next().unwrap();
    let cases = [
        format!("{message}."),
        format!("{message}.{}", &signature[..40]),
        format!("{header}.{other_payload}.{signature}"),
        hs256_token(good_claims()).replace(signature, &URL_SAFE_NO_PAD.encode([0u8; 32])),
        raw_token(
            r#"{"alg":"HS256"}"#,
            &good_claims().to_string(),
            &EncodingKey::from_secret(b"another-secret-another-secret-another-secret"),
            Algorithm::HS256,
        ),
    ];
    for token in &cases {
        assert_eq!(verify_err(&v, token), TokenError::BadSignature, "{token}");
    }
}

#[test]
fn exp_is_required_and_exclusive() {
    let v = hs256();
    let at = |exp: Value| hs256_token(with(good_claims(), "exp", exp));
    assert_eq!(
        verify_err(&v, &hs256_token(without(good_claims(), "exp"))),
        TokenError::MissingClaim
    );
    assert_eq!(verify_err(&v, &at(json!(NOW))), TokenError::Expired);
    assert_eq!(verify_err(&v, &at(json!(NOW - 1))), TokenError::Expired);
    assert_eq!(verify_err(&v, &at(json!(0))), TokenError::Expired);
    assert_eq!(verify_err(&v, &at(json!(-5))), TokenError::Expired);
    assert_eq!(
        verify_err(&v, &at(json!(NOW as f64 + 0.9))),
        TokenError::Expired
    );
    assert!(v.verify(&at(json!(NOW + 1)), NOW).is_ok());
    assert!(v.verify(&at(json!(NOW as f64 + 1.5)), NOW).is_ok());
    assert!(v.verify(&at(json!(u64::MAX)), NOW).is_ok());
    assert!(v.verify(&at(json!(1e300)), NOW).is_ok());
    // now = u64::MAX must not overflow anything.
    assert_eq!(
        v.verify(&at(json!(u64::MAX)), u64::MAX).unwrap_err(),
        TokenError::Expired
    );
}

#[test]
fn non_numeric_time_claims_are_malformed_whatever_the_clock() {
    let v = hs256();
    let far = (NOW + 10_000).to_string();
    for bad in [
        json!(far),
        json!("not a date"),
        json!(null),
        json!(true),
        json!([NOW + 10]),
    ] {
        let token = hs256_token(with(good_claims(), "exp", bad.clone()));
        assert_eq!(verify_err(&v, &token), TokenError::Malformed, "exp {bad}");
        let token = hs256_token(with(good_claims(), "nbf", bad.clone()));
        assert_eq!(verify_err(&v, &token), TokenError::Malformed, "nbf {bad}");
    }
    // Even an already-expired token reports the type error first.
    let both = with(with(good_claims(), "exp", json!(1)), "nbf", json!("0"));
    assert_eq!(verify_err(&v, &hs256_token(both)), TokenError::Malformed);
}

#[test]
fn nbf_is_inclusive() {
    let v = hs256();
    let at = |nbf: Value| hs256_token(with(good_claims(), "nbf", nbf));
    assert!(v.verify(&at(json!(NOW)), NOW).is_ok());
    assert!(v.verify(&at(json!(NOW - 100)), NOW).is_ok());
    assert!(v.verify(&at(json!(-100)), NOW).is_ok());
    assert_eq!(verify_err(&v, &at(json!(NOW + 1))), TokenError::NotYetValid);
    assert_eq!(
        verify_err(&v, &at(json!(NOW as f64 + 0.1))),
        TokenError::NotYetValid
    );
    assert_eq!(
        verify_err(&v, &at(json!(u64::MAX))),
        TokenError::NotYetValid
    );
}

#[test]
fn leeway_widens_both_edges_exactly() {
    let v = Verifier::new(TokenRule {
        leeway_s: 30,
        ..rule(&[Algorithm::HS256], KeyMaterial::Hmac(SECRET.to_vec()))
    })
    .unwrap();
    let exp = |e: u64| hs256_token(with(good_claims(), "exp", json!(e)));
    let nbf = |n: u64| hs256_token(with(good_claims(), "nbf", json!(n)));
    assert!(v.verify(&exp(NOW - 29), NOW).is_ok());
    assert_eq!(verify_err(&v, &exp(NOW - 30)), TokenError::Expired);
    assert!(v.verify(&nbf(NOW + 30), NOW).is_ok());
    assert_eq!(verify_err(&v, &nbf(NOW + 31)), TokenError::NotYetValid);
    // Leeway near the top of the range saturates instead of wrapping.
    assert!(v.verify(&exp(u64::MAX), u64::MAX - 1).is_ok());
    let late = with(
        with(good_claims(), "exp", json!(u64::MAX)),
        "nbf",
        json!(u64::MAX),
    );
    assert!(v.verify(&hs256_token(late), u64::MAX - 1).is_ok());
}

#[test]
fn issuer_is_checked_when_the_rule_sets_one() {
    let v = Verifier::new(TokenRule {
        issuer: Some("https://auth.example".into()),
        ..rule(&[Algorithm::HS256], KeyMaterial::Hmac(SECRET.to_vec()))
    })
    .unwrap();
    let iss = |i: Value| hs256_token(with(good_claims(), "iss", i));
    assert!(v.verify(&iss(json!("https://auth.example")), NOW).is_ok());
    assert_eq!(
        verify_err(&v, &iss(json!("https://evil.example"))),
        TokenError::WrongIssuer
    );
    assert_eq!(
        verify_err(&v, &iss(json!(["https://auth.example"]))),
        TokenError::WrongIssuer
    );
    assert_eq!(verify_err(&v, &iss(json!(null))), TokenError::MissingClaim);
    assert_eq!(
        verify_err(&v, &hs256_token(good_claims())),
        TokenError::MissingClaim
    );
    // Without an issuer in the rule, iss is not looked at.
    assert!(hs256().verify(&iss(json!("anyone")), NOW).is_ok());
}

#[test]
fn audience_is_checked_when_the_rule_sets_one() {
    let v = Verifier::new(TokenRule {
        audience: Some("beacon".into()),
        ..rule(&[Algorithm::HS256], KeyMaterial::Hmac(SECRET.to_vec()))
    })
    .unwrap();
    let aud = |a: Value| hs256_token(with(good_claims(), "aud", a));
    assert!(v.verify(&aud(json!("beacon")), NOW).is_ok());
    assert!(v.verify(&aud(json!(["api", "beacon"])), NOW).is_ok());
    assert_eq!(
        verify_err(&v, &aud(json!("api"))),
        TokenError::WrongAudience
    );
    assert_eq!(
        verify_err(&v, &aud(json!(["api", 7]))),
        TokenError::WrongAudience
    );
    assert_eq!(verify_err(&v, &aud(json!([]))), TokenError::WrongAudience);
    assert_eq!(verify_err(&v, &aud(json!(7))), TokenError::WrongAudience);
    assert_eq!(
        verify_err(&v, &hs256_token(good_claims())),
        TokenError::MissingClaim
    );
    // A token addressed to someone while the rule names no audience is not for us.
    assert_eq!(
        verify_err(&hs256(), &aud(json!("beacon"))),
        TokenError::WrongAudience
    );
}

#[test]
fn only_expiry_asks_for_a_fresh_token() {
    let all = [
        TokenError::Malformed,
        TokenError::AlgorithmNotAllowed,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::MissingClaim,
        TokenError::ClaimMismatch,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
        TokenError::BadUserId,
    ];
    let mut codes = std::collections::HashSet::new();
    for e in all {
        let expected = if e == TokenError::Expired {
            TokenRejection::Expired
        } else {
            TokenRejection::Invalid
        };
        assert_eq!(e.class(), expected);
        assert!(codes.insert(e.as_str()), "duplicate code {}", e.as_str());
        assert_eq!(e.to_string(), e.as_str());
    }
}

#[test]
fn unusable_rules_are_refused() {
    let hmac = || KeyMaterial::Hmac(SECRET.to_vec());
    assert_eq!(
        Verifier::new(rule(&[], hmac())).unwrap_err(),
        KeyError::NoAlgorithms
    );
    let lax = TokenRule {
        leeway_s: MAX_LEEWAY_S + 1,
        ..rule(&[Algorithm::HS256], hmac())
    };
    assert_eq!(
        Verifier::new(lax).unwrap_err(),
        KeyError::LeewayTooLarge {
            leeway_s: MAX_LEEWAY_S + 1,
            max: MAX_LEEWAY_S
        }
    );
    let edge = TokenRule {
        leeway_s: MAX_LEEWAY_S,
        ..rule(&[Algorithm::HS256], hmac())
    };
    assert!(Verifier::new(edge).is_ok());
    let anonymous = TokenRule {
        user_id_claim: String::new(),
        ..rule(&[Algorithm::HS256], hmac())
    };
    assert_eq!(
        Verifier::new(anonymous).unwrap_err(),
        KeyError::EmptyUserIdClaim
    );
    let weak = rule(&[Algorithm::HS256], KeyMaterial::Hmac(b"secret".to_vec()));
    assert!(matches!(
        Verifier::new(weak),
        Err(KeyError::WeakHmacSecret { .. })
    ));
    let ps = rule(
        &[Algorithm::PS256],
        KeyMaterial::RsaPublicPem(RSA_PUBLIC.to_vec()),
    );
    assert!(matches!(
        Verifier::new(ps),
        Err(KeyError::UnsupportedAlgorithm(_))
    ));
}

#[test]
fn single_byte_mutations_never_pass_or_panic() {
    let v = Verifier::new(rule(
        &[Algorithm::ES256],
        KeyMaterial::EcPublicPem(EC_PUBLIC.to_vec()),
    ))
    .unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &good_claims(),
        &encoding_key(Algorithm::ES256),
    )
    .unwrap();
    assert!(v.verify(&token, NOW).is_ok());
    for i in 0..token.len() {
        for replacement in [b'A', b'.', b'_', b'-', b'0'] {
            let mut bytes = token.clone().into_bytes();
            if bytes[i] == replacement {
                continue;
            }
            bytes[i] = replacement;
            let mutated = String::from_utf8(bytes).unwrap();
            // The last character may carry only padding bits, which strict base64 refuses.
            assert!(
                v.verify(&mutated, NOW).is_err(),
                "mutation at {i} passed: {mutated}"
            );
        }
    }
}

#[test]
fn shared_types_cross_shards() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Verifier>();
    send_sync::<Issuer>();
    send_sync::<Identity>();
    send_sync::<KeyMaterial>();
    send_sync::<TokenError>();
}

#[test]
fn claims_are_returned_whole() {
    let claims = json!({"user_id": 9, "exp": NOW + 5, "role": "provider", "cats": [1, 2]});
    let identity = hs256().verify(&hs256_token(claims.clone()), NOW).unwrap();
    let returned: Map<String, Value> = identity.claims;
    assert_eq!(Value::Object(returned), claims);
}
