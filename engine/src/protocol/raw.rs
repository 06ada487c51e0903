//! The protocol file as written: serde types that mirror the TOML, carry spans, and reject
//! unknown keys. Plain values, built once at startup.
//!
//! Nothing here is interpreted; `validate/` turns these into the frozen model.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProtocol {
    pub version: S<i64>,
    pub name: S<String>,
    pub about: S<String>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub tokens: BTreeMap<S<String>, RawToken>,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    pub messages: BTreeMap<S<String>, RawMessage>,
    #[serde(default)]
    pub close: BTreeMap<S<String>, RawClose>,
    #[serde(default)]
    pub close_on: BTreeMap<S<String>, S<String>>,
    #[serde(default)]
    pub errors: Option<RawErrors>,
    #[serde(default)]
    pub geo: Option<RawGeo>,
    #[serde(default)]
    pub hooks: BTreeMap<S<String>, RawHook>,
    #[serde(default)]
    pub http: Vec<RawHttp>,
    #[serde(default)]
    pub history: BTreeMap<S<String>, RawHistory>,
    #[serde(default)]
    pub resume: Option<S<RawResume>>,
    #[serde(default)]
    pub forwards: BTreeMap<S<String>, RawForward>,
    #[serde(default)]
    pub channel_layer: Option<RawChannelLayer>,
}

/// `[history."<room kind>"]`: which rooms keep their recent messages, and which messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHistory {
    pub about: S<String>,
    pub size: S<i64>,
    pub ttl_s: S<i64>,
    pub messages: S<Vec<S<String>>>,
    pub latest_by: Option<S<String>>,
    pub max_catch_up: Option<S<i64>>,
}

/// `[resume]`: how positions travel on the wire and what a resuming client is told.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResume {
    pub about: S<String>,
    pub offset_field: S<String>,
    pub epoch_field: S<String>,
    pub offset_param: Option<S<String>>,
    pub epoch_param: Option<S<String>>,
    pub recovered: S<String>,
    pub not_recovered: S<String>,
    pub reason_field: S<String>,
}

/// `[channel_layer]`: the Django channel-layer groups Beacon joins and what their events become.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannelLayer {
    pub about: S<String>,
    #[serde(default)]
    pub groups: Vec<RawGroupMap>,
    #[serde(default)]
    pub events: BTreeMap<S<String>, RawEventMap>,
}

/// `[[channel_layer.groups]]`: Django group names and Beacon rooms with the same parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroupMap {
    pub group: S<String>,
    pub room: S<String>,
}

/// `[channel_layer.events."<event type>"]`: the server message a consumer sent for the event.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEventMap {
    pub send: S<String>,
    pub from: Option<S<String>>,
}

/// `[forwards.<name>]`: client messages handed to the app's backend before (or instead of)
/// their broadcast.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub about: S<String>,
    pub path: S<String>,
    pub timeout_ms: Option<S<i64>>,
    pub retries: Option<S<i64>>,
    pub broadcast: Option<RawForwardBroadcast>,
    pub reply: Option<S<String>>,
    pub unavailable_error: Option<S<String>>,
    pub unavailable_close: Option<S<String>>,
}

/// What a forward's `broadcast` answer is sent as, and to whom.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardBroadcast {
    pub send: S<String>,
    pub room: Option<S<String>>,
    pub exclude_sender: Option<S<bool>>,
}

/// `[hooks.<name>]`: an authorization question put to the app's backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    pub about: S<String>,
    pub path: S<String>,
    pub timeout_ms: Option<S<i64>>,
    pub cache_ttl_ms: Option<S<i64>>,
    pub unavailable: S<String>,
}

