//! Value forms: choices, plain column values and custom-field selections in the forms NetBox's
//! REST serializer gives them.

use serde_json::{Map, Value};

use super::Renderer;
use crate::netbox::catalogue::ValueFormat;
use crate::netbox::format;

impl Renderer<'_> {
    /// A choice as `{value, label}`; blank and null as null.
    pub(crate) fn choice(&self, value: &Value, set: Option<&str>) -> Value {
        match value {
            Value::Null => Value::Null,
            Value::String(s) if s.is_empty() => Value::Null,
            v => {
                // NetBox's ChoiceField gives an empty label to a value outside its choices
                let label = set
                    .and_then(|s| self.catalogue.choice_label(s, v))
                    .unwrap_or_default()
                    .to_string();
                let mut out = Map::new();
                out.insert("value".into(), v.clone());
                out.insert("label".into(), Value::String(label));
                Value::Object(out)
            }
        }
    }
}

pub(crate) fn select_value(choices: &[(Value, String)], value: &Value) -> Value {
    let label = choices
        .iter()
        .find(|(v, _)| crate::python::value::eq(v, value))
        .map(|(_, l)| Value::String(l.clone()))
        .unwrap_or_else(|| value.clone());
    let mut out = Map::new();
    out.insert("value".into(), value.clone());
    out.insert("label".into(), label);
    Value::Object(out)
}

/// A column's value in the REST form.
pub(crate) fn format_value(
    value: &Value,
    format: Option<ValueFormat>,
    item_format: Option<ValueFormat>,
) -> Value {
    if value.is_null() {
        return Value::Null;
    }
    let Some(format) = format else {
        return value.clone();
    };
    match format {
        ValueFormat::Str
        | ValueFormat::Int
        | ValueFormat::Bool
        | ValueFormat::Date
        | ValueFormat::Json
        | ValueFormat::Uuid
        | ValueFormat::Duration
        | ValueFormat::Cidr => value.clone(),
        ValueFormat::Datetime => format::datetime_rest(value),
        ValueFormat::Decimal => format::decimal_rest(value),
        ValueFormat::Inet => format::inet(value),
        ValueFormat::Mac => value
            .as_str()
            .map_or(value.clone(), |s| Value::String(s.to_uppercase())),
        ValueFormat::Timezone if value.as_str() == Some("") => Value::Null,
        ValueFormat::Timezone => value.clone(),
        ValueFormat::FileUrl => match value.as_str() {
            Some("") | None => Value::Null,
            Some(path) => Value::String(format!("/media/{path}")),
        },
        ValueFormat::Array => match value {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| format_value(v, item_format, None))
                    .collect(),
            ),
            other => other.clone(),
        },
        ValueFormat::IntRange => int_range(value),
    }
}

/// A PostgreSQL int range as text (`[1,11)`) as NetBox writes it: `[lower, upper inclusive]`.
pub(crate) fn int_range(value: &Value) -> Value {
    let Some(text) = value.as_str() else {
        return value.clone();
    };
    let inner = text.trim_matches(|c| matches!(c, '[' | ']' | '(' | ')'));
    let Some((lo, hi)) = inner.split_once(',') else {
        return value.clone();
    };
    let (Ok(mut lo), Ok(mut hi)) = (lo.trim().parse::<i64>(), hi.trim().parse::<i64>()) else {
        return value.clone();
    };
    if text.starts_with('(') {
        lo += 1;
    }
    if text.ends_with(')') {
        hi -= 1;
    }
    Value::Array(vec![Value::from(lo), Value::from(hi)])
}

/// A Service's legacy `protocol` and `ports` from its `port_mappings` (`["tcp/80", ...]`).
pub(crate) fn legacy_port_mappings(mappings: &[String]) -> (Option<String>, Value) {
    let mut protocols: Vec<String> = Vec::new();
    let mut ports: Vec<&str> = Vec::new();
    for m in mappings {
        let (protocol, port) = m.split_once('/').unwrap_or((m.as_str(), ""));
        if !protocols.iter().any(|p| p == protocol) {
            protocols.push(protocol.to_string());
        }
        ports.push(port);
    }
    match protocols.len() {
        0 => (None, Value::Array(Vec::new())),
        1 => {
            if ports
                .iter()
                .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
            {
                return (None, Value::Null);
            }
            let mut numbers: Vec<i64> = ports.iter().filter_map(|p| p.parse().ok()).collect();
            numbers.sort();
            (
                protocols.pop(),
                Value::Array(numbers.into_iter().map(Value::from).collect()),
            )
        }
        _ => (None, Value::Null),
    }
}
