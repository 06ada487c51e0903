//! The stable diagnostic codes of protocol and config files, each with a title and a general
//! explanation. Plain values.
//!
//! A code's string never changes once released: scripts grep for it and README documents it.
//! What a single occurrence means (which name, which bound) is the diagnostic's own message
//! and help; the text here explains the whole class, and `beacon check` prints it once.

/// Declares [`Code`] and its table in one list, so a code cannot exist without its string,
/// title, help and place in [`Code::ALL`].
macro_rules! codes {
    ($($variant:ident = $code:literal, $title:literal, $help:literal;)*) => {
        /// One kind of problem in a protocol or config file.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $(#[doc = $title] $variant,)*
        }

        impl Code {
            /// Every code, in the order of their strings.
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// The stable string, e.g. `B010`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }

            /// A few words naming the class of problem.
            pub const fn title(self) -> &'static str {
                match self {
                    $(Code::$variant => $title,)*
                }
            }

            /// What the rule is and why it exists, for every occurrence.
            pub const fn help(self) -> &'static str {
                match self {
                    $(Code::$variant => $help,)*
                }
            }
        }
    };
}

codes! {
    Syntax = "B001", "TOML syntax or shape",
        "The protocol file is TOML with a closed schema: every key is known, every required key \
         is present, every value has the expected type, and there is at least one endpoint.";
    Version = "B002", "unsupported version",
        "This Beacon reads protocol files with `version = 1`.";
    EmptyAbout = "B003", "empty `about`",
        "Every declared item says in one sentence what it is for; that text is the \
         documentation users and the AsyncAPI document read.";
    DuplicateName = "B004", "duplicate name",
        "Endpoint names, dispatch names and paths, and server wire types each identify one \
         thing: metrics, jobs and the publish API look them up.";
    BadIdentifier = "B005", "bad identifier",
        "Names are lowercase letters, digits and `_`, start with a letter and have at most 64 \
         characters, so they read the same in URLs, metrics and generated code.";
    UnknownMessage = "B010", "unknown message",
        "Every message an endpoint, action, filter or rate names is declared under \
         `[messages.<name>]`, and an endpoint accepts only the messages in its `inbound` list.";
    WrongDirection = "B011", "wrong direction",
        "A message's `direction` says who sends it: clients send \"client\" messages, the \
         server sends \"server\" messages, and \"both\" goes either way.";
    UnknownTokenKind = "B012", "unknown token kind",
        "Endpoints, HTTP endpoints and mints name token kinds declared under `[tokens.<kind>]`.";
    BadAlgorithm = "B013", "bad algorithm",
        "A token kind lists the algorithms its tokens are signed with: HS256, HS384, HS512, RS256 \
         or ES256, from one key family; `none` is never accepted.";
    BadTokenSource = "B014", "bad token source",
        "An endpoint that authenticates names both its token kinds and where a token is found \
         (query, header, subprotocol or first message); the engine handles those messages, so \
         they cannot also be inbound messages.";
    KeyNotInConfig = "B015", "key not in config",
        "A token kind's `key` names a `[keys.<name>]` entry of the deployment config, which says \
         where the key material comes from.";
    UnusableKey = "B016", "unusable key",
        "Reported when serving, once key material is loaded: HMAC secrets need at least 32 \
         bytes, and RSA or EC keys must match the token kind's algorithms.";
    BadPath = "B020", "bad path pattern",
        "Paths start with `/` and are made of literal segments and whole-segment \
         `{parameters}`; no two endpoints have the same shape, or the second is never reached.";
    BadTemplate = "B021", "bad template",
        "Templates are text with `{variables}`; each variable must exist where the template is \
         rendered (path parameters and the caller's identity beside a connection, declared \
         fields for `{in.*}`, geo values on a pool's shard).";
    BadParameter = "B022", "bad parameter or origin",
        "A declared path parameter appears in the path, with type \"string\" or \"int\" and a \
         length of 1-1024; an origin is scheme://host[:port] with no path.";
    BadField = "B030", "bad field",
        "A field has a known type, and its constraints (`enum`, `min`/`max`, `max_length`, \
         `items`, nested `fields`) fit that type.";
    BadAction = "B031", "bad action",
        "Actions and `only_if` run when a client sends a message, so they belong on client \
         messages, and every key they carry must mean something where it is declared.";
    BadCloseCode = "B040", "bad close code",
        "A close code is an application code (4000-4999) or an RFC 6455 code name; clients \
         decide whether to reconnect from the code, so one number has one reconnect class.";
    ReasonTooLong = "B041", "close reason too long",
        "RFC 6455 limits a close frame's reason to 123 bytes of UTF-8.";
    BadReconnect = "B042", "bad reconnect class",
        "Every close tells clients whether to reconnect: never, backoff, immediate or \
         after-reauth.";
    UnknownClose = "B043", "unknown close name",
        "Rules, hooks, `close_on` and `missing_params` name a close declared under \
         `[close.<name>]`.";
    BadCloseOn = "B044", "bad `close_on`",
        "`[close_on]` names a close for every rejection the engine makes, and has no other keys.";
    LimitOutOfRange = "B050", "limit out of range",
        "Limits, rates, timeouts, leeways and TTLs have ranges that keep connections and the \
         engine safe, and the limits must be consistent with each other.";
    BadRule = "B060", "bad rule",
        "An authorization rule is one non-empty `any_of` or `all_of` list of conditions, each \
         with exactly one test, on an endpoint that knows who the caller is.";
    BadHook = "B070", "bad hook",
        "Hooks are declared under `[hooks.<name>]` with an absolute path, and are asked only at \
         the handshake and on HTTP endpoints, never per message.";
    BadHttpEndpoint = "B071", "bad HTTP endpoint",
        "An `[[http]]` endpoint has GET or POST, a method and path of its own that the engine \
         does not reserve, and authentication wherever it mints tokens or rate-limits callers.";
    BadFilter = "B072", "bad filter",
        "A filter takes its values from a declared array-of-strings field and applies to \
         messages the server sends.";
    BadForward = "B073", "bad forward",
        "A `[forwards.<name>]` entry hands client messages to the backend: it has an absolute \
         path, timeouts and retries in range, server messages for what the backend answers, \
         and one way to fail (an error reply the protocol declares, or a declared close); \
         messages name it with `forward_to`.";
    UnknownGeoName = "B080", "unknown geo pool or dispatch",
        "Geo actions name pools declared under `[geo.pools.<name>]` and dispatches declared in \
         `[[geo.dispatch]]`.";
    BadGeoField = "B081", "bad geo field reference",
        "Geo actions and dispatches read positions, radii, flags and keys from declared fields \
         of the right type.";
    BadGeoAction = "B082", "bad geo action or dispatch",
        "Geo actions belong on client messages and dispatch endpoints on a fixed path of their \
         own; every key must mean something where it is declared.";
    BadHistory = "B090", "bad history",
        "A `[history.\"<room kind>\"]` names a room or a prefix ending in `*`, overlaps no other \
         kind, keeps server messages that can carry a position (and, for latest values, the \
         key field), within its size and TTL bounds.";
    BadResume = "B091", "bad resume",
        "History needs `[resume]`: the position's field and query parameter names, and the \
         server messages that tell a client it recovered or must reload, with the fields \
         Beacon fills in.";
    BadChannelLayer = "B100", "bad channel-layer mapping",
        "`[channel_layer]` maps Django group names to rooms with patterns that share their \
         parameters, and each event type to a declared server message.";
    ConfigSyntax = "C001", "config TOML syntax or shape",
        "The deployment config is TOML with a closed schema: every key is known and every value \
         has the expected type.";
    ConfigValue = "C002", "bad config value",
        "A deployment setting is out of range or not in the form its key expects.";
    MissingSecret = "C003", "secret or key file",
        "Reported when serving, once key material is loaded: a secret's environment variable \
         is unset or empty, or a public key file cannot be read.";
    PerNodeOnNats = "C004", "per node on NATS",
        "A warning, not an error: core NATS carries messages and keeps no state, so nothing \
         can count or claim atomically across nodes through it. On a NATS cluster \
         `max_connections_per_user` holds per node (a user may hold the cap on every node), \
         presence is per node (a user with sockets on two nodes is announced by each), and geo \
         pools and dispatch jobs are per node (a seeker finds providers on its own node only). \
         Use `broker = \"redis\"` where these must hold across nodes.";
}

