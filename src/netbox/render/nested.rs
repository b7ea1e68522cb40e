//! Other objects inside an object's `data`: nested (brief) objects behind foreign keys, many-to-many
//! and reverse relations, generic relations, tags and custom fields, read as of the batch or as
//! NetBox serialized them during the request.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::values::select_value;
use super::{MAX_DEPTH, Renderer};
use crate::netbox::catalogue::{Field, FieldKind, Model, OrderBy};
use crate::netbox::format::Timestamp;
use crate::netbox::lookup::{AsOf, AsOfKey, Found, RelatedKey};

use crate::change::{Action, Row};

/// Which state of another object a nested representation shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowSource {
    /// As of the batch's snapshot (its last captured image if the batch deleted it).
    Batch,
    /// As NetBox held it when it serialized the change ([`Renderer::row_as_serialized`]).
    AsSerialized,
}

impl Renderer<'_> {
    /// The row of another object, fetched on demand.
    pub(crate) fn row_of(&mut self, model_name: &str, id: i64) -> Option<Row> {
        let model = self.catalogue.model(model_name)?;
        match self.lookups.row(&model.table, id) {
            Found::Yes(Some(row)) => Some(row.clone()),
            Found::Yes(None) => {
                // Gone by the batch's end: deleted in the batch (a cascade), so take its last image.
                let ct = self.netbox.content_type_id(model_name)?;
                if !self.lookups.deleted_checked(ct, id) {
                    self.needs.deleted.insert((ct, id));
                }
                None
            }
            Found::Missing => {
                self.needs.rows.insert((model.table.clone(), id));
                None
            }
        }
    }

    /// A nested (brief, restricted or variant) representation of another object, in the state
    /// `source` says.
    pub(crate) fn nested(
        &mut self,
        model_name: &str,
        id: i64,
        spec: &Field,
        depth: usize,
        source: RowSource,
    ) -> Value {
        if depth >= MAX_DEPTH {
            return Value::Null;
        }
        let Some(model) = self.catalogue.model(model_name) else {
            return self.unrenderable(
                model_name,
                spec,
                &format!("the nested object {model_name} {id} is of a model the catalogue lacks"),
            );
        };
        let row = match source {
            RowSource::Batch => self.row_of(model_name, id),
            RowSource::AsSerialized => self.row_as_serialized(model_name, id),
        };
        let Some(row) = row else {
            return Value::Null;
        };
        let fields = nested_fields(model, spec);
        self.nested_row(model_name, model, &row, &fields, depth)
    }

    /// Another model's row serialized with `fields`, one level deeper than `depth`: the one
    /// builder behind every nested object.
    pub(crate) fn nested_row(
        &mut self,
        model_name: &str,
        model: &Model,
        row: &Row,
        fields: &[Field],
        depth: usize,
    ) -> Value {
        Value::Object(self.serialize(model_name, model, fields, row, &BTreeSet::new(), depth + 1))
    }

    /// [`Self::nested_row`] for each of `rows`.
    pub(crate) fn nested_rows(
        &mut self,
        model_name: &str,
        model: &Model,
        rows: &[Row],
        fields: &[Field],
        depth: usize,
    ) -> Vec<Value> {
        rows.iter()
            .map(|r| self.nested_row(model_name, model, r, fields, depth))
            .collect()
    }

    /// Another object's row as it was when NetBox serialized the change being rendered: the
    /// capture's image of it before its first change after that moment in the same
    /// transaction, or the row as of the batch when it did not change later.
    pub(crate) fn row_as_serialized(&mut self, model_name: &str, id: i64) -> Option<Row> {
        let ct = self.netbox.content_type_id(model_name);
        let (Some(ct), txid) = (ct, self.context.txid) else {
            return self.row_of(model_name, id);
        };
        if txid == 0 {
            return self.row_of(model_name, id);
        }
        let key = AsOfKey {
            content_type_id: ct,
            object_id: id,
            txid,
            after: self.context.serialized_after,
        };
        match self.lookups.as_of(&key) {
            Found::Yes(AsOf::Unchanged) => self.row_of(model_name, id),
            Found::Yes(AsOf::Absent) => None,
            Found::Yes(AsOf::Row(row)) => Some(row.clone()),
            Found::Missing => {
                self.needs.as_of.insert(key);
                None
            }
        }
    }

    pub(crate) fn m2m(&mut self, field: &Field, id: i64, depth: usize) -> Value {
        let (Some(through), Some(target)) = (&field.through, field.model.as_deref()) else {
            return Value::Array(Vec::new());
        };
        let (Some(source), Some(target_column)) = (&through.source_column, &through.target_column)
        else {
            return Value::Array(Vec::new());
        };
        let key = RelatedKey {
            table: through.table.clone(),
            column: source.clone(),
            content_type: None,
        };
        let target_ids: Vec<i64> = match self.deleted_links(field, depth) {
            Some(ids) => ids,
            None => match self.lookups.related(&key, id) {
                Found::Yes(rows) => rows
                    .iter()
                    .filter_map(|l| l.get(target_column)?.as_i64())
                    .collect(),
                Found::Missing => {
                    self.needs.related.insert((key, id));
                    return Value::Array(Vec::new());
                }
            },
        };
        let mut targets: Vec<Row> = target_ids
            .into_iter()
            .filter_map(|t| self.row_of(target, t))
            .collect();
        let Some(model) = self.catalogue.model(target) else {
            return Value::Array(Vec::new());
        };
        sort_rows(
            &mut targets,
            if field.order_by.is_empty() {
                &model.ordering
            } else {
                &field.order_by
            },
        );
        if let Some(render_as) = field.render_as {
            return Value::Array(
                targets
                    .iter()
                    .filter_map(|r| r.get(render_as.column()).cloned())
                    .collect(),
            );
        }
        let fields = nested_fields(model, field);
        Value::Array(self.nested_rows(target, model, &targets, &fields, depth))
    }

    /// For a deleted object's own many-to-many field: the linked ids from NetBox's change log.
    /// The database deletes the link rows with the object, in the same transaction; NetBox
    /// serialized the object before that, and logged the links in its prechange snapshot. A
    /// model without change logging has none: the capture's images of the deleted link rows
    /// (`netbox_outbox.watch_link`) stand in for it.
    pub(crate) fn deleted_links(&self, field: &Field, depth: usize) -> Option<Vec<i64>> {
        if depth > 0 || self.context.action != Action::Deleted {
            return None;
        }
        if let Some(prechange) = self.context.prechange {
            let ids = prechange.get(&field.name)?.as_array()?;
            return Some(ids.iter().filter_map(Value::as_i64).collect());
        }
        let through = field.through.as_ref()?;
        let target = through.target_column.as_deref()?;
        let mut links = self
            .context
            .removed_links
            .iter()
            .filter(|l| l.table == through.table)
            .peekable();
        links.peek()?;
        Some(
            links
                .filter_map(|l| l.row.get(target).and_then(Value::as_i64))
                .collect(),
        )
    }

    pub(crate) fn content_types(&mut self, field: &Field, id: i64, depth: usize) -> Value {
        let Some(through) = &field.through else {
            return Value::Array(Vec::new());
        };
        let (Some(source), Some(target_column)) = (&through.source_column, &through.target_column)
        else {
            return Value::Array(Vec::new());
        };
        // a deleted object's own links: from NetBox's change log, as for `m2m`
        let ct_ids: Vec<i64> = match self.deleted_links(field, depth) {
            Some(ids) => ids,
            None => {
                let key = RelatedKey {
                    table: through.table.clone(),
                    column: source.clone(),
                    content_type: None,
                };
                match self.lookups.related(&key, id) {
                    Found::Yes(rows) => rows
                        .iter()
                        .filter_map(|r| r.get(target_column)?.as_i64())
                        .collect(),
                    Found::Missing => {
                        self.needs.related.insert((key, id));
                        return Value::Array(Vec::new());
                    }
                }
            }
        };
        let mut names: Vec<String> = ct_ids
            .into_iter()
            .filter_map(|ct| self.netbox.object_type(ct as i32))
            .collect();
        names.sort();
        Value::Array(names.into_iter().map(Value::String).collect())
    }

    /// A generic foreign key: the target's nested representation.
    pub(crate) fn gfk(
        &mut self,
        row: &Row,
        ct_column: &str,
        id_column: &str,
        spec: &Field,
        depth: usize,
        source: RowSource,
    ) -> Value {
        let (Some(ct), Some(id)) = (
            row.get(ct_column).and_then(Value::as_i64),
            row.get(id_column).and_then(Value::as_i64),
        ) else {
            return Value::Null;
        };
        let Some(name) = self.netbox.object_type(ct as i32) else {
            return Value::Null;
        };
        let bare = Field {
            fields: None,
            variant: None,
            ..spec.clone()
        };
        self.nested(&name, id, &bare, depth, source)
    }

    /// The full tag objects, ordered by weight then name.
    pub(crate) fn tags(&mut self, ids: &BTreeSet<i64>) -> Value {
        let mut rows: Vec<Row> = ids
            .iter()
            .filter_map(|id| self.row_of("extras.tag", *id))
            .collect();
        rows.sort_by(|a, b| {
            let w = |r: &Row| r.get("weight").and_then(Value::as_i64).unwrap_or(1000);
            let n = |r: &Row| {
                r.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            w(a).cmp(&w(b)).then_with(|| n(a).cmp(&n(b)))
        });
        let Some(model) = self.catalogue.model("extras.tag") else {
            return Value::Array(Vec::new());
        };
        let fields: Vec<Field> = model
            .variants
            .get("NestedTagSerializer")
            .cloned()
            .unwrap_or_else(|| model.brief.clone());
        Value::Array(self.nested_rows("extras.tag", model, &rows, &fields, MAX_DEPTH - 2))
    }

    /// Every active custom field of the model, in NetBox's order, unset ones as null.
    pub(crate) fn custom_fields(&mut self, name: &str, row: &Row, depth: usize) -> Value {
        let Some(ct) = self.netbox.content_type_id(name) else {
            return Value::Object(Map::new());
        };
        let stored = row
            .get("custom_field_data")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let fields: Vec<_> = self.netbox.custom_fields_of(ct).cloned().collect();
        let mut out = Map::new();
        for cf in fields {
            let raw = stored.get(&cf.name).cloned().unwrap_or(Value::Null);
            let value = if raw.is_null() {
                Value::Null
            } else {
                match cf.kind.as_str() {
                    "select" => select_value(&cf.choices, &raw),
                    "multiselect" => match &raw {
                        Value::Array(items) => Value::Array(
                            items.iter().map(|v| select_value(&cf.choices, v)).collect(),
                        ),
                        other => other.clone(),
                    },
                    "object" | "multiobject" => {
                        let target = cf
                            .related_object_type_id
                            .and_then(|t| self.netbox.object_type(t));
                        match target {
                            None => Value::Null,
                            Some(target) => {
                                self.custom_object(&target, &raw, cf.kind == "multiobject", depth)
                            }
                        }
                    }
                    "datetime" => match raw.as_str().and_then(Timestamp::parse) {
                        Some(ts) => Value::String(ts.rest()),
                        None => raw,
                    },
                    _ => raw,
                }
            };
            out.insert(cf.name.clone(), value);
        }
        Value::Object(out)
    }

    pub(crate) fn custom_object(
        &mut self,
        target: &str,
        raw: &Value,
        many: bool,
        depth: usize,
    ) -> Value {
        let spec = Field {
            kind: FieldKind::Fk,
            model: Some(target.to_string()),
            ..Default::default()
        };
        if many {
            let ids: Vec<i64> = raw
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            let mut rows: Vec<(i64, Row)> = ids
                .iter()
                .filter_map(|id| Some((*id, self.row_of(target, *id)?)))
                .collect();
            if let Some(model) = self.catalogue.model(target) {
                let mut only: Vec<Row> = rows.drain(..).map(|(_, r)| r).collect();
                sort_rows(&mut only, &model.ordering);
                let fields = nested_fields(model, &spec);
                return Value::Array(self.nested_rows(target, model, &only, &fields, depth));
            }
            Value::Array(Vec::new())
        } else {
            match raw.as_i64() {
                Some(id) => self.nested(target, id, &spec, depth, RowSource::Batch),
                None => Value::Null,
            }
        }
    }

    /// Reverse relations (rows of another table pointing here).
    pub(crate) fn related(&mut self, name: &str, field: &Field, id: i64, depth: usize) -> Value {
        let Some(model_name) = field.model.as_deref() else {
            return self.unrenderable(name, field, "a `related` field without `model`");
        };
        let Some(model) = self.catalogue.model(model_name) else {
            return self.unrenderable(
                name,
                field,
                &format!("its rows are of {model_name}, a model the catalogue lacks"),
            );
        };
        let key = match (&field.fk_column, &field.ct_column, &field.id_column) {
            (Some(fk), _, _) => RelatedKey {
                table: model.table.clone(),
                column: fk.clone(),
                content_type: None,
            },
            (None, Some(ct_col), Some(id_col)) => {
                let Some(ct) = self.netbox.content_type_id(name) else {
                    return Value::Null;
                };
                RelatedKey {
                    table: model.table.clone(),
                    column: id_col.clone(),
                    content_type: Some((ct_col.clone(), ct)),
                }
            }
            _ => {
                return self.unrenderable(
                    name,
                    field,
                    "a `related` field without `fk_column` or `ct_column`/`id_column`",
                );
            }
        };
        let mut rows = match self.lookups.related(&key, id) {
            Found::Yes(rows) => rows.to_vec(),
            Found::Missing => {
                self.needs.related.insert((key, id));
                Vec::new()
            }
        };
        sort_rows(
            &mut rows,
            if field.order_by.is_empty() {
                &model.ordering
            } else {
                &field.order_by
            },
        );
        let render = field.render.as_deref();
        let fields: Vec<Field> = match render {
            Some(r) if !r.item_fields.is_empty() => r.item_fields.clone(),
            Some(r) => nested_fields(model, r),
            None => nested_fields(model, field),
        };
        let items: Vec<Value> = self.nested_rows(model_name, model, &rows, &fields, depth);
        if field.many == Some(false) {
            items.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(items)
        }
    }
}

