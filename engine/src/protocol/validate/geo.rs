//! Validation of `[geo]` (pools and dispatch endpoints) and of the geo actions a message may
//! carry (`geo_provider`, `geo_search`, `geo_respond`). Plain code: no I/O.

use std::collections::HashMap;
use std::ops::Range;

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::templates::InboundVars;
use super::{toml_to_json, GeoScope, Names, Validator};

/// Paths the built-in HTTP API answers; a dispatch endpoint may not shadow them.
const BUILT_IN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/api/publish"];

fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::String => "string",
        FieldType::Int => "int",
        FieldType::Number => "number",
        FieldType::Bool => "bool",
        FieldType::Object => "object",
        FieldType::Array => "array",
        FieldType::Id => "id",
        FieldType::Any => "any",
    }
}

const NUMBER: &[FieldType] = &[FieldType::Number, FieldType::Int];
const BOOL: &[FieldType] = &[FieldType::Bool];
const TEXT: &[FieldType] = &[FieldType::String, FieldType::Id, FieldType::Int];
const INT: &[FieldType] = &[FieldType::Int];

impl Validator {
    /// Pool and dispatch names before any message body refers to them.
    pub(super) fn geo_names(&mut self, g: &RawGeo, names: &mut Names) {
        for (i, name) in g.pools.keys().enumerate() {
            self.ident("geo pool", name);
            names.pools.insert(name.get_ref().clone(), i);
        }
        names.pool_keys = g.pools.values().map(|p| p.key.clone()).collect();
        for (i, d) in g.dispatch.iter().enumerate() {
            self.ident("dispatch", &d.name);
            names.dispatches.insert(d.name.get_ref().clone(), i);
        }
    }

    /// A dispatch path is served before `[[http]]` endpoints; sharing one would hide theirs.
    pub(super) fn dispatch_paths(&mut self, g: &RawGeo, http: &[RawHttp]) {
        for d in &g.dispatch {
            if let Some(h) = http.iter().find(|h| h.path.get_ref() == d.path.get_ref()) {
                self.err(
                    Diagnostic::new(
                        Code::BadGeoAction,
                        format!(
                            "`{}` is both a dispatch and an HTTP endpoint",
                            d.path.get_ref()
                        ),
                    )
                    .label(d.path.span(), "dispatch here")
                    .label(h.path.span(), "HTTP endpoint here")
                    .help("give the dispatch endpoint its own path"),
                );
            }
        }
    }

    /// A variable that exists only beside a connection, used where none is.
    pub(super) fn geo_scope_refuses(&self, name: &str, span: &Range<usize>) -> Option<Diagnostic> {
        let connection_only = ["user.", "claims.", "path."]
            .iter()
            .any(|p| name.starts_with(p));
        let refused = match self.geo_scope {
            GeoScope::Off => false,
            GeoScope::Only => connection_only || name.starts_with("in."),
            GeoScope::WithBody => connection_only,
        };
        refused.then(|| {
            Diagnostic::new(
                Code::BadTemplate,
                format!("`{{{name}}}` is not available in a geo template"),
            )
            .label(span.clone(), "no connection here")
            .help(match self.geo_scope {
                GeoScope::WithBody => {
                    "dispatch templates are rendered for the HTTP request: use {in.<body field>}, {geo.*}, {now.iso}, {now.ms} or {gen.id}"
                }
                _ => {
                    "geo messages are rendered on the pool's shard, away from any connection: use {geo.*}, {now.iso}, {now.ms} or {gen.id}"
                }
            })
        })
    }