/// `[[http]]`: an HTTP endpoint the protocol declares on the engine's port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub name: S<String>,
    pub about: S<String>,
    pub method: S<String>,
    pub path: S<String>,
    #[serde(default)]
    pub params: BTreeMap<S<String>, RawParam>,
    #[serde(default)]
    pub tokens: Vec<S<String>>,
    #[serde(default)]
    pub authorize: Vec<RawRule>,
    pub body: Option<S<String>>,
    pub rate: Option<RawRate>,
    pub mint: Option<RawMint>,
    pub broadcast: Option<RawAction>,
    pub respond: Option<S<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMint {
    pub token: S<String>,
    pub ttl_s: S<i64>,
    #[serde(default)]
    pub with: Option<S<toml::Table>>,
}

/// A per-connection filter set by a client message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub field: S<String>,
    pub values_from: S<String>,
    pub applies_to: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_frame_bytes: Option<S<i64>>,
    pub max_message_bytes: Option<S<i64>>,
    pub handshake_timeout_ms: Option<S<i64>>,
    pub auth_timeout_ms: Option<S<i64>>,
    pub idle_timeout_ms: Option<S<i64>>,
    pub ping_interval_ms: Option<S<i64>>,
    pub queue_max_messages: Option<S<i64>>,
    pub queue_max_bytes: Option<S<i64>>,
    pub max_errors: Option<S<i64>>,
    pub max_connections_per_user: Option<S<i64>>,
    #[serde(default)]
    pub rate: BTreeMap<S<String>, RawRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub per_second: S<f64>,
    pub burst: S<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub about: S<String>,
    pub key: S<String>,
    pub algorithms: S<Vec<S<String>>>,
    #[serde(default)]
    pub user_id_claim: Option<S<String>>,
    #[serde(default)]
    pub required_claims: Vec<S<String>>,
    #[serde(default)]
    pub claims: BTreeMap<S<String>, S<toml::Value>>,
    pub issuer: Option<S<String>>,
    pub audience: Option<S<String>>,
    pub leeway_s: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub name: S<String>,
    pub about: S<String>,
    pub path: S<String>,
    #[serde(default)]
    pub params: BTreeMap<S<String>, RawParam>,
    #[serde(default)]
    pub tokens: Vec<S<String>>,
    #[serde(default)]
    pub token_sources: Vec<S<String>>,
    pub room: S<String>,
    #[serde(default)]
    pub inbound: Vec<S<String>>,
    #[serde(default)]
    pub outbound: Vec<S<String>>,
    #[serde(default)]
    pub on_connect: Vec<RawSend>,
    #[serde(default)]
    pub authorize: Vec<RawRule>,
    #[serde(default)]
    pub origins: Option<Vec<S<String>>>,
    #[serde(default)]
    pub type_field: Option<S<String>>,
    #[serde(default)]
    pub untyped_inbound: Option<S<String>>,
    #[serde(default)]
    pub echo: Option<S<bool>>,
    #[serde(default)]
    pub refresh: Option<S<String>>,
    #[serde(default)]
    pub missing_params: Option<S<String>>,
    #[serde(default)]
    pub on_join: Vec<RawSend>,
    #[serde(default)]
    pub on_leave: Vec<RawSend>,
    pub online: Option<RawOnline>,
}

