//! `snapshots`: the prechange and postchange states in the form of NetBox's `serialize_object`,
//! from NetBox's change log where it logged one, else from the captured rows.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::Renderer;
use super::nested::sort_rows;
use crate::change::{Action, Row, TxChange};
use crate::netbox::catalogue::{Model, OrderBy, SnapshotField, SnapshotFormat, SnapshotKind};
use crate::netbox::format;
use crate::netbox::lookup::{Found, RelatedKey};

impl Renderer<'_> {
    pub(crate) fn snapshots(
        &mut self,
        change: &TxChange,
        name: &str,
        model: Option<&Model>,
    ) -> Value {
        // NetBox's own change log carries its snapshots exactly; use them when it logged the change.
        if let (Some(first), Some(last)) = (change.changelog.first(), change.changelog.last()) {
            let order = model.map(|m| m.snapshot.as_slice()).unwrap_or(&[]);
            let pre = first.prechange().map_or(Value::Null, |v| reorder(v, order));
            let post = match change.action {
                Action::Deleted => Value::Null,
                _ => last.postchange().map_or(Value::Null, |v| reorder(v, order)),
            };
            let mut out = Map::new();
            out.insert("prechange".into(), pre);
            out.insert("postchange".into(), post);
            return Value::Object(out);
        }
        // NetBox takes a prechange snapshot only of models that log their changes.
        let logs_changes = model.is_none_or(|m| m.change_logging);
        let pre = match &change.pre_row {
            Some(row) if logs_changes => self.snapshot(name, model, row, &change.pre_tags),
            _ => Value::Null,
        };
        let post = change.post_row.as_ref().map_or(Value::Null, |row| {
            self.snapshot(name, model, row, &change.post_tags)
        });
        let mut out = Map::new();
        out.insert("prechange".into(), pre);
        out.insert("postchange".into(), post);
        Value::Object(out)
    }

    /// `serialize_object()` of a row.
    pub(crate) fn snapshot(
        &mut self,
        name: &str,
        model: Option<&Model>,
        row: &Row,
        tags: &BTreeSet<i64>,
    ) -> Value {
        let Some(model) = model else {
            let mut out: Map<String, Value> = row
                .iter()
                .filter(|(k, _)| *k != "id" && *k != "last_updated")
                .map(|(k, v)| (k.strip_suffix("_id").unwrap_or(k).to_string(), v.clone()))
                .collect();
            if let Some(cf) = out.remove("custom_field_data") {
                out.insert("custom_fields".into(), cf);
            }
            return Value::Object(out);
        };
        let mut out = Map::new();
        for field in &model.snapshot {
            if field.excluded_by_default {
                continue;
            }
            let value = self.snapshot_field(name, model, field, row, tags);
            out.insert(field.name.clone(), value);
        }
        Value::Object(out)
    }

    pub(crate) fn snapshot_field(
        &mut self,
        _name: &str,
        model: &Model,
        field: &SnapshotField,
        row: &Row,
        tags: &BTreeSet<i64>,
    ) -> Value {
        match field.kind {
            Some(SnapshotKind::CustomFields) => row
                .get("custom_field_data")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
            Some(SnapshotKind::Tags) => {
                let mut names: Vec<String> = tags
                    .iter()
                    .filter_map(|id| self.row_of("extras.tag", *id))
                    .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
                    .collect();
                names.sort();
                Value::Array(names.into_iter().map(Value::String).collect())
            }
            Some(SnapshotKind::CableTerminations) => {
                let Some(id) = Self::id_of(row, model) else {
                    return Value::Array(Vec::new());
                };
                let end = if field.name.starts_with('a') {
                    "A"
                } else {
                    "B"
                };
                let key = RelatedKey {
                    table: "dcim_cabletermination".into(),
                    column: "cable_id".into(),
                    content_type: None,
                };
                match self.lookups.related(&key, id) {
                    Found::Yes(rows) => {
                        let mut ids: Vec<i64> = rows
                            .iter()
                            .filter(|r| r.get("cable_end").and_then(Value::as_str) == Some(end))
                            .filter_map(|r| r.get("id")?.as_i64())
                            .collect();
                        ids.sort();
                        Value::Array(ids.into_iter().map(Value::from).collect())
                    }
                    Found::Missing => {
                        self.needs.related.insert((key, id));
                        Value::Array(Vec::new())
                    }
                }
            }
            None => {
                if let Some(through) = &field.m2m {
                    let Some(id) = Self::id_of(row, model) else {
                        return Value::Array(Vec::new());
                    };
                    let (Some(source), Some(target)) =
                        (&through.source_column, &through.target_column)
                    else {
                        return Value::Array(Vec::new());
                    };
                    let key = RelatedKey {
                        table: through.table.clone(),
                        column: source.clone(),
                        content_type: None,
                    };
                    return match self.lookups.related(&key, id) {
                        Found::Yes(rows) => {
                            let ids: Vec<i64> = rows
                                .iter()
                                .filter_map(|r| r.get(target)?.as_i64())
                                .collect();
                            // the targets' Meta.ordering, then pk
                            let target_model = field.model.clone().unwrap_or_default();
                            let mut targets: Vec<Row> = ids
                                .iter()
                                .filter_map(|t| self.row_of(&target_model, *t))
                                .collect();
                            let mut order = field.order_by.clone();
                            order.push(OrderBy {
                                column: "id".into(),
                                desc: false,
                            });
                            sort_rows(&mut targets, &order);
                            Value::Array(
                                targets
                                    .iter()
                                    .filter_map(|r| r.get("id").cloned())
                                    .collect(),
                            )
                        }
                        Found::Missing => {
                            self.needs.related.insert((key, id));
                            Value::Array(Vec::new())
                        }
                    };
                }
                let value = field
                    .column
                    .as_deref()
                    .and_then(|c| row.get(c))
                    .cloned()
                    .unwrap_or(Value::Null);
                snapshot_value(&value, field.format, field.scale)
            }
        }
    }
}