    fn field_ref(
        &mut self,
        what: &str,
        f: &S<String>,
        schema: &Schema,
        allowed: &[FieldType],
    ) -> Option<String> {
        let found = schema.fields.iter().find(|s| &s.name == f.get_ref());
        match found {
            Some(s) if allowed.contains(&s.ty) => Some(s.name.clone()),
            _ => {
                let want = allowed
                    .iter()
                    .map(|t| type_name(*t))
                    .collect::<Vec<_>>()
                    .join(" or ");
                self.err(
                    Diagnostic::new(
                        Code::BadGeoField,
                        format!(
                            "`{what}` names `{}`, which is not a declared {want} field",
                            f.get_ref()
                        ),
                    )
                    .label(f.span(), "not a usable field of this message")
                    .help(format!(
                        "declare it, e.g. `fields.{} = {{ type = \"{}\" }}`",
                        f.get_ref(),
                        type_name(allowed[0])
                    )),
                );
                None
            }
        }
    }

    fn pool_ref(&mut self, p: &S<String>, names: &Names) -> Option<usize> {
        let found = names.pools.get(p.get_ref()).copied();
        if found.is_none() {
            let mut known: Vec<&str> = names.pools.keys().map(String::as_str).collect();
            known.sort_unstable();
            self.err(
                Diagnostic::new(
                    Code::UnknownGeoName,
                    format!("unknown geo pool `{}`", p.get_ref()),
                )
                .label(p.span(), "not declared")
                .help(if known.is_empty() {
                    "declare it under `[geo.pools.<name>]`".to_owned()
                } else {
                    format!("declared pools: {}", known.join(", "))
                }),
            );
        }
        found
    }

    /// The pool key template, parsed against this message's (or body's) fields.
    fn pool_key(
        &mut self,
        pool: usize,
        names: &Names,
        at: Range<usize>,
        schema: &Schema,
    ) -> Option<Template> {
        let key = names.pool_keys.get(pool)?;
        let before = self.diags.len();
        let t = self.template(key, &[], &InboundVars::Schema(schema));
        if self.diags.len() > before {
            // Point at the use too: the key is fine for other messages.
            if let Some(d) = self.diags.last_mut() {
                d.labels.push((at, "used for this message".into()));
            }
        }
        t
    }

    fn geo_template(
        &mut self,
        scope: GeoScope,
        t: &Option<S<toml::Table>>,
        schema: Option<&Schema>,
    ) -> Vec<(String, ValueTemplate)> {
        let prev = std::mem::replace(&mut self.geo_scope, scope);
        let inbound = match schema {
            Some(s) => InboundVars::Schema(s),
            None => InboundVars::None,
        };
        let out = t
            .as_ref()
            .map(|w| self.object_template(w, &[], &inbound))
            .unwrap_or_default();
        self.geo_scope = prev;
        out
    }

    fn geo_send(
        &mut self,
        scope: GeoScope,
        s: &RawGeoSend,
        names: &Names,
        schema: Option<&Schema>,
    ) -> Option<GeoSend> {
        let with = self.geo_template(scope, &s.with, schema);
        let send = self.message_ref(&s.send, names, Direction::Server)?;
        Some(GeoSend { send, with })
    }

    fn not_inbound(&mut self, name: &S<String>, kind: &str, span: Range<usize>) {
        self.err(
            Diagnostic::new(
                Code::BadGeoAction,
                format!("server message `{}` cannot have a `{kind}` action", name.get_ref()),
            )
            .label(span, "action on a server message")
            .help("actions run when a client sends the message; set direction to \"client\" or \"both\""),
        );
    }

