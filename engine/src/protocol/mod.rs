//! The protocol file: raw TOML types, validation into a frozen model, and diagnostics.
//! The frozen [`Protocol`] crosses shards (Send): it is built once and shared read-only.

pub mod diag;
pub mod model;
pub mod raw;
pub mod validate;

pub use diag::{render, Diagnostic};
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
}
