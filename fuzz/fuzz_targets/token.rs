//! Arbitrary strings as tokens for an HS256 and an RS256 rule. If the input has a newline,
//! the text before it is signed as the header and the rest as the payload with the HS256
//! secret, so the claim checks behind the signature are fuzzed too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let [hs, rs] = beacon_fuzz::verifiers();
    let _ = hs.verify(text, beacon_fuzz::NOW_S);
    let _ = rs.verify(text, beacon_fuzz::NOW_S);
    if let Some((header, payload)) = text.split_once('\n') {
        let token = beacon_fuzz::sign_hs256(header, payload);
        if let Ok(id) = hs.verify(&token, beacon_fuzz::NOW_S) {
            assert!(
                id.expires_at >= beacon_fuzz::NOW_S,
                "expired token accepted"
            );
            assert!(!id.user_id.as_str().is_empty());
        }
    }
});