    pub(super) fn geo_actions(
        &mut self,
        name: &S<String>,
        m: &RawMessage,
        schema: &Schema,
        names: &Names,
        direction: Direction,
    ) -> (
        Option<GeoProviderAction>,
        Option<GeoSearchAction>,
        Option<GeoRespondAction>,
    ) {
        let provider = m.geo_provider.as_ref().and_then(|a| {
            if !direction.inbound() {
                self.not_inbound(name, "geo_provider", a.span());
            }
            let r = a.get_ref();
            let pool = self.pool_ref(&r.pool, names);
            let update = match r.update.as_ref().map(|u| u.get_ref().as_str()) {
                None | Some("status") => GeoUpdate::Status,
                Some("move") => GeoUpdate::Move,
                Some(other) => {
                    self.err(
                        Diagnostic::new(Code::BadGeoAction, format!("unknown geo_provider update `{other}`"))
                            .label(r.update.as_ref().map(|u| u.span()).unwrap_or(a.span()), "unknown")
                            .help("use \"status\" (active flag, key, sub and position) or \"move\" (position only)"),
                    );
                    GeoUpdate::Status
                }
            };
            if update == GeoUpdate::Move && (r.active.is_some() || r.sub.is_some()) {
                self.err(
                    Diagnostic::new(Code::BadGeoAction, "a `move` update only carries a position")
                        .label(a.span(), "active or sub on a move")
                        .help("remove `active` and `sub`; the last status update set them"),
                );
            }
            let active = r
                .active
                .as_ref()
                .map(|f| self.field_ref("active", f, schema, BOOL));
            let latitude = self.field_ref("latitude", &r.latitude, schema, NUMBER);
            let longitude = self.field_ref("longitude", &r.longitude, schema, NUMBER);
            let sub = r.sub.as_ref().map(|f| self.field_ref("sub", f, schema, TEXT));
            let pool = pool?;
            let key = match update {
                GeoUpdate::Status => self.pool_key(pool, names, a.span(), schema)?,
                GeoUpdate::Move => Template {
                    source: String::new(),
                    pieces: Vec::new(),
                },
            };
            Some(GeoProviderAction {
                pool,
                key,
                update,
                active: active.map(|a| a.ok_or(())).transpose().ok()?,
                latitude: latitude?,
                longitude: longitude?,
                sub: sub.map(|s| s.ok_or(())).transpose().ok()?,
            })
        });
        let search = m.geo_search.as_ref().and_then(|a| {
            if !direction.inbound() {
                self.not_inbound(name, "geo_search", a.span());
            }
            let r = a.get_ref();
            let pool = self.pool_ref(&r.pool, names);
            let searching = r
                .searching
                .as_ref()
                .map(|f| self.field_ref("searching", f, schema, BOOL));
            let latitude = self.field_ref("latitude", &r.latitude, schema, NUMBER);
            let longitude = self.field_ref("longitude", &r.longitude, schema, NUMBER);
            let radius_km = self.field_ref("radius_km", &r.radius_km, schema, NUMBER);
            let sub = r
                .sub
                .as_ref()
                .map(|f| self.field_ref("sub", f, schema, TEXT));
            let pool = pool?;
            let key = self.pool_key(pool, names, a.span(), schema)?;
            Some(GeoSearchAction {
                pool,
                key,
                searching: searching.map(|a| a.ok_or(())).transpose().ok()?,
                latitude: latitude?,
                longitude: longitude?,
                radius_km: radius_km?,
                sub: sub.map(|s| s.ok_or(())).transpose().ok()?,
            })
        });
        let respond = m.geo_respond.as_ref().and_then(|a| {
            if !direction.inbound() {
                self.not_inbound(name, "geo_respond", a.span());
            }
            let r = a.get_ref();
            let dispatch = names.dispatches.get(r.dispatch.get_ref()).copied();
            if dispatch.is_none() {
                self.err(
                    Diagnostic::new(
                        Code::UnknownGeoName,
                        format!("unknown dispatch `{}`", r.dispatch.get_ref()),
                    )
                    .label(r.dispatch.span(), "not declared")
                    .help("declare it as a `[[geo.dispatch]]` with this `name`"),
                );
            }
            let job = self.template(&r.job, &[], &InboundVars::Schema(schema));
            let accept_field = self.field_ref("accept_field", &r.accept_field, schema, TEXT);
            let accept_value = toml_to_json(r.accept_value.get_ref());
            if accept_value.is_none() {
                self.err(
                    Diagnostic::new(
                        Code::BadGeoAction,
                        "`accept_value` must be a string, number or boolean",
                    )
                    .label(r.accept_value.span(), "not a scalar")
                    .help("e.g. accept_value = \"accepted\""),
                );
            }
            for (key, present) in [
                ("room", r.relay.room.as_ref().map(|x| x.span())),
                (
                    "exclude_sender",
                    r.relay.exclude_sender.as_ref().map(|x| x.span()),
                ),
            ] {
                if let Some(span) = present {
                    self.err(
                        Diagnostic::new(
                            Code::BadGeoAction,
                            format!("`{key}` has no meaning on a relay"),
                        )
                        .label(span, "here")
                        .help("a relay goes to the job's seeker room, declared on the dispatch"),
                    );
                }
            }
            let with = r
                .relay
                .with
                .as_ref()
                .map(|w| self.object_template(w, &[], &InboundVars::Schema(schema)))
                .unwrap_or_default();
            let send = self.message_ref(&r.relay.send, names, Direction::Server);
            Some(GeoRespondAction {
                dispatch: dispatch?,
                job: job?,
                accept_field: accept_field?,
                accept_value: accept_value?,
                relay: Action {
                    send: send?,
                    with,
                    forward: r.relay.forward.as_ref().is_some_and(|f| *f.get_ref()),
                    recipients: Recipients::Everyone,
                    room: None,
                    frame: None,
                },
            })
        });
        (provider, search, respond)
    }

