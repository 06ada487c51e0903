//! The protocol file: raw TOML types, validation into a frozen model, and diagnostics.
//! The frozen [`Protocol`] crosses shards (Send): it is built once and shared read-only.

pub mod code;
pub mod diag;
pub mod model;
pub mod raw;
pub mod validate;

pub use code::Code;
pub use diag::{legend, render, render_problems, Diagnostic};
pub use model::*;
pub use validate::load_protocol;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_protocol_validates() {
        let src = include_str!("../../../protocol.toml");
        let p =
            load_protocol(src).unwrap_or_else(|d| panic!("{}", render("protocol.toml", src, &d)));
        assert_eq!(p.endpoints.len(), 2);
        let (ep, params) = p.route("/ws/bookings/abc-123/").unwrap();
        assert_eq!(p.endpoints[ep].name, "booking");
        assert_eq!(params.unwrap(), vec!["abc-123".to_string()]);
        assert!(p.route("/ws/bookings/abc-123").is_none());
        assert!(p.route("/ws/bookings/").is_none());
        let (ep, params) = p.route("/ws/notifications/").unwrap();
        assert_eq!(p.endpoints[ep].name, "notifications");
        assert!(params.unwrap().is_empty());
        assert_eq!(p.close_for(Rejection::TokenMissing).code, 4001);
        assert_eq!(p.close_for(Rejection::Shutdown).code, 1001);
    }

    #[test]
    fn visible_protocol_validates() {
        let src = include_str!("../../../config/protocols/visible.toml");
        let p =
            load_protocol(src).unwrap_or_else(|d| panic!("{}", render("visible.toml", src, &d)));
        assert_eq!(p.endpoints.len(), 4);
        assert_eq!(p.geo.pools.len(), 1);
        assert_eq!(p.geo.dispatch_at("/api/work/dispatch"), Some(0));
        let status = &p.messages[p.endpoints[0].inbound_by_wire["provider_status_update"]];
        assert!(status.geo_provider.is_some());
        let moved = &p.messages[p.endpoints[0].inbound_by_wire["location_update"]];
        assert_eq!(
            moved.geo_provider.as_ref().map(|a| a.update),
            Some(GeoUpdate::Move)
        );
    }
}

#[cfg(test)]
mod app_construct_tests {
    use super::*;

    const BASE: &str = r#"
version = 1
name = "t"
about = "t"
[tokens.a]
about = "a"
key = "jwt"
algorithms = ["HS256"]
user_id_claim = "user_id"
[close.c]
about = "c"
code = 4000
reason = "c"
reconnect = "never"
[close_on]
token_missing = "c"
token_invalid = "c"
token_expired = "c"
forbidden = "c"
slow_consumer = "c"
rate_limited = "c"
too_many_errors = "c"
idle = "c"
auth_timeout = "c"
shutdown = "c"
internal = "c"
[messages.n]
about = "n"
direction = "server"
fields.kind = { type = "string" }
"#;

    fn codes(extra: &str) -> Vec<&'static str> {
        match load_protocol(&format!("{BASE}{extra}")) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(|d| d.code.as_str()).collect(),
        }
    }

    const EP: &str = r#"
