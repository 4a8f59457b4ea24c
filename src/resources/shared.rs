//! Types and schema pieces shared by the four custom resources.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::vocabulary::{ConditionType, Reason};

/// API group of every Understudy resource.
pub const GROUP: &str = "understudy.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// Label that carries a pod member's role; the routing Services select on it.
pub const ROLE_LABEL: &str = "understudy.dev/role";

/// A duration written the Go / Kubernetes way: `500ms`, `5s`, `1m30s`, `2h`.
///
/// The schema rejects anything else at the API server, so the operator never
/// sees a malformed duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

/// Regular expression (RE2 and Rust `regex` compatible) for a non-negative Go duration.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// CEL: `expr` (a string) is a duration in [`DURATION_PATTERN`]'s form.
fn cel_is_duration(expr: &str) -> String {
    format!("{expr}.matches('{}')", DURATION_PATTERN.replace('\\', "\\\\"))
}

/// Schema transform for an enum spelled in CamelCase (the Kubernetes API conventions) whose
/// earlier versions used lowercase or kebab-case: the schema accepts both spellings (stored
/// objects and manifests written for an earlier version stay valid; each variant has a serde
/// `alias`), the operator writes CamelCase.
pub fn also_earlier_spelling(schema: &mut schemars::Schema) {
    use serde_json::{Value, json};
    // Variants without docs: `enum: [...]`.
    if let Some(Value::Array(values)) = schema.get_mut("enum") {
        let earlier: Vec<Value> = values
            .iter()
            .filter_map(|v| v.as_str())
            .map(earlier_spelling)
            .filter(|e| !values.iter().any(|v| v.as_str() == Some(e.as_str())))
            .map(Value::from)
            .collect();
        values.extend(earlier);
    }
    // Variants with docs: `oneOf: [{const, description}, ...]` (flattened to `enum` in the CRD).
    if let Some(Value::Array(variants)) = schema.get_mut("oneOf") {
        let earlier: Vec<Value> = variants
            .iter()
            .filter_map(|v| v.get("const").and_then(Value::as_str))
            .map(|c| (c.to_owned(), earlier_spelling(c)))
            .filter(|(c, e)| c != e)
            .map(|(c, e)| json!({"const": e, "type": "string", "description": format!("Earlier spelling of `{c}`.")}))
            .collect();
        variants.extend(earlier);
    }
}

/// `FailingOver` → `failing-over`, `Redis` → `redis`.
pub fn earlier_spelling(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// CEL rule for an object holding the duration field `field`: when set and well formed (the
/// field's own rule reports the rest), it is at least `min`.
pub fn cel_min_duration(field: &str, min: &str) -> String {
    let f = format!("self.{field}");
    format!("!has({f}) || !{} || duration({f}) >= duration('{min}')", cel_is_duration(&f))
}

impl GoDuration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

impl From<GoDuration> for Duration {
    fn from(d: GoDuration) -> Self {
        d.0
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d.subsec_nanos().is_multiple_of(1_000_000) && d.as_secs() == 0 {
            return write!(f, "{}ms", d.subsec_millis());
        }
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        let ms = d.subsec_millis();
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || ms > 0 {
            if ms > 0 {
                write!(f, "{s}.{ms:03}s")?;
            } else {
                write!(f, "{s}s")?;
            }
        }
        Ok(())
    }
}

/// The longest duration any field takes: longer makes no sense for probing, failover delays
/// or step timeouts, and the schema refuses it too (schema and parser agree).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Why a duration string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: expected a number and unit such as 500ms, 5s, 1m30s or 2h, at most 24h")]
pub struct DurationParseError {
    input: String,
}

impl FromStr for GoDuration {
    type Err = DurationParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationParseError { input: s.to_string() };
        if s == "0" {
            return Ok(Self(Duration::ZERO));
        }
        let mut rest = s;
        let mut total = Duration::ZERO;
        if rest.is_empty() {
            return Err(err());
        }
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
            if num_len == 0 {
                return Err(err());
            }
            let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
            rest = &rest[num_len..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
            let nanos_per_unit: f64 = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => return Err(err()),
            };
            rest = &rest[unit_len..];
            let nanos = value * nanos_per_unit;
            if !nanos.is_finite() || nanos > 1e18 {
                return Err(err());
            }
            total = total.checked_add(Duration::from_nanos(nanos as u64)).ok_or_else(err)?;
            if total > MAX_DURATION {
                return Err(err());
            }
        }
        Ok(Self(total))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": cel_is_duration("self"),
                "message": "must be a duration such as 500ms, 5s, 1m30s or 2h"
            }, {
                // Only durations that match the pattern are compared (the rule above reports
                // the others).
                "rule": format!("!{} || duration(self) <= duration('24h')", cel_is_duration("self")),
                "message": "must be at most 24h"
            }]
        })
    }
}