    fn ranged(&mut self, v: &Option<S<i64>>, what: &str, min: i64, max: i64, default: i64) -> i64 {
        self.limit(v, what, min, max, default)
    }

    pub(super) fn geo_spec(
        &mut self,
        raw: &RawGeo,
        names: &Names,
        messages: &[MessageSpec],
    ) -> GeoSpec {
        let mut pools = Vec::new();
        for (name, p) in &raw.pools {
            let about = self.about(&format!("geo pool `{}`", name.get_ref()), &p.about);
            let item = self.geo_template(GeoScope::Only, &Some(p.nearby.item.clone()), None);
            let with = self.geo_template(GeoScope::Only, &p.nearby.with, None);
            if p.nearby.list.get_ref() == "type" || p.nearby.list.get_ref().is_empty() {
                self.err(
                    Diagnostic::new(
                        Code::BadGeoAction,
                        "`list` must name a field other than `type`",
                    )
                    .label(p.nearby.list.span(), "reserved")
                    .help("e.g. list = \"providers\""),
                );
            }
            let nearby = self
                .message_ref(&p.nearby.send, names, Direction::Server)
                .map(|send| GeoList {
                    send,
                    list: p.nearby.list.get_ref().clone(),
                    item,
                    with,
                });
            let one = |v: &mut Self, s: &Option<RawGeoSend>| {
                s.as_ref()
                    .and_then(|s| v.geo_send(GeoScope::Only, s, names, None))
            };
            let entered = one(self, &p.entered);
            let left = one(self, &p.left);
            let moved = one(self, &p.moved);
            let interval = self.ranged(
                &p.moved_min_interval_ms,
                "moved_min_interval_ms",
                0,
                3_600_000,
                1000,
            );
            if let Some(nearby) = nearby {
                pools.push(GeoPoolSpec {
                    name: name.get_ref().clone(),
                    about,
                    key_source: p.key.get_ref().clone(),
                    nearby,
                    entered,
                    left,
                    moved,
                    moved_min_interval_ms: interval as u64,
                });
            }
        }

        let mut dispatches = Vec::new();
        let mut paths: HashMap<String, Range<usize>> = HashMap::new();
        let mut seen: HashMap<String, Range<usize>> = HashMap::new();
        for d in &raw.dispatch {
            let about = self.about(&format!("dispatch `{}`", d.name.get_ref()), &d.about);
            if let Some(prev) = seen.insert(d.name.get_ref().clone(), d.name.span()) {
                self.err(
                    Diagnostic::new(
                        Code::DuplicateName,
                        format!("duplicate dispatch name `{}`", d.name.get_ref()),
                    )
                    .label(d.name.span(), "second definition")
                    .label(prev, "first definition")
                    .help("jobs are keyed by dispatch name; make them unique"),
                );
            }
            let path = d.path.get_ref();
            let path_ok = path.starts_with('/')
                && !path.contains(['?', '#', '{', ' '])
                && !BUILT_IN_PATHS.contains(&path.as_str())
                && !path.starts_with("/ws/");
            if !path_ok {
                self.err(
                    Diagnostic::new(Code::BadGeoAction, format!("`{path}` cannot be a dispatch path"))
                        .label(d.path.span(), "invalid or reserved path")
                        .help("use a fixed path such as \"/api/work/dispatch\"; /healthz, /readyz, /metrics, /api/publish and /ws/... are taken"),
                );
            } else if let Some(prev) = paths.insert(path.clone(), d.path.span()) {
                self.err(
                    Diagnostic::new(
                        Code::DuplicateName,
                        format!("two dispatch endpoints at `{path}`"),
                    )
                    .label(d.path.span(), "second use")
                    .label(prev, "first use")
                    .help("give each dispatch its own path"),
                );
            }
            let pool = self.pool_ref(&d.pool, names);
            // A body is only a schema: any declared message will do.
            let Some(body) = self.message_ref(&d.body, names, Direction::Both) else {
                continue;
            };
            let schema = &messages[body].schema;
            let latitude = self.field_ref("latitude", &d.latitude, schema, NUMBER);
            let longitude = self.field_ref("longitude", &d.longitude, schema, NUMBER);
            let radius_km = self.field_ref("radius_km", &d.radius_km, schema, NUMBER);
            let sub = d
                .sub
                .as_ref()
                .map(|f| self.field_ref("sub", f, schema, TEXT));
            let max = d
                .max
                .as_ref()
                .map(|f| self.field_ref("max", f, schema, INT));
            let max_limit = self.ranged(&d.max_limit, "max_limit", 1, 1000, 50);
            let ttl = self.ranged(&d.job_ttl_s, "job_ttl_s", 1, 7 * 86_400, 3600);
            let key = pool.and_then(|p| self.pool_key(p, names, d.pool.span(), schema));
            let job = self.template(&d.job, &[], &InboundVars::Schema(schema));
            let to = {
                let prev = std::mem::replace(&mut self.geo_scope, GeoScope::WithBody);
                let t = self.template(&d.to, &[], &InboundVars::Schema(schema));
                self.geo_scope = prev;
                t
            };
            let seeker_room = self.template(&d.seeker_room, &[], &InboundVars::Schema(schema));
            let send = self.geo_send(GeoScope::WithBody, &d.send, names, Some(schema));
            let taken = self.geo_send(GeoScope::WithBody, &d.taken, names, Some(schema));
            let (Some(pool), Some(key), Some(job), Some(to), Some(seeker_room)) =
                (pool, key, job, to, seeker_room)
            else {
                continue;
            };
            let (Some(latitude), Some(longitude), Some(radius_km), Some(send), Some(taken)) =
                (latitude, longitude, radius_km, send, taken)
            else {
                continue;
            };
            let (Ok(sub), Ok(max)) = (
                sub.map(|s| s.ok_or(())).transpose(),
                max.map(|s| s.ok_or(())).transpose(),
            ) else {
                continue;
            };
            dispatches.push(DispatchSpec {
                name: d.name.get_ref().clone(),
                about,
                path: path.clone(),
                pool,
                body,
                key,
                latitude,
                longitude,
                radius_km,
                sub,
                max,
                max_limit: max_limit as usize,
                job,
                send,
                to,
                seeker_room,
                taken,
                job_ttl_ms: ttl as u64 * 1000,
            });
        }
        GeoSpec { pools, dispatches }
    }
}