[[endpoints]]
name = "e"
about = "e"
path = "/ws/{a}/{b}/"
tokens = ["a"]
token_sources = ["query:token"]
room = "r:{path.a}"
"#;

    #[test]
    fn seed_protocols_validate() {
        for name in [
            "hunarmitra",
            "umemployed",
            "therapy",
            "smartparking",
            "visible",
        ] {
            let path = format!(
                "{}/../config/protocols/{name}.toml",
                env!("CARGO_MANIFEST_DIR")
            );
            let src = std::fs::read_to_string(&path).unwrap();
            load_protocol(&src).unwrap_or_else(|d| panic!("{}", render(&path, &src, &d)));
        }
    }

    #[test]
    fn hooks_filters_and_http_endpoints_are_checked() {
        assert!(codes(EP).is_empty());
        // Unknown hook; hook in a per-message condition.
        let unknown =
            format!("{EP}[[endpoints.authorize]]\nall_of = [{{ hook = \"h\" }}]\ndeny = \"c\"\n");
        assert_eq!(codes(&unknown), ["B070"]);
        let per_msg = "[hooks.h]\nabout = \"h\"\npath = \"/x/\"\nunavailable = \"c\"\n[messages.m]\nabout = \"m\"\ndirection = \"client\"\nonly_if = [{ hook = \"h\" }]\n";
        assert_eq!(codes(&format!("{EP}{per_msg}")), ["B070"]);
        let bad_hook = "[hooks.h]\nabout = \"h\"\npath = \"x\"\nunavailable = \"nope\"\n";
        assert_eq!(codes(&format!("{EP}{bad_hook}")), ["B070", "B043"]);
        // A filter needs an array of strings and server messages.
        let filter = "[messages.s]\nabout = \"s\"\ndirection = \"client\"\nfields.t = { type = \"string\" }\nfilter = { field = \"kind\", values_from = \"t\", applies_to = [\"s\"] }\n";
        assert_eq!(codes(&format!("{EP}{filter}")), ["B072", "B072", "B072"]);
        // HTTP: GET with a body, a reserved path, minting on a public endpoint.
        let http = "[messages.b]\nabout = \"b\"\ndirection = \"client\"\n[[http]]\nname = \"h\"\nabout = \"h\"\nmethod = \"GET\"\npath = \"/metrics\"\nbody = \"b\"\nmint = { token = \"a\", ttl_s = 60 }\n";
        assert_eq!(codes(&format!("{EP}{http}")), ["B071", "B071", "B071"]);
        // `{minted}` only where a token is minted.
        let respond = "[[http]]\nname = \"h\"\nabout = \"h\"\nmethod = \"GET\"\npath = \"/t/\"\ntokens = [\"a\"]\nrespond = { t = \"{minted}\" }\n";
        assert_eq!(codes(&format!("{EP}{respond}")), ["B021"]);
        // missing_params needs parameters and a close.
        let mp = EP.replace("room = ", "missing_params = \"zz\"\nroom = ");
        assert_eq!(codes(&mp), ["B043"]);
    }

    #[test]
    fn forwards_are_checked() {
        let fwd = |body: &str| {
            format!("[messages.m]\nabout = \"m\"\ndirection = \"client\"\nforward_to = \"f\"\n[forwards.f]\nabout = \"f\"\n{body}")
        };
        assert!(codes(&format!(
            "{EP}{}",
            fwd("path = \"/x/\"\nbroadcast = { send = \"n\" }\nreply = \"n\"\nunavailable_close = \"c\"\n")
        ))
        .is_empty());
        // A relative path, retries out of range, a client message as the broadcast.
        let bad = fwd(
            "path = \"x/\"\nretries = 9\nbroadcast = { send = \"m\" }\nunavailable_close = \"c\"\n",
        );
        assert_eq!(codes(&format!("{EP}{bad}")), ["B073", "B050", "B011"]);
        // Two ways to fail; an unknown close; an error reply the protocol does not declare.
        let both = fwd("path = \"/x/\"\nunavailable_error = \"e\"\nunavailable_close = \"c\"\n");
        assert_eq!(codes(&format!("{EP}{both}")), ["B073"]);
        let close = fwd("path = \"/x/\"\nunavailable_close = \"zz\"\n");
        assert_eq!(codes(&format!("{EP}{close}")), ["B043"]);
        let error = fwd("path = \"/x/\"\n");
        assert_eq!(codes(&format!("{EP}{error}")), ["B073"]);
        assert!(codes(&format!("{EP}{error}[errors]\nreply = \"n\"\n")).is_empty());
        // Unknown forward; a forwarded server message.
        let unknown =
            "[messages.m]\nabout = \"m\"\ndirection = \"client\"\nforward_to = \"nope\"\n";
        assert_eq!(codes(&format!("{EP}{unknown}")), ["B073"]);
        let server = fwd("path = \"/x/\"\nunavailable_close = \"c\"\n")
            .replace("direction = \"client\"", "direction = \"server\"");
        assert_eq!(codes(&format!("{EP}{server}")), ["B031"]);
    }

    #[test]
    fn missing_parameters_at_the_http_level() {
        let p = load_protocol(&format!("{BASE}{EP}")).unwrap();
        let path = &p.endpoints[0].path;
        for missing in ["/ws/1//", "/ws//2/", "/ws/1/", "/ws/", "/ws", "/ws/1"] {
            assert!(path.misses_params(missing), "{missing}");
        }
        for other in ["/ws/1/2/", "/other/1/", "/ws/1/2/3/", "/"] {
            assert!(!path.misses_params(other), "{other}");
        }
    }
}