/// The fields of a nested representation: a named variant, the serializer restricted to the
/// listed fields (in the serializer's order, counts dropped), or the brief fields.
pub(crate) fn nested_fields(model: &Model, spec: &Field) -> Vec<Field> {
    if let Some(variant) = spec.variant.as_deref()
        && let Some(fields) = model.variants.get(variant)
    {
        return fields.clone();
    }
    if let Some(names) = &spec.fields {
        return model
            .serializer
            .iter()
            .filter(|f| names.contains(&f.name) && f.kind != FieldKind::Count)
            .cloned()
            .collect();
    }
    model.brief.clone()
}

/// Sorts rows by a model ordering (ascending or descending per column; nulls last).
pub(crate) fn sort_rows(rows: &mut [Row], order: &[OrderBy]) {
    rows.sort_by(|a, b| {
        for o in order {
            let (x, y) = (
                a.get(&o.column).unwrap_or(&Value::Null),
                b.get(&o.column).unwrap_or(&Value::Null),
            );
            let ord = match (x, y) {
                (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
                (Value::Null, _) => std::cmp::Ordering::Greater,
                (_, Value::Null) => std::cmp::Ordering::Less,
                _ => crate::python::value::cmp(x, y).unwrap_or(std::cmp::Ordering::Equal),
            };
            let ord = if o.desc { ord.reverse() } else { ord };
            if ord != std::cmp::Ordering::Equal {
                return ord;
            }
        }
        std::cmp::Ordering::Equal
    });
}
