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

/// `CustomFieldSerializer.get_data_type`: the JSON type of a custom field's values.
pub(crate) fn custom_field_data_type(field_type: &str) -> &'static str {
    match field_type {
        "integer" => "integer",
        "decimal" => "decimal",
        "boolean" => "boolean",
        "json" | "object" => "object",
        "multiselect" | "multiobject" => "array",
        _ => "string",
    }
}

/// The action types NetBox itself registers (`get_event_rule_action` finds them whatever plugins
/// are installed); a plugin's action type depends on NetBox's configuration.
const BUILTIN_EVENT_RULE_ACTIONS: &[&str] = &["webhook", "script", "notification"];

/// Two sets of module bay types are compatible unless both constrain and share none
/// (`Module.is_bay_compatible`, `ModuleBay.is_module_compatible`).
pub(crate) fn bay_types_compatible(bay: &BTreeSet<i64>, module_type: &BTreeSet<i64>) -> bool {
    bay.is_empty() || module_type.is_empty() || !bay.is_disjoint(module_type)
}

impl Renderer<'_> {
    /// Serializer methods without a catalogue recipe that NetBox computes from a column or a few
    /// related rows, reproduced by name. None: not one of them, or not computable from the
    /// database (then the catalogue's PYTHON_ONLY decision applies).
    fn computed_by_name(&mut self, name: &str, field: &str, row: &Row) -> Option<Value> {
        let get = |c: &str| row.get(c).cloned().unwrap_or(Value::Null);
        match (name, field) {
            ("extras.customfield", "data_type") => {
                Some(Value::from(custom_field_data_type(get("type").as_str()?)))
            }
            ("extras.customfieldchoiceset", "choices_count") => {
                // base choices are lists in NetBox's code (ISO 3166, IATA, UN/LOCODE), not rows
                if get("base_choices").as_str().is_some_and(|b| !b.is_empty()) {
                    return None;
                }
                Some(Value::from(
                    get("extra_choices").as_array().map_or(0, Vec::len) as i64,
                ))
            }
            ("extras.eventrule", "action_is_available") => BUILTIN_EVENT_RULE_ACTIONS
                .contains(&get("action_type").as_str()?)
                .then_some(Value::Bool(true)),
            ("dcim.module", "is_bay_compatible") => {
                let (Some(bay), Some(module_type)) = (
                    get("module_bay_id").as_i64(),
                    get("module_type_id").as_i64(),
                ) else {
                    return Some(Value::Bool(true));
                };
                let bay_types = self.bay_types("dcim.modulebay", bay);
                let type_types = self.bay_types("dcim.moduletype", module_type);
                Some(match (bay_types, type_types) {
                    (Some(b), Some(t)) => Value::Bool(bay_types_compatible(&b, &t)),
                    _ => Value::Null, // fetched for the next pass
                })
            }
            ("dcim.modulebay", "is_module_compatible") => {
                let id = get("id").as_i64()?;
                let key = RelatedKey {
                    table: self.catalogue.model("dcim.module")?.table.clone(),
                    column: "module_bay_id".into(),
                    content_type: None,
                };
                let module_type = match self.lookups.related(&key, id) {
                    Found::Yes(rows) => rows
                        .first()
                        .map(|m| m.get("module_type_id").and_then(Value::as_i64)),
                    Found::Missing => {
                        self.needs.related.insert((key, id));
                        return Some(Value::Null);
                    }
                };
                // no module installed, or one without a type
                let Some(Some(module_type)) = module_type else {
                    return Some(Value::Bool(true));
                };
                let bay_types = self.bay_types("dcim.modulebay", id);
                let type_types = self.bay_types("dcim.moduletype", module_type);
                Some(match (bay_types, type_types) {
                    (Some(b), Some(t)) => Value::Bool(bay_types_compatible(&b, &t)),
                    _ => Value::Null,
                })
            }
            _ => None,
        }
    }

    /// The module bay types of a module bay or module type (its `module_bay_types` relation),
    /// or None while they are fetched for the next pass.
    fn bay_types(&mut self, model: &str, id: i64) -> Option<BTreeSet<i64>> {
        let through = self
            .catalogue
            .model(model)?
            .serializer
            .iter()
            .find(|f| f.name == "module_bay_types")?
            .through
            .clone()?;
        let (source, target) = (through.source_column?, through.target_column?);
        let key = RelatedKey {
            table: through.table,
            column: source,
            content_type: None,
        };
        match self.lookups.related(&key, id) {
            Found::Yes(rows) => Some(
                rows.iter()
                    .filter_map(|r| r.get(&target).and_then(Value::as_i64))
                    .collect(),
            ),
            Found::Missing => {
                self.needs.related.insert((key, id));
                None
            }
        }
    }

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
            if let Some(value) = self.computed_by_name(name, &field.name, row) {
                return value;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_field_data_types_are_netboxs() {
        for (field_type, data_type) in [
            ("text", "string"),
            ("longtext", "string"),
            ("integer", "integer"),
            ("decimal", "decimal"),
            ("boolean", "boolean"),
            ("date", "string"),
            ("datetime", "string"),
            ("url", "string"),
            ("json", "object"),
            ("select", "string"),
            ("multiselect", "array"),
            ("object", "object"),
            ("multiobject", "array"),
        ] {
            assert_eq!(
                custom_field_data_type(field_type),
                data_type,
                "{field_type}"
            );
        }
    }

    #[test]
    fn bay_types_are_incompatible_only_when_both_constrain_and_share_none() {
        let set = |v: &[i64]| v.iter().copied().collect::<BTreeSet<i64>>();
        assert!(bay_types_compatible(&set(&[]), &set(&[])));
        assert!(bay_types_compatible(&set(&[1]), &set(&[])));
        assert!(bay_types_compatible(&set(&[]), &set(&[2])));
        assert!(bay_types_compatible(&set(&[1, 2]), &set(&[2, 3])));
        assert!(!bay_types_compatible(&set(&[1]), &set(&[2])));
    }
}
