//! The caller's user id as read from a token claim. Crosses shards (Send).

use std::fmt;

use serde_json::Value;

/// Longest string user id accepted, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;

/// A user id in canonical string form. Crosses shards (Send).
///
/// Backends disagree on whether ids are JSON numbers (Django's `user_id: 123`) or strings
/// (`sub: "123"`); both name the same user, so equality and hashing use the decimal text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Box<str>);

impl UserId {
    /// Reads a user id from a claim value: an integer, or a non-empty string of at most
    /// [`MAX_USER_ID_BYTES`] bytes without control characters. Floats, booleans, null,
    /// arrays and objects are refused, since none of them names a user unambiguously.
    pub fn from_claim(value: &Value) -> Option<UserId> {
        match value {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Some(UserId(u.to_string().into_boxed_str()))
                } else {
                    n.as_i64().map(|i| UserId(i.to_string().into_boxed_str()))
                }
            }
            Value::String(s) => UserId::from_text(s),
            _ => None,
        }
    }

    /// Reads a user id from text, e.g. a path parameter to compare with a token's user.
    pub fn from_text(s: &str) -> Option<UserId> {
        // Control characters would break log lines and room names built from the id.
        let acceptable =
            !s.is_empty() && s.len() <= MAX_USER_ID_BYTES && !s.chars().any(|c| c.is_control());
        acceptable.then(|| UserId(s.into()))
    }

    /// The canonical text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn number_and_string_name_the_same_user() {
        let a = UserId::from_claim(&json!(123)).unwrap();
        let b = UserId::from_claim(&json!("123")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "123");
        let set: std::collections::HashSet<UserId> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn integers_of_every_range_are_accepted() {
        assert_eq!(UserId::from_claim(&json!(0)).unwrap().as_str(), "0");
        assert_eq!(UserId::from_claim(&json!(-7)).unwrap().as_str(), "-7");
        assert_eq!(
            UserId::from_claim(&json!(u64::MAX)).unwrap().as_str(),
            u64::MAX.to_string()
        );
    }

    #[test]
    fn strings_are_kept_verbatim() {
        let uuid = "7f1c0a52-51c4-4bd6-9a38-2d2f2b8e2c11";
        assert_eq!(UserId::from_claim(&json!(uuid)).unwrap().as_str(), uuid);
        // Not numerically normalised: "0123" is a different user from 123.
        assert_ne!(
            UserId::from_claim(&json!("0123")),
            UserId::from_claim(&json!(123))
        );
    }

    #[test]
    fn non_ids_are_refused() {
        let long = "x".repeat(MAX_USER_ID_BYTES + 1);
        for v in [
            json!(1.5),
            json!(123.0),
            json!(true),
            json!(null),
            json!([1]),
            json!({"id": 1}),
            json!(""),
            json!(long),
            json!("a\nb"),
            json!("a\u{0}b"),
        ] {
            assert_eq!(UserId::from_claim(&v), None, "{v}");
        }
        assert!(UserId::from_claim(&json!("x".repeat(MAX_USER_ID_BYTES))).is_some());
    }
}