impl Code {
    /// Reported without failing `check` or `serve`.
    pub const fn is_warning(self) -> bool {
        matches!(self, Code::PerNodeOnNats)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn codes_are_sorted_unique_and_described() {
        for pair in Code::ALL.windows(2) {
            assert!(pair[0].as_str() < pair[1].as_str(), "{pair:?}");
            assert!(
                pair[0] < pair[1],
                "declaration order is code order: {pair:?}"
            );
        }
        for c in Code::ALL {
            let s = c.as_str();
            assert!(
                s.len() == 4 && (s.starts_with('B') || s.starts_with('C')),
                "{s}"
            );
            assert!(s[1..].bytes().all(|b| b.is_ascii_digit()), "{s}");
            assert!(!c.title().is_empty() && !c.title().ends_with('.'), "{s}");
            assert!(c.help().ends_with('.'), "{s}: help is a sentence");
        }
    }

    #[test]
    fn readme_documents_every_code() {
        let readme = include_str!("../../../README.md");
        for c in Code::ALL {
            let row = format!("| {} | {} |", c.as_str(), c.title());
            assert!(readme.contains(&row), "README has no row `{row}`");
        }
        let is_code = |w: &&str| {
            w.len() == 4
                && (w.starts_with('B') || w.starts_with('C'))
                && w[1..].bytes().all(|b| b.is_ascii_digit())
        };
        for word in readme
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(is_code)
        {
            assert!(
                Code::ALL.iter().any(|c| c.as_str() == word),
                "README mentions {word}, which is no code"
            );
        }
    }
}