/// A column's value in the snapshot form.
pub(crate) fn snapshot_value(
    value: &Value,
    format: Option<SnapshotFormat>,
    scale: Option<u32>,
) -> Value {
    if value.is_null() {
        return Value::Null;
    }
    let Some(format) = format else {
        return value.clone();
    };
    match format {
        SnapshotFormat::Str
        | SnapshotFormat::Int
        | SnapshotFormat::Bool
        | SnapshotFormat::Date
        | SnapshotFormat::Json
        | SnapshotFormat::Uuid
        | SnapshotFormat::Duration
        | SnapshotFormat::Cidr
        | SnapshotFormat::File
        | SnapshotFormat::Binary
        | SnapshotFormat::ArrayList => value.clone(),
        SnapshotFormat::Datetime => format::datetime_snapshot(value),
        SnapshotFormat::Decimal => format::decimal_snapshot(value, scale),
        SnapshotFormat::Inet => format::inet(value),
        SnapshotFormat::Mac => value
            .as_str()
            .map_or(value.clone(), |s| Value::String(s.to_uppercase())),
        SnapshotFormat::Timezone if value.as_str() == Some("") => Value::Null,
        SnapshotFormat::Timezone => value.clone(),
        SnapshotFormat::ArrayJson => match value {
            Value::Array(items) if items.is_empty() || items[0].is_null() => value.clone(),
            Value::Array(items) => {
                // Django's value_to_string of each item, then json.dumps(..., ensure_ascii=False)
                let strings: Vec<Value> = items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Value::String(s.clone()),
                        other => Value::String(crate::python::json::dumps(other)),
                    })
                    .collect();
                Value::String(dumps_unicode(&Value::Array(strings)))
            }
            other => other.clone(),
        },
    }
}

/// `json.dumps(value, ensure_ascii=False)`.
pub(crate) fn dumps_unicode(value: &Value) -> String {
    let ascii = crate::python::json::dumps(value);
    // undo \uXXXX escapes of non-ASCII characters (surrogate pairs included)
    let decoded: Value = serde_json::from_str(&ascii).unwrap_or(Value::Null);
    let mut out = String::new();
    if let Value::Array(items) = decoded {
        out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            match item {
                Value::String(s) => {
                    out.push('"');
                    for c in s.chars() {
                        match c {
                            '"' => out.push_str("\\\""),
                            '\\' => out.push_str("\\\\"),
                            '\n' => out.push_str("\\n"),
                            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                            c => out.push(c),
                        }
                    }
                    out.push('"');
                }
                other => out.push_str(&crate::python::json::dumps(other)),
            }
        }
        out.push(']');
    }
    out
}

/// Puts a snapshot from NetBox's change log (stored as jsonb, so in jsonb key order) back into
/// the model's field order.
pub(crate) fn reorder(value: &Value, order: &[SnapshotField]) -> Value {
    let Value::Object(map) = value else {
        return value.clone();
    };
    if order.is_empty() {
        return value.clone();
    }
    let mut out = Map::new();
    for field in order {
        if let Some(v) = map.get(&field.name) {
            out.insert(field.name.clone(), v.clone());
        }
    }
    for (k, v) in map {
        if !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}
