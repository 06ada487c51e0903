//! A request head as the front door sees it: parse with the server's limits, then route,
//! read the token and validate the upgrade, and build whichever response follows.
#![no_main]

use beacon::ws::handshake::{accept_response, check_upgrade, UpgradeCheck};
use beacon::ws::http::{parse_head, HeadLimits, HeadParse};
use beacon::ws::http_error::HttpError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::SERVER;
    let head = match parse_head(data, &limits) {
        Ok(HeadParse::Complete(head)) => head,
        Ok(HeadParse::Partial) => return assert!(data.len() < limits.max_head_bytes),
        Err(e) => return assert!((400..600).contains(&HttpError::from(e).status())),
    };
    assert!(head.head_len <= data.len().min(limits.max_head_bytes));
    assert!(head.headers.len() <= limits.max_headers);
    let _ = head.content_length();
    let _ = head.query_param("token");
    let _ = beacon_fuzz::default_protocol().route(&head.path);
    match check_upgrade(&head) {
        Ok(UpgradeCheck::Upgrade(up)) => {
            let _ = accept_response(&up.key, up.protocols.first().map(String::as_str));
        }
        Ok(UpgradeCheck::NotUpgrade) => {}
        Err(e) => {
            let _ = HttpError::from(e).response();
        }
    }
});