/// `online`: what a joining socket is told about each user already in its home room.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnline {
    pub send: S<String>,
    pub user_field: S<String>,
    #[serde(default)]
    pub with: Option<S<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParam {
    #[serde(rename = "type")]
    pub ty: S<String>,
    pub max_length: Option<S<i64>>,
    pub about: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSend {
    pub send: S<String>,
    #[serde(default)]
    pub with: Option<S<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub about: Option<S<String>>,
    #[serde(default)]
    pub any_of: Vec<RawCond>,
    #[serde(default)]
    pub all_of: Vec<RawCond>,
    pub deny: S<String>,
}

/// One condition. Exactly one of the key groups must be present; validation says which.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCond {
    pub claim: Option<S<String>>,
    pub equals: Option<S<toml::Value>>,
    #[serde(rename = "in")]
    pub in_: Option<S<Vec<toml::Value>>>,
    pub equals_param: Option<S<String>>,
    pub authenticated: Option<S<bool>>,
    pub hook: Option<S<String>>,
    #[serde(default)]
    pub all_of: Option<S<Vec<RawCond>>>,
    #[serde(default)]
    pub any_of: Option<S<Vec<RawCond>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMessage {
    pub about: S<String>,
    pub direction: S<String>,
    pub wire_type: Option<S<String>>,
    #[serde(default)]
    pub fields: BTreeMap<S<String>, RawField>,
    pub reply: Option<RawAction>,
    pub broadcast: Option<RawAction>,
    #[serde(default)]
    pub ignore_if_empty: Vec<S<String>>,
    #[serde(default)]
    pub only_if: Vec<RawCond>,
    #[serde(default)]
    pub filter: Option<RawFilter>,
    pub geo_provider: Option<S<RawGeoProvider>>,
    pub geo_search: Option<S<RawGeoSearch>>,
    pub geo_respond: Option<S<RawGeoRespond>>,
    pub forward_to: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    pub send: S<String>,
    #[serde(default)]
    pub with: Option<S<toml::Table>>,
    #[serde(default)]
    pub forward: Option<S<bool>>,
    #[serde(default)]
    pub exclude_sender: Option<S<bool>>,
    #[serde(default)]
    pub room: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    #[serde(rename = "type")]
    pub ty: S<String>,
    pub about: Option<S<String>>,
    pub required: Option<S<bool>>,
    #[serde(rename = "enum")]
    pub enum_: Option<S<Vec<S<String>>>>,
    pub min: Option<S<f64>>,
    pub max: Option<S<f64>>,
    pub max_length: Option<S<i64>>,
    pub items: Option<S<String>>,
    #[serde(default)]
    pub fields: Option<BTreeMap<S<String>, RawField>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClose {
    pub about: S<String>,
    pub code: S<toml::Value>,
    pub reason: S<String>,
    pub reconnect: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawErrors {
    pub reply: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeo {
    #[serde(default)]
    pub pools: BTreeMap<S<String>, RawGeoPool>,
    #[serde(default)]
    pub dispatch: Vec<RawDispatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoPool {
    pub about: S<String>,
    pub key: S<String>,
    pub nearby: RawGeoList,
    pub entered: Option<RawGeoSend>,
    pub left: Option<RawGeoSend>,
    pub moved: Option<RawGeoSend>,
    pub moved_min_interval_ms: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoSend {
    pub send: S<String>,
    #[serde(default)]
    pub with: Option<S<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoList {
    pub send: S<String>,
    pub list: S<String>,
    pub item: S<toml::Table>,
    #[serde(default)]
    pub with: Option<S<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoProvider {
    pub pool: S<String>,
    pub update: Option<S<String>>,
    pub active: Option<S<String>>,
    pub latitude: S<String>,
    pub longitude: S<String>,
    pub sub: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoSearch {
    pub pool: S<String>,
    pub searching: Option<S<String>>,
    pub latitude: S<String>,
    pub longitude: S<String>,
    pub radius_km: S<String>,
    pub sub: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoRespond {
    pub dispatch: S<String>,
    pub job: S<String>,
    pub accept_field: S<String>,
    pub accept_value: S<toml::Value>,
    pub relay: RawAction,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDispatch {
    pub name: S<String>,
    pub about: S<String>,
    pub path: S<String>,
    pub pool: S<String>,
    pub body: S<String>,
    pub latitude: S<String>,
    pub longitude: S<String>,
    pub radius_km: S<String>,
    pub sub: Option<S<String>>,
    pub max: Option<S<String>>,
    pub max_limit: Option<S<i64>>,
    pub job: S<String>,
    pub send: RawGeoSend,
    pub to: S<String>,
    pub seeker_room: S<String>,
    pub taken: RawGeoSend,
    pub job_ttl_s: Option<S<i64>>,
}