/// A key in a Secret of the resource's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret. Each use documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// Schema of a `conditions` list: a map keyed by `type`, as the API conventions ask.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

/// Schema of `T` where the operator keeps a copy of it in a status (observed data, never
/// written by a user): `T`'s shape without its CEL rules, which would only spend the API
/// server's validation budget (inside a list, more than it allows).
pub fn observed_schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("x-kubernetes-validations");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = T::json_schema(generator).into();
    strip(&mut v);
    Schema::try_from(v).expect("a schema without some keys is still a schema")
}

/// Condition statuses.
pub const TRUE: &str = "True";
pub const FALSE: &str = "False";

/// Sets (or replaces) one condition, keeping `lastTransitionTime` when the
/// status did not change so that a status write only happens on real change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: bool,
    reason: Reason,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) {
    let status = if status { TRUE } else { FALSE };
    let message = message.into();
    let (type_, reason) = (type_.as_str(), reason.as_str());
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status.to_string();
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// Looks up a condition by type.
pub fn condition(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Removes the condition of type `type_`, if any.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: ConditionType) {
    conditions.retain(|c| c.type_ != type_.as_str());
}

/// A Kubernetes quantity (`64Mi`, `1.5Gi`, `10G`, `500m`, `1e3`) as a number, for
/// comparing sizes; None when it is not one.
pub fn quantity_value(q: &str) -> Option<f64> {
    let q = q.trim();
    let end = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(end);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ms = |s: &str| s.parse::<GoDuration>().map(|d| d.0.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("5s"), Ok(5000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("1.5s"), Ok(1500));
        assert_eq!(ms("2h"), Ok(7_200_000));
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms("24h"), Ok(86_400_000), "the longest accepted");
        assert_eq!(ms("23h59m59.999s"), Ok(86_399_999));
        for bad in ["", "5", "s", "5x", "-5s", "5 s", "1e3s", "ms5", "24h1ms", "25h", "1441m", "300000h"] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn durations_round_trip_through_display() {
        for s in ["0s", "250ms", "1s", "1.500s", "1m30s", "2h", "1h0m5s"] {
            let d: GoDuration = s.parse().unwrap();
            let again: GoDuration = d.to_string().parse().unwrap();
            assert_eq!(d, again, "{s}");
        }
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_unchanged() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(100).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(200).unwrap());
        let mut cs = vec![];
        let ready = ConditionType::Ready;
        set_condition(&mut cs, ready, true, Reason::PrimaryHealthy, "fine", Some(1), &t0);
        set_condition(&mut cs, ready, true, Reason::PrimaryHealthy, "still fine", Some(2), &t1);
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, t0);
        assert_eq!(cs[0].message, "still fine");
        assert_eq!((cs[0].type_.as_str(), cs[0].reason.as_str()), ("Ready", "PrimaryHealthy"));
        set_condition(&mut cs, ready, false, Reason::NoPrimary, "gone", Some(2), &t1);
        assert_eq!(cs[0].last_transition_time, t1);
        assert_eq!(cs[0].status, FALSE);
        assert_eq!(condition(&cs, ready).map(|c| c.reason.as_str()), Some("NoPrimary"));
        remove_condition(&mut cs, ready);
        assert!(condition(&cs, ready).is_none());
    }

    #[test]
    fn quantities_compare_as_numbers() {
        assert_eq!(quantity_value("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity_value("1Gi"), quantity_value("1024Mi"));
        assert_eq!(quantity_value("1000m"), quantity_value("1"));
        assert_eq!(quantity_value("1e3"), quantity_value("1k"));
        assert_eq!(quantity_value("1.5G"), Some(1.5e9));
        assert!(quantity_value("128Mi") > quantity_value("100M"));
        assert_eq!(quantity_value("lots"), None);
        assert_eq!(quantity_value("1Zi"), None);
    }
}
