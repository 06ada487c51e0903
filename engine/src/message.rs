//! Message checking and building against the frozen protocol: schema validation of JSON values
//! and rendering of `with` templates into outbound messages. Plain code, no I/O; the clock and
//! id generator come in through [`RenderCtx`].

use serde_json::{Map, Value};

use crate::protocol::{
    FieldSpec, FieldType, GeoVar, MessageSpec, Piece, Schema, Template, ValueTemplate, Var,
};

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
pub fn check(schema: &Schema, obj: &Map<String, Value>, prefix: &str) -> Result<(), SchemaError> {
    for f in &schema.fields {
        match obj.get(&f.name) {
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
pub fn declared_fields(schema: &Schema, obj: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for f in &schema.fields {
        if let Some(v) = obj.get(&f.name) {
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
    pub claims: Option<&'a Map<String, Value>>,
    pub user_id: Option<&'a str>,
    pub inbound: Option<&'a Map<String, Value>>,
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

/// A geo message compiled to JSON text with holes for `{geo.*}`. Exists on every shard.
///
/// Built once per `entered` / `moved` / `left` template by the shard that renders it:
/// rendering then splices bytes into a buffer instead of building a `Map` per frame.
///
/// Only templates made of literals and whole `{geo.*}` values compile; anything reading ids,
/// the clock, claims or inbound fields goes through [`build`]. The output is byte-for-byte what
/// `session::encode(&build(..))` gives (a test holds the two together): keys in the same order,
/// numbers through serde_json's own float formatting, strings through its escaping, and a
/// `{geo.*}` number that is not finite leaves its key out exactly as [`RenderCtx::insert`] does.
#[derive(Debug, Clone)]
pub struct GeoFrame {
    /// `{"type":"<wire>"`.
    head: Vec<u8>,
    /// Each field as `,"key":` and what follows it.
    fields: Vec<(Vec<u8>, GeoSlot)>,
}

#[derive(Debug, Clone)]
enum GeoSlot {
    Fixed(Vec<u8>),
    Geo(GeoVar),
}

impl GeoFrame {
    pub fn compile(spec: &MessageSpec, with: &[(String, ValueTemplate)]) -> Option<GeoFrame> {
        let mut head = b"{\"type\":".to_vec();
        serde_json::to_writer(&mut head, &spec.wire_type).ok()?;
        let mut fields = Vec::with_capacity(with.len());
        for (i, (key, t)) in with.iter().enumerate() {
            // A repeated key or "type" would overwrite in place in `build`; not worth copying.
            if key == "type" || with[..i].iter().any(|(k, _)| k == key) {
                return None;
            }
            let slot = match t {
                ValueTemplate::Literal(v) => GeoSlot::Fixed(serde_json::to_vec(v).ok()?),
                ValueTemplate::Whole(Var::Geo(g)) => GeoSlot::Geo(*g),
                _ => return None,
            };
            let mut prefix = b",".to_vec();
            serde_json::to_writer(&mut prefix, key).ok()?;
            prefix.push(b':');
            fields.push((prefix, slot));
        }
        Some(GeoFrame { head, fields })
    }

    /// Appends the message's JSON text to `out`.
    pub fn render(&self, vars: &GeoVars<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        for (prefix, slot) in &self.fields {
            match slot {
                GeoSlot::Fixed(bytes) => {
                    out.extend_from_slice(prefix);
                    out.extend_from_slice(bytes);
                }
                GeoSlot::Geo(g) => write_geo(*g, vars, prefix, out),
            }
        }
        out.push(b'}');
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

impl RenderCtx<'_> {
    fn var(&mut self, v: &Var) -> Value {
        match v {
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
            Var::In(path) => {
                let mut cur = self.inbound.map(|m| m.get(&path[0]));
                for p in &path[1..] {
                    cur = cur.map(|c| c.and_then(|v| v.get(p)));
                }
                cur.flatten().cloned().unwrap_or(Value::Null)
            }
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
            let frame = GeoFrame::compile(&proto.messages[send.send], &send.with)
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
                    let mut never = || 0;
                    let mut ctx = RenderCtx {
                        params: &[],
                        claims: None,
                        user_id: None,
                        inbound: None,
                        now_ms: 0,
                        next_id: &mut never,
                        geo: Some(&vars),
                        minted: None,
                    };
                    let built = build(&proto.messages[send.send], None, &send.with, &mut ctx);
                    let want = serde_json::to_vec(&built).unwrap();
                    let mut got = Vec::new();
                    frame.render(&vars, &mut got);
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
        assert!(
            GeoFrame::compile(&proto.messages[dispatch.send.send], &dispatch.send.with).is_none()
        );
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(iso8601(1_767_438_000_123), "2026-01-03T11:00:00.123000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000000Z");
    }
}
