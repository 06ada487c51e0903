//! Message checking and building against the frozen protocol: schema validation of JSON values
//! and rendering of `with` templates into outbound messages. Plain code, no I/O; the clock and
//! id generator come in through [`RenderCtx`].

use serde_json::{Map, Value};

use crate::protocol::{
    FieldSpec, FieldType, GeoVar, MessageSpec, ParamSpec, Piece, Schema, Template, ValueTemplate,
    Var,
};

/// A JSON object's top-level fields, as the renderer and the checks read them.
pub trait Fields {
    fn field(&self, key: &str) -> Option<&Value>;
}

impl Fields for Map<String, Value> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

/// A client message's top-level fields, in a plain vector: a message has a handful, fewer
/// than hashing pays for (serde_json's ordered map hashes every key with SipHash and
/// allocates an index table per message). Nested values stay serde_json values.
///
/// Nothing iterates it, so a repeated key is kept and the lookup scans from the end: the last
/// occurrence wins, as in a `Map`, and a message of many keys costs one pass per lookup.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Inbound(Vec<(String, Value)>);

impl Fields for Inbound {
    fn field(&self, key: &str) -> Option<&Value> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl Inbound {
    /// Parses a message: `Ok(None)` when it is valid JSON but not an object.
    pub fn parse(text: &[u8]) -> Result<Option<Inbound>, serde_json::Error> {
        struct Top;
        impl<'de> serde::de::Visitor<'de> for Top {
            type Value = Option<Inbound>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(m.size_hint().unwrap_or(4).min(16));
                while let Some(kv) = m.next_entry::<String, Value>()? {
                    fields.push(kv);
                }
                Ok(Some(Inbound(fields)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<Self::Value, A::Error> {
                // As values, not `IgnoredAny`: serde_json's nesting limit then refuses a deep
                // array here exactly as it does when parsing a `Value`.
                while s.next_element::<Value>()?.is_some() {}
                Ok(None)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        let mut de = serde_json::Deserializer::from_slice(text);
        let v = serde::Deserializer::deserialize_any(&mut de, Top)?;
        de.end()?;
        Ok(v)
    }
}

/// Why a message failed its schema. Static text only: this runs per inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Dotted path of the offending field (empty for the message itself).
    pub field: String,
    pub problem: &'static str,
}

impl SchemaError {
    fn at(field: &str, problem: &'static str) -> Self {
        SchemaError {
            field: field.to_owned(),
            problem,
        }
    }

    pub fn describe(&self) -> String {
        if self.field.is_empty() {
            self.problem.to_owned()
        } else {
            format!("{}: {}", self.field, self.problem)
        }
    }
}

/// Validates `obj` against `schema`. Unknown fields are allowed (clients evolve faster than
/// servers) but are never forwarded: outbound messages are built from declared fields only.
pub fn check(schema: &Schema, obj: &dyn Fields, prefix: &str) -> Result<(), SchemaError> {
    for f in &schema.fields {
        match obj.field(&f.name) {
            None | Some(Value::Null) if f.required => {
                return Err(SchemaError::at(
                    &join(prefix, &f.name),
                    "required field is missing",
                ))
            }
            None | Some(Value::Null) => {}
            Some(v) => check_field(f, v, prefix)?,
        }
    }
    Ok(())
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn type_ok(ty: FieldType, v: &Value) -> bool {
    match ty {
        FieldType::String => v.is_string(),
        FieldType::Int => v.is_i64() || v.is_u64(),
        FieldType::Number => v.as_f64().is_some_and(f64::is_finite),
        FieldType::Bool => v.is_boolean(),
        FieldType::Object => v.is_object(),
        FieldType::Array => v.is_array(),
        FieldType::Id => match v {
            Value::String(s) => !s.is_empty() && s.len() <= 128,
            Value::Number(n) => n.is_i64() || n.is_u64(),
            _ => false,
        },
        FieldType::Any => true,
    }
}

fn check_field(f: &FieldSpec, v: &Value, prefix: &str) -> Result<(), SchemaError> {
    let path = || join(prefix, &f.name);
    if !type_ok(f.ty, v) {
        return Err(SchemaError::at(
            &path(),
            match f.ty {
                FieldType::String => "expected a string",
                FieldType::Int => "expected an integer",
                FieldType::Number => "expected a finite number",
                FieldType::Bool => "expected true or false",
                FieldType::Object => "expected an object",
                FieldType::Array => "expected an array",
                FieldType::Id => "expected an id (integer or non-empty string)",
                FieldType::Any => "unexpected value",
            },
        ));
    }
    if let Value::String(s) = v {
        if !f.enum_values.is_empty() && !f.enum_values.iter().any(|e| e == s) {
            return Err(SchemaError::at(
                &path(),
                "value is not one of the allowed values",
            ));
        }
        if f.max_length.is_some_and(|m| s.len() > m) {
            return Err(SchemaError::at(&path(), "string is too long"));
        }
    }
    if let Some(x) = v.as_f64() {
        if f.min.is_some_and(|m| x < m) {
            return Err(SchemaError::at(&path(), "number is below the minimum"));
        }
        if f.max.is_some_and(|m| x > m) {
            return Err(SchemaError::at(&path(), "number is above the maximum"));
        }
    }
    if let Value::Array(items) = v {
        if f.max_length.is_some_and(|m| items.len() > m) {
            return Err(SchemaError::at(&path(), "array has too many items"));
        }
        if let Some(ty) = f.items {
            if !items.iter().all(|i| type_ok(ty, i)) {
                return Err(SchemaError::at(&path(), "array item has the wrong type"));
            }
        }
    }
    if let (Value::Object(o), Some(nested)) = (v, &f.nested) {
        check(nested, o, &path())?;
    }
    Ok(())
}

/// Copies only the declared fields of `obj` (recursively for nested schemas).
pub fn declared_fields(schema: &Schema, obj: &dyn Fields) -> Map<String, Value> {
    let mut out = Map::new();
    for f in &schema.fields {
        if let Some(v) = obj.field(&f.name) {
            let v = match (v, &f.nested) {
                (Value::Object(o), Some(n)) => Value::Object(declared_fields(n, o)),
                _ => v.clone(),
            };
            out.insert(f.name.clone(), v);
        }
    }
    out
}

/// What templates may read. Built per rendering; everything is borrowed.
pub struct RenderCtx<'a> {
    pub params: &'a [String],
    /// The names of `params`, in the same order (the endpoint's path parameters), for
    /// `{path.<name>}` in message actions; empty where no endpoint is at hand.
    pub param_names: &'a [ParamSpec],
    pub claims: Option<&'a Map<String, Value>>,
    pub user_id: Option<&'a str>,
    pub inbound: Option<&'a dyn Fields>,
    pub now_ms: u64,
    /// Yields fresh ids for `{gen.id}`.
    pub next_id: &'a mut dyn FnMut() -> u64,
    /// The token an HTTP endpoint minted, for `{minted}`.
    pub minted: Option<&'a str>,
    /// The matched provider, when rendering a geo message.
    pub geo: Option<&'a GeoVars<'a>>,
}

/// What `{geo.*}` reads: one matched provider as seen from one search or job. Plain values.
#[derive(Debug, Clone, Copy)]
pub struct GeoVars<'a> {
    pub provider_id: &'a str,
    pub latitude: f64,
    pub longitude: f64,
    pub distance_km: f64,
    pub pool_key: &'a str,
    pub sub: &'a str,
}

impl GeoVars<'_> {
    fn value(&self, v: GeoVar) -> Value {
        match v {
            GeoVar::ProviderId => id_value(self.provider_id),
            GeoVar::Latitude => number(self.latitude),
            GeoVar::Longitude => number(self.longitude),
            GeoVar::DistanceKm => number(self.distance_km),
            GeoVar::Distance => Value::String(format!("{:.1}km", self.distance_km)),
            GeoVar::PoolKey => Value::String(self.pool_key.to_owned()),
            GeoVar::Sub => Value::String(self.sub.to_owned()),
        }
    }
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// A user id as JSON: a number when the canonical text is one (as the token carried it), else
/// the string.
pub fn id_value(id: &str) -> Value {
    match canonical_i64(id) {
        Some(n) => Value::from(n),
        None => Value::String(id.to_owned()),
    }
}

/// `id` as an integer when it is exactly the decimal an `i64` prints as (no sign, no leading
/// zero, no `-0`), decided without formatting it back.
fn canonical_i64(id: &str) -> Option<i64> {
    let n = id.parse::<i64>().ok()?;
    let digits = id.strip_prefix('-').unwrap_or(id);
    let canonical =
        !id.starts_with('+') && (id == "0" || !digits.starts_with('0')) && !digits.is_empty();
    canonical.then_some(n)
}

/// An outbound message compiled to JSON text with holes for its variables. Built once per
/// template (actions when the protocol loads, geo templates when a shard's geo state is
/// built): rendering then writes bytes into a buffer instead of building a `Map` per frame.
///
/// The output is byte-for-byte what `session::encode(&build(..))` gives (tests hold the two
/// together): keys in the same order, values through serde_json's own formatting and
/// escaping, and a whole variable without a value (an absent field or claim, a non-finite
/// `{geo.*}` number) leaves its key out exactly as [`RenderCtx::insert`] does. A template
/// that repeats a key or sets `type` does not compile: `build` would overwrite in place.
#[derive(Debug, Clone)]
pub struct Frame {
    /// `{"type":"<wire>"`.
    head: Vec<u8>,
    /// Each field as `,"key":` and what follows it.
    fields: Vec<(Vec<u8>, Slot)>,
}

#[derive(Debug, Clone)]
enum Slot {
    Fixed(Vec<u8>),
    /// Left out when it has no value.
    Whole(Var),
    /// Always written (interpolated strings, objects, arrays).
    Value(ValueTemplate),
}

impl Frame {
    pub fn compile(spec: &MessageSpec, with: &[(String, ValueTemplate)]) -> Option<Frame> {
        let mut head = b"{\"type\":".to_vec();
        serde_json::to_writer(&mut head, &spec.wire_type).ok()?;
        let mut fields = Vec::with_capacity(with.len());
        for (i, (key, t)) in with.iter().enumerate() {
            if key == "type" || with[..i].iter().any(|(k, _)| k == key) {
                return None;
            }
            let slot = match t {
                ValueTemplate::Literal(v) => Slot::Fixed(serde_json::to_vec(v).ok()?),
                ValueTemplate::Whole(v) => Slot::Whole(v.clone()),
                other => Slot::Value(other.clone()),
            };
            let mut prefix = b",".to_vec();
            serde_json::to_writer(&mut prefix, key).ok()?;
            prefix.push(b':');
            fields.push((prefix, slot));
        }
        Some(Frame { head, fields })
    }

    /// A geo template that reads nothing but literals and whole `{geo.*}` values, so it can be
    /// rendered from [`GeoVars`] alone ([`Frame::render_geo`]).
    pub fn geo(spec: &MessageSpec, with: &[(String, ValueTemplate)]) -> Option<Frame> {
        Frame::compile(spec, with).filter(|f| {
            f.fields
                .iter()
                .all(|(_, s)| matches!(s, Slot::Fixed(_) | Slot::Whole(Var::Geo(_))))
        })
    }

    /// Appends the message's JSON text to `out`.
    pub fn render(&self, ctx: &mut RenderCtx<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        for (prefix, slot) in &self.fields {
            match slot {
                Slot::Fixed(bytes) => {
                    out.extend_from_slice(prefix);
                    out.extend_from_slice(bytes);
                }
                Slot::Whole(v) => ctx.write_whole(v, prefix, out),
                Slot::Value(t) => {
                    out.extend_from_slice(prefix);
                    let _ = serde_json::to_writer(&mut *out, &ctx.value(t));
                }
            }
        }
        out.push(b'}');
    }

    /// The rendered message as a ready-to-send text frame, written through a per-thread
    /// buffer: one allocation, the frame itself.
    pub fn text_frame(&self, ctx: &mut RenderCtx<'_>) -> bytes::Bytes {
        thread_local! {
            static JSON: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        JSON.with(|json| {
            let mut json = json.borrow_mut();
            json.clear();
            self.render(ctx, &mut json);
            crate::ws::codec::text_frame(&json)
        })
    }

    /// [`Frame::render`] for a frame made by [`Frame::geo`].
    pub fn render_geo(&self, vars: &GeoVars<'_>, out: &mut Vec<u8>) {
        RenderCtx::geo_only(vars, |ctx| self.render(ctx, out));
    }
}

/// Writes `prefix` and the value of `{geo.<g>}` as [`GeoVars::value`] would serialise, or
/// nothing when that value is null. Writing into a `Vec` cannot fail.
fn write_geo(g: GeoVar, vars: &GeoVars<'_>, prefix: &[u8], out: &mut Vec<u8>) {
    let number = |x: f64, out: &mut Vec<u8>| {
        // `number` maps a non-finite value to null, and a null whole variable is left out.
        if x.is_finite() {
            out.extend_from_slice(prefix);
            let _ = serde_json::to_writer(&mut *out, &x);
        }
    };
    match g {
        GeoVar::Latitude => number(vars.latitude, out),
        GeoVar::Longitude => number(vars.longitude, out),
        GeoVar::DistanceKm => number(vars.distance_km, out),
        GeoVar::ProviderId => {
            out.extend_from_slice(prefix);
            let _ = match canonical_i64(vars.provider_id) {
                Some(n) => serde_json::to_writer(&mut *out, &n),
                None => serde_json::to_writer(&mut *out, vars.provider_id),
            };
        }
        GeoVar::Distance => {
            out.extend_from_slice(prefix);
            let _ = serde_json::to_writer(&mut *out, &format!("{:.1}km", vars.distance_km));
        }
        GeoVar::PoolKey => {
            out.extend_from_slice(prefix);
            let _ = serde_json::to_writer(&mut *out, vars.pool_key);
        }
        GeoVar::Sub => {
            out.extend_from_slice(prefix);
            let _ = serde_json::to_writer(&mut *out, vars.sub);
        }
    }
}

fn write_str(s: Option<&str>, prefix: &[u8], out: &mut Vec<u8>) {
    if let Some(s) = s {
        out.extend_from_slice(prefix);
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

impl RenderCtx<'_> {
    /// Runs `f` with a context that reads nothing but `vars`.
    pub fn geo_only<R>(vars: &GeoVars<'_>, f: impl FnOnce(&mut RenderCtx<'_>) -> R) -> R {
        let mut never = || 0;
        f(&mut RenderCtx {
            params: &[],
            param_names: &[],
            claims: None,
            user_id: None,
            inbound: None,
            now_ms: 0,
            next_id: &mut never,
            minted: None,
            geo: Some(vars),
        })
    }

    /// Writes `prefix` and the value of a whole variable as [`RenderCtx::insert`] would keep
    /// it, or nothing when it has none; reads borrowed values in place instead of cloning.
    fn write_whole(&mut self, v: &Var, prefix: &[u8], out: &mut Vec<u8>) {
        let borrowed = match v {
            Var::Geo(g) => {
                if let Some(vars) = self.geo {
                    write_geo(*g, vars, prefix, out);
                }
                return;
            }
            Var::In(path) => self.inbound_at(path),
            Var::Claim(c) => self.claims.and_then(|m| m.get(c)),
            Var::Path(i) => return write_str(self.params.get(*i).map(String::as_str), prefix, out),
            Var::PathNamed(n) => return write_str(self.named_param(n), prefix, out),
            Var::UserId => return write_str(self.user_id, prefix, out),
            other => {
                let v = self.var(other);
                if !v.is_null() {
                    out.extend_from_slice(prefix);
                    let _ = serde_json::to_writer(&mut *out, &v);
                }
                return;
            }
        };
        if let Some(v) = borrowed.filter(|v| !v.is_null()) {
            out.extend_from_slice(prefix);
            let _ = serde_json::to_writer(&mut *out, v);
        }
    }

    /// The inbound message's value at a dotted path, if it has one.
    fn inbound_at(&self, path: &[String]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        rest.iter()
            .try_fold(self.inbound?.field(first)?, |cur, p| cur.get(p))
    }

    /// The value of the path parameter called `name`, if the endpoint has one.
    fn named_param(&self, name: &str) -> Option<&str> {
        let i = self.param_names.iter().position(|p| p.name == name)?;
        self.params.get(i).map(String::as_str)
    }

    fn var(&mut self, v: &Var) -> Value {
        match v {
            Var::PathNamed(n) => self
                .named_param(n)
                .map(|s| Value::String(s.to_owned()))
                .unwrap_or(Value::Null),
            Var::Path(i) => self
                .params
                .get(*i)
                .map(|s| Value::String(s.clone()))
                .unwrap_or(Value::Null),
            Var::Claim(c) => self
                .claims
                .and_then(|m| m.get(c))
                .cloned()
                .unwrap_or(Value::Null),
            Var::UserId => self
                .user_id
                .map(|u| Value::String(u.to_owned()))
                .unwrap_or(Value::Null),
            Var::In(path) => self.inbound_at(path).cloned().unwrap_or(Value::Null),
            Var::GenId => Value::from((self.next_id)()),
            Var::NowIso => Value::String(iso8601(self.now_ms)),
            Var::NowMs => Value::from(self.now_ms),
            Var::Or(alts) => alts
                .iter()
                .map(|v| self.var(v))
                .find(|v| !v.is_null())
                .unwrap_or(Value::Null),
            Var::Minted => self
                .minted
                .map(|m| Value::String(m.to_owned()))
                .unwrap_or(Value::Null),
            Var::Geo(g) => self.geo.map(|v| v.value(*g)).unwrap_or(Value::Null),
        }
    }

    /// Inserts a rendered field; a field that is a single variable without a value (an
    /// optional inbound field the client left out, an absent claim) is left out, not null.
    pub fn insert(&mut self, m: &mut Map<String, Value>, k: &str, t: &ValueTemplate) {
        let v = self.value(t);
        if v.is_null() && matches!(t, ValueTemplate::Whole(_)) {
            m.remove(k);
            return;
        }
        m.insert(k.to_owned(), v);
    }

    pub fn string(&mut self, t: &Template) -> String {
        let mut out = String::new();
        for p in &t.pieces {
            match p {
                Piece::Text(s) => out.push_str(s),
                Piece::Var(v) => match self.var(v) {
                    Value::String(s) => out.push_str(&s),
                    Value::Null => {}
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        out
    }

    pub fn value(&mut self, t: &ValueTemplate) -> Value {
        match t {
            ValueTemplate::Literal(v) => v.clone(),
            ValueTemplate::Whole(v) => self.var(v),
            ValueTemplate::Interp(t) => Value::String(self.string(t)),
            ValueTemplate::Object(fields) => {
                let mut m = Map::new();
                for (k, v) in fields {
                    self.insert(&mut m, k, v);
                }
                Value::Object(m)
            }
            ValueTemplate::Array(items) => {
                Value::Array(items.iter().map(|i| self.value(i)).collect())
            }
        }
    }
}

/// Builds an outbound message: `{"type": <wire>, ...base, ...with}`. Later keys win, so
/// server-filled fields cannot be spoofed by a forwarded client field of the same name.
pub fn build(
    spec: &MessageSpec,
    base: Option<Map<String, Value>>,
    with: &[(String, ValueTemplate)],
    ctx: &mut RenderCtx<'_>,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("type".into(), Value::String(spec.wire_type.clone()));
    if let Some(b) = base {
        for (k, v) in b {
            if k != "type" {
                out.insert(k, v);
            }
        }
    }
    for (k, t) in with {
        ctx.insert(&mut out, k, t);
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` from Unix milliseconds, without a date library.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let micros = (ms % 1000) * 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{micros:06}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_ids_match_formatting_back() {
        for id in [
            "0",
            "-0",
            "7",
            "007",
            "+7",
            "-7",
            "-07",
            "",
            "-",
            "+",
            "12a",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            " 1",
            "1 ",
            "٣",
        ] {
            let by_formatting = id.parse::<i64>().ok().filter(|n| n.to_string() == id);
            assert_eq!(canonical_i64(id), by_formatting, "{id:?}");
        }
    }

    fn visible() -> crate::protocol::Protocol {
        crate::protocol::load_protocol(include_str!("../../config/protocols/visible.toml"))
            .expect("visible.toml validates")
    }

    /// The compiled geo frames against the general renderer, for the seed app's templates
    /// and values that stress formatting: every float shape, NaN (left out), ids that are and
    /// are not numbers, strings that need escaping.
    #[test]
    fn geo_frame_renders_exactly_what_build_encodes() {
        let proto = visible();
        let spec = &proto.geo.pools[0];
        let floats = [
            0.0,
            -0.0,
            11.2588,
            -179.99999999999997,
            1e-300,
            5e-324,
            1.7976931348623157e308,
            0.1 + 0.2,
            123456789.125,
            f64::NAN,
            f64::INFINITY,
        ];
        let ids = ["100042", "007", "-3", "user\"\\\u{1}é", "0"];
        let texts = ["MS0001", "", "quote\"back\\slash\nnew\u{7f}\u{2028}"];
        let mut checked = 0;
        for send in [&spec.entered, &spec.moved, &spec.left]
            .into_iter()
            .flatten()
        {
            let frame = Frame::geo(&proto.messages[send.send], &send.with)
                .expect("the seed app's geo templates compile");
            for (i, &x) in floats.iter().enumerate() {
                for id in ids {
                    let vars = GeoVars {
                        provider_id: id,
                        latitude: x,
                        longitude: floats[(i + 3) % floats.len()],
                        distance_km: floats[(i + 5) % floats.len()],
                        pool_key: texts[i % texts.len()],
                        sub: texts[(i + 1) % texts.len()],
                    };
                    let built = RenderCtx::geo_only(&vars, |ctx| {
                        build(&proto.messages[send.send], None, &send.with, ctx)
                    });
                    let want = serde_json::to_vec(&built).unwrap();
                    let mut got = Vec::new();
                    frame.render_geo(&vars, &mut got);
                    assert_eq!(
                        String::from_utf8(got).unwrap(),
                        String::from_utf8(want).unwrap()
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * 11 * 5);
    }

    #[test]
    fn geo_frame_refuses_what_it_cannot_splice() {
        let proto = visible();
        let dispatch = &proto.geo.dispatches[0];
        // `{in.*}` and `{now.iso}` read more than the geo variables.
        assert!(Frame::geo(&proto.messages[dispatch.send.send], &dispatch.send.with).is_none());
    }

    /// The vector parse against serde_json's: the same accept/reject decision, the same
    /// object or not, the same value under every key (the last of a repeated key).
    #[test]
    fn inbound_parses_as_serde_json_does() {
        let cases: &[&[u8]] = &[
            br#"{"type":"ping","t":1767438000123}"#,
            br#" { "type" : "a\u00e9\n" , "n" : {"x":[1,2,{"y":null}]} } "#,
            br#"{"k":1,"k":2,"j":3,"k":"last"}"#,
            br#"{}"#,
            br#"[1,2,3]"#,
            br#""text""#,
            b"42",
            b"-0.5e3",
            b"true",
            b"null",
            br#"{"a":1}{"b":2}"#,
            br#"{"a":1,}"#,
            br#"{"a":}"#,
            br#"{"a":1"#,
            b"",
            b"\xff",
            br#"{"a":"\ud800"}"#,
            br#"{"deep":[[[[[[[[[[[[[[[[[[[[{}]]]]]]]]]]]]]]]]]]]]}"#,
        ];
        for &c in cases {
            let want = serde_json::from_slice::<Value>(c);
            let got = Inbound::parse(c);
            match (want, got) {
                (Err(_), Err(_)) => {}
                (Ok(Value::Object(m)), Ok(Some(i))) => {
                    for (k, v) in &m {
                        assert_eq!(i.field(k), Some(v), "{}", String::from_utf8_lossy(c));
                    }
                    assert_eq!(i.field("absent"), None);
                }
                (Ok(v), Ok(None)) => assert!(!v.is_object()),
                (w, g) => panic!(
                    "{}: serde_json {w:?}, inbound {g:?}",
                    String::from_utf8_lossy(c)
                ),
            }
        }
        let nested = "[".repeat(200) + &"]".repeat(200);
        assert!(Inbound::parse(format!("{{\"a\":{nested}}}").as_bytes()).is_err());
        assert!(Inbound::parse(nested.as_bytes()).is_err());
    }

    /// Every variable a template reads, recursively.
    fn vars_of(t: &ValueTemplate, out: &mut Vec<Var>) {
        fn push(v: &Var, out: &mut Vec<Var>) {
            if let Var::Or(alts) = v {
                alts.iter().for_each(|a| push(a, out));
            }
            out.push(v.clone());
        }
        match t {
            ValueTemplate::Literal(_) => {}
            ValueTemplate::Whole(v) => push(v, out),
            ValueTemplate::Interp(t) => t.pieces.iter().for_each(|p| {
                if let Piece::Var(v) = p {
                    push(v, out)
                }
            }),
            ValueTemplate::Object(fields) => fields.iter().for_each(|(_, t)| vars_of(t, out)),
            ValueTemplate::Array(items) => items.iter().for_each(|t| vars_of(t, out)),
        }
    }

    /// Sets `path` in `obj` to `v`, making the objects on the way.
    fn set_path(obj: &mut Map<String, Value>, path: &[String], v: Value) {
        match path {
            [] => {}
            [last] => {
                obj.insert(last.clone(), v);
            }
            [head, rest @ ..] => {
                let e = obj
                    .entry(head.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !e.is_object() {
                    *e = Value::Object(Map::new());
                }
                if let Value::Object(o) = e {
                    set_path(o, rest, v);
                }
            }
        }
    }

    /// Every compiled action frame of every shipped protocol against the general renderer:
    /// inbound fields, claims and path parameters absent, null and of every JSON shape,
    /// strings that need escaping.
    #[test]
    fn action_frames_render_exactly_what_build_encodes() {
        let sources = [
            include_str!("../../config/protocols/hunarmitra.toml"),
            include_str!("../../config/protocols/smartparking.toml"),
            include_str!("../../config/protocols/therapy.toml"),
            include_str!("../../config/protocols/umemployed.toml"),
            include_str!("../../config/protocols/visible.toml"),
            include_str!("../../protocol.toml"),
            include_str!("../../benches/protocol.toml"),
            include_str!("../../tests/fixtures/core.toml"),
        ];
        let samples = [
            json!(null),
            json!("plain"),
            json!("quote\"back\\slash\nnew\u{7f}\u{2028}é"),
            json!(0),
            json!(-12),
            json!(0.1 + 0.2),
            json!(1e300),
            json!(true),
            json!({"b": 1, "a": [1, "x", null]}),
            json!([]),
        ];
        let mut compiled = 0;
        for src in sources {
            let proto = crate::protocol::load_protocol(src).expect("shipped protocols validate");
            for a in proto.actions() {
                assert_eq!(a.frame.is_some(), !a.forward, "{:?}", a.with);
                let Some(frame) = &a.frame else { continue };
                compiled += 1;
                let mut vars = Vec::new();
                a.with.iter().for_each(|(_, t)| vars_of(t, &mut vars));
                for (i, sample) in samples.iter().enumerate() {
                    // Every other variable is left absent, so both "missing" and "present"
                    // meet every sample.
                    let mut inbound = Map::new();
                    let mut claims = Map::new();
                    for (j, v) in vars.iter().enumerate() {
                        let value = samples[(i + j) % samples.len()].clone();
                        if (i + j) % 3 == 0 {
                            continue;
                        }
                        match v {
                            Var::In(path) => set_path(&mut inbound, path, value),
                            Var::Claim(c) => {
                                claims.insert(c.clone(), value);
                            }
                            _ => {}
                        }
                    }
                    let params: Vec<String> = (0..3)
                        .map(|k| samples[(i + k) % samples.len()].to_string())
                        .collect();
                    let user = sample.as_str();
                    let run = |render: &mut dyn FnMut(&mut RenderCtx<'_>) -> Vec<u8>| {
                        let mut n = 41;
                        let mut next = || {
                            n += 1;
                            n
                        };
                        render(&mut RenderCtx {
                            params: &params,
                            param_names: &[],
                            claims: Some(&claims),
                            user_id: user,
                            inbound: Some(&inbound),
                            now_ms: 1_767_438_000_123,
                            next_id: &mut next,
                            minted: None,
                            geo: None,
                        })
                    };
                    let want = run(&mut |ctx| {
                        serde_json::to_vec(&build(&proto.messages[a.send], None, &a.with, ctx))
                            .unwrap()
                    });
                    let got = run(&mut |ctx| {
                        let mut out = Vec::new();
                        frame.render(ctx, &mut out);
                        out
                    });
                    assert_eq!(
                        String::from_utf8(got).unwrap(),
                        String::from_utf8(want).unwrap(),
                        "{:?}",
                        a.with
                    );
                }
            }
        }
        // Most actions compile (forwarding ones do not): a guard against a compiler that gives up.
        assert!(compiled >= 8, "only {compiled} actions compiled");
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(iso8601(1_767_438_000_123), "2026-01-03T11:00:00.123000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000000Z");
    }
}
