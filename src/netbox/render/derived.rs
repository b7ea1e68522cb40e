//! Fields NetBox computes in Python (serializer methods), reproduced where the catalogue says how:
//! derivations, config contexts, cable terminations and parent bays.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::Renderer;
use super::nested::{RowSource, nested_fields, sort_rows};
use super::values::{format_value, legacy_port_mappings};
use crate::change::{Action, Row};
use crate::netbox::catalogue::{Cabling, DeriveKind, Field, Model, PYTHON_ONLY, PortPart};
use crate::netbox::config_context::{self, Scope};
use crate::netbox::lookup::{DeletedKey, Found, RelatedKey};

impl Renderer<'_> {
    /// Fields NetBox computes in Python, reproduced where the catalogue says how.
    pub(crate) fn method(
        &mut self,
        name: &str,
        model: &Model,
        field: &Field,
        row: &Row,
        tags: &BTreeSet<i64>,
        depth: usize,
    ) -> Value {
        let get = |c: &str| row.get(c).cloned().unwrap_or(Value::Null);
        let Some(derive) = field.derive.as_ref() else {
            // Methods the catalogue has no recipe for: computed here by name, or rendered as
            // null by decision when NetBox computes them from Python objects alone (any other
            // is refused when the catalogue loads).
            if let Some(cabling) = Cabling::of(&field.name) {
                return self.cabling(name, model, cabling, row, depth);
            }
            if PYTHON_ONLY.contains(&(name, field.name.as_str())) {
                return Value::Null;
            }
            return self.unrenderable(name, field, "a `method` without a recipe");
        };
        let s = |k: &str| derive.param(k);
        match derive.kind {
            DeriveKind::PreferIpv4 => {
                let v4 = get(&s("ipv4_column").unwrap_or_default());
                let v6 = get(&s("ipv6_column").unwrap_or_default());
                let chosen = if !v6.is_null() { v6 } else { v4 };
                match (chosen.as_i64(), field.render.as_deref()) {
                    (Some(id), Some(render)) => self.nested(
                        render.model.as_deref().unwrap_or("ipam.ipaddress"),
                        id,
                        render,
                        depth,
                        RowSource::Batch,
                    ),
                    _ => Value::Null,
                }
            }
            DeriveKind::IpFamily => {
                let text = get(&s("column").unwrap_or_default());
                let family = match text.as_str() {
                    Some(t) if t.contains(':') => 6,
                    Some(_) => 4,
                    None => return Value::Null,
                };
                self.choice(
                    &Value::from(family),
                    field.render.as_ref().and_then(|r| r.choices.as_deref()),
                )
            }
            DeriveKind::PathDepth => match get(&s("column").unwrap_or_default()).as_str() {
                Some(path) if !path.is_empty() => Value::from(path.split('.').count() as i64 - 1),
                _ => Value::from(0),
            },
            DeriveKind::AnyTruthy => {
                let (columns, not_columns) = (&derive.columns, &derive.not_columns);
                let mut any = columns
                    .iter()
                    .any(|c| crate::python::value::truthy(&get(c)))
                    || not_columns
                        .iter()
                        .any(|c| !crate::python::value::truthy(&get(c)));
                if !any
                    && let Some(exists) = &derive.exists
                    && let Some(id) = Self::id_of(row, model)
                {
                    let key = RelatedKey {
                        table: exists.table.clone(),
                        column: exists.fk_column.clone(),
                        content_type: None,
                    };
                    match self.lookups.related(&key, id) {
                        Found::Yes(rows) => any = !rows.is_empty(),
                        Found::Missing => {
                            self.needs.related.insert((key, id));
                        }
                    }
                }
                Value::Bool(any)
            }
            DeriveKind::GfkColumnEqualsPk => {
                let (Some(ct_col), Some(id_col), Some(column)) =
                    (s("ct_column"), s("id_column"), s("column"))
                else {
                    return Value::Bool(false);
                };
                let (Some(ct), Some(target)) = (get(&ct_col).as_i64(), get(&id_col).as_i64())
                else {
                    return Value::Bool(false);
                };
                let Some(target_model) = self.netbox.object_type(ct as i32) else {
                    return Value::Bool(false);
                };
                // NetBox compares with the assigned object as it was when it saved this one
                // (an interface created with a MAC address gets its primary MAC afterwards)
                match self.row_as_serialized(&target_model, target) {
                    Some(target_row) => Value::Bool(
                        target_row.get(&column).and_then(Value::as_i64) == Self::id_of(row, model),
                    ),
                    None => Value::Bool(false),
                }
            }
            DeriveKind::LegacyPortMappings => {
                let mappings: Vec<String> = get(&s("column").unwrap_or_default())
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let (protocol, ports) = legacy_port_mappings(&mappings);
                if derive.part == Some(PortPart::Protocol) {
                    match protocol {
                        Some(p) => self.choice(
                            &Value::String(p),
                            field.render.as_ref().and_then(|r| r.choices.as_deref()),
                        ),
                        None => Value::Null,
                    }
                } else {
                    ports
                }
            }
            DeriveKind::CableEndTerminations => self.cable_terminations(field, row, model, depth),
            DeriveKind::CachedColumn => {
                let column = s("column").unwrap_or_default();
                // NetBox reads the cache of the copy it loaded before the change: the request's
                // own invalidation (an UPDATE in the same transaction) does not reach that copy.
                let value = match (depth, self.context.pre_row) {
                    (0, Some(pre)) => pre.get(&column).cloned().unwrap_or(Value::Null),
                    _ => get(&column),
                };
                if !value.is_null() {
                    return value;
                }
                // The cache is empty (NetBox empties it whenever the object's scope changes):
                // NetBox renders the context, and so do we.
                if field.name == "config_context" {
                    self.config_context(row, tags)
                } else {
                    Value::Object(Map::new())
                }
            }
            DeriveKind::Column => {
                format_value(&get(&s("column").unwrap_or_default()), derive.format, None)
            }
            DeriveKind::ArrayLength => Value::from(
                get(&s("column").unwrap_or_default())
                    .as_array()
                    .map_or(0, Vec::len) as i64,
            ),
            DeriveKind::FkColumn => {
                let target = get(&s("fk_column").unwrap_or_default()).as_i64();
                match (target, s("model")) {
                    (Some(id), Some(target_model)) => match self.row_of(&target_model, id) {
                        Some(target_row) => format_value(
                            &target_row
                                .get(&s("column").unwrap_or_default())
                                .cloned()
                                .unwrap_or(Value::Null),
                            derive.format,
                            None,
                        ),
                        None => Value::Null,
                    },
                    _ => Value::Null,
                }
            }
            DeriveKind::ParentBay => self.parent_bay(field, row, depth),
            DeriveKind::GenericCount | DeriveKind::GenericFirst => {
                let (Some(ct), Some(id)) =
                    (self.netbox.content_type_id(name), Self::id_of(row, model))
                else {
                    return Value::Null;
                };
                let table = s("table").or_else(|| {
                    s("model").and_then(|m| self.catalogue.model(&m).map(|mm| mm.table.clone()))
                });
                let (Some(table), Some(ct_col), Some(id_col)) =
                    (table, s("ct_column"), s("id_column"))
                else {
                    return Value::Null;
                };
                let key = RelatedKey {
                    table,
                    column: id_col,
                    content_type: Some((ct_col, ct)),
                };
                let rows = match self.lookups.related(&key, id) {
                    Found::Yes(rows) => rows.to_vec(),
                    Found::Missing => {
                        self.needs.related.insert((key, id));
                        return Value::Null;
                    }
                };
                if derive.kind == DeriveKind::GenericCount {
                    return Value::from(rows.len() as i64);
                }
                let Some(target_name) = s("model") else {
                    return Value::Null;
                };
                let Some(target) = self.catalogue.model(&target_name) else {
                    return Value::Null;
                };
                let mut rows = rows;
                sort_rows(
                    &mut rows,
                    if derive.order_by.is_empty() {
                        &target.ordering
                    } else {
                        &derive.order_by
                    },
                );
                match rows.first() {
                    Some(first) => {
                        let spec = field
                            .render
                            .as_deref()
                            .cloned()
                            .unwrap_or_else(|| field.clone());
                        let fields = nested_fields(target, &spec);
                        self.nested_row(&target_name, target, first, &fields, depth)
                    }
                    None => Value::Null,
                }
            }
        }
    }

    /// `render_config_context()` of a device or virtual machine row.
    pub(crate) fn config_context(&mut self, row: &Row, tags: &BTreeSet<i64>) -> Value {
        let scope = Scope::of(row, tags.iter().copied());
        match self.lookups.config_contexts(&scope) {
            Found::Yes(contexts) => config_context::render(contexts, row.get("local_context_data")),
            Found::Missing => {
                self.needs.config_contexts.insert(scope);
                Value::Object(Map::new())
            }
        }
    }

    /// Cable `a_terminations` / `b_terminations`: each termination as a generic object.
    pub(crate) fn cable_terminations(
        &mut self,
        field: &Field,
        row: &Row,
        model: &Model,
        depth: usize,
    ) -> Value {
        let derive = field.derive.as_ref();
        let s = |k: &str| derive.and_then(|d| d.param(k));
        let (
            Some(table),
            Some(fk),
            Some(end_column),
            Some(end),
            Some(ct_col),
            Some(id_col),
            Some(id),
        ) = (
            s("table"),
            s("fk_column"),
            s("end_column"),
            s("cable_end"),
            s("ct_column"),
            s("id_column"),
            Self::id_of(row, model),
        )
        else {
            return Value::Array(Vec::new());
        };
        let key = RelatedKey {
            table,
            column: fk,
            content_type: None,
        };
        let mut rows = match self.lookups.related(&key, id) {
            Found::Yes(rows) => rows.to_vec(),
            Found::Missing => {
                self.needs.related.insert((key, id));
                return Value::Array(Vec::new());
            }
        };
        if depth == 0 && self.context.action == Action::Deleted && rows.is_empty() {
            // NetBox serialized the cable before its terminations were deleted with it: take
            // the capture's images of the terminations deleted in the same transaction.
            let Some(ct) = self.netbox.content_type_id("dcim.cabletermination") else {
                return Value::Array(Vec::new());
            };
            let deleted = DeletedKey {
                content_type_id: ct,
                column: key.column,
                value: id,
                txid: self.context.txid,
            };
            rows = match self.lookups.deleted_in_tx(&deleted) {
                Found::Yes(rows) => rows.to_vec(),
                Found::Missing => {
                    self.needs.deleted_in_tx.insert(deleted);
                    return Value::Array(Vec::new());
                }
            };
        }
        rows.retain(|r| r.get(&end_column).and_then(Value::as_str) == Some(end.as_str()));
        sort_rows(&mut rows, derive.map_or(&[][..], |d| &d.order_by));
        let mut out = Vec::new();
        for t in rows {
            let (Some(ct), Some(target)) = (
                t.get(&ct_col).and_then(Value::as_i64),
                t.get(&id_col).and_then(Value::as_i64),
            ) else {
                continue;
            };
            let object_type = self.netbox.object_type(ct as i32).unwrap_or_default();
            // as NetBox serialized it: a new cable's terminations before they were attached
            let object = self.nested(
                &object_type,
                target,
                &Field::default(),
                depth,
                RowSource::AsSerialized,
            );
            let mut item = Map::new();
            item.insert("object_type".into(), Value::String(object_type));
            item.insert("object_id".into(), Value::from(target));
            item.insert("object".into(), object);
            out.push(Value::Object(item));
        }
        Value::Array(out)
    }

    /// Device `parent_device`: the device whose bay holds this one, plus that bay.
    pub(crate) fn parent_bay(&mut self, field: &Field, row: &Row, depth: usize) -> Value {
        let derive = field.derive.as_ref();
        let s = |k: &str| derive.and_then(|d| d.param(k));
        let (Some(table), Some(installed), Some(device_col)) =
            (s("table"), s("installed_column"), s("device_column"))
        else {
            return Value::Null;
        };
        let Some(id) = row.get("id").and_then(Value::as_i64) else {
            return Value::Null;
        };
        let key = RelatedKey {
            table,
            column: installed,
            content_type: None,
        };
        let bays = match self.lookups.related(&key, id) {
            Found::Yes(rows) => rows.to_vec(),
            Found::Missing => {
                self.needs.related.insert((key, id));
                return Value::Null;
            }
        };
        let Some(bay) = bays.first() else {
            return Value::Null;
        };
        let device_model = s("device_model").unwrap_or_else(|| "dcim.device".into());
        let bay_model = s("bay_model").unwrap_or_else(|| "dcim.devicebay".into());
        let Some(parent_id) = bay.get(&device_col).and_then(Value::as_i64) else {
            return Value::Null;
        };
        let device_spec = Field {
            variant: s("device_variant"),
            ..field.clone()
        };
        let Value::Object(mut parent) = self.nested(
            &device_model,
            parent_id,
            &device_spec,
            depth,
            RowSource::Batch,
        ) else {
            return Value::Null;
        };
        if let Some(model) = self.catalogue.model(&bay_model) {
            let bay_spec = Field {
                variant: s("bay_variant"),
                ..field.clone()
            };
            let fields = nested_fields(model, &bay_spec);
            parent.insert(
                "device_bay".into(),
                self.nested_row(&bay_model, model, bay, &fields, depth),
            );
        }
        Value::Object(parent)
    }
}
