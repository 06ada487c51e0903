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
    match id.parse::<i64>() {
        Ok(n) if n.to_string() == id => Value::from(n),
        _ => Value::String(id.to_owned()),
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
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(iso8601(1_767_438_000_123), "2026-01-03T11:00:00.123000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000000Z");
    }
}
