//! Rendering an object as NetBox 4.7.3 does in a webhook: `data` in the form of its REST
//! serializer (reference docs 7), and `snapshots` in the form of `serialize_object` (docs 8).
//!
//! Rendering is synchronous and reads only [`Lookups`]; whatever it lacks it records in
//! [`Needs`]. [`render`] runs passes, fetching what the previous pass lacked, until nothing is
//! missing (nesting is shallow: a few passes suffice).

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use tokio_postgres::GenericClient;

use super::catalogue::{Catalogue, Field, Model, OrderBy, SnapshotField, catalogue};
use super::config_context::{self, Scope};
use super::format::{self, Timestamp};
use super::lookup::{AsOf, AsOfKey, DeletedKey, Found, Lookups, Needs, RelatedKey};
use super::{Netbox, display};
use crate::assemble::history::{Action, Row, TxChange};

/// An event's `data` and `snapshots`.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub data: Map<String, Value>,
    pub snapshots: Value,
}

/// How many passes rendering may take before giving up on what is still missing.
const MAX_PASSES: usize = 8;

/// Renders data and snapshots for each change.
pub async fn render<'c>(
    client: &impl GenericClient,
    netbox: &Netbox,
    batch_txid_floor: i64,
    changes: impl Iterator<Item = &'c TxChange>,
) -> Result<Vec<Rendered>, tokio_postgres::Error> {
    let changes: Vec<&TxChange> = changes.collect();
    let mut lookups = Lookups::new(batch_txid_floor);
    let mut pass = 0;
    loop {
        let mut needs = Needs::default();
        let out: Vec<Rendered> = changes
            .iter()
            .map(|change| {
                let mut r = Renderer {
                    netbox,
                    catalogue: catalogue(),
                    lookups: &lookups,
                    needs: &mut needs,
                    context: ChangeContext::of(change),
                };
                r.change(change)
            })
            .collect();
        pass += 1;
        if needs.is_empty() || pass >= MAX_PASSES {
            return Ok(out);
        }
        lookups.fetch(client, needs, |ct| netbox.table(ct)).await?;
    }
}

/// One rendering pass over the cache.
pub struct Renderer<'a> {
    pub netbox: &'a Netbox,
    pub catalogue: &'a Catalogue,
    pub lookups: &'a Lookups,
    pub needs: &'a mut Needs,
    pub context: ChangeContext<'a>,
}

/// The change being rendered, for what NetBox serialized at a moment of its request rather than
/// at its end.
#[derive(Debug, Clone, Copy)]
pub struct ChangeContext<'a> {
    /// The transaction (0: none, nothing was captured).
    pub txid: i64,
    pub action: Action,
    /// The captured change after which the related objects NetBox nests are shown as they
    /// were. NetBox serializes the objects of a request when it ends, from its in-memory
    /// copies, whose related objects are mostly those loaded when the request first saved the
    /// object: a new cable's terminations before the cable was attached to them, the interface
    /// of a new MAC address before the MAC became its primary. So: the object's first change
    /// in the transaction; for a delete, the start of the transaction (NetBox serializes a
    /// deleted object before the deletion cascades).
    pub serialized_after: i64,
    /// NetBox's own snapshot of the object before the change, from its change log.
    pub prechange: Option<&'a Value>,
    /// The object's row before the transaction (None for a create).
    pub pre_row: Option<&'a Row>,
}

impl<'a> ChangeContext<'a> {
    pub fn of(change: &'a TxChange) -> Self {
        ChangeContext {
            txid: change.txid,
            action: change.action,
            serialized_after: match change.action {
                Action::Deleted => 0,
                _ => change.seq,
            },
            prechange: change.changelog.last().and_then(|e| e.prechange()),
            pre_row: change.pre_row.as_ref(),
        }
    }
}

/// How deep nested objects may go (NetBox's nested serializers nest twice at most).
const MAX_DEPTH: usize = 4;

impl Renderer<'_> {
    fn change(&mut self, change: &TxChange) -> Rendered {
        let name = self
            .netbox
            .object_type(change.content_type_id)
            .unwrap_or_default();
        let model = self.catalogue.model(&name);
        let empty = Row::new();
        let row = change.data_row().unwrap_or(&empty);
        let data_tags = if change.action == crate::assemble::history::Action::Deleted {
            &change.pre_tags
        } else {
            &change.post_tags
        };
        let data = match model {
            Some(model) => self.serialize(&name, model, &model.serializer, row, data_tags, 0),
            None => self.generic(&name, row),
        };
        let snapshots = self.snapshots(change, &name, model);
        Rendered { data, snapshots }
    }

    // ---- data -----------------------------------------------------------------------------

    /// A serializer's fields for one row.
    pub fn serialize(
        &mut self,
        name: &str,
        model: &Model,
        fields: &[Field],
        row: &Row,
        tags: &BTreeSet<i64>,
        depth: usize,
    ) -> Map<String, Value> {
        let mut out = Map::new();
        for field in fields {
            if let Some(value) = self.field(name, model, field, row, tags, depth) {
                out.insert(field.name.clone(), value);
            }
        }
        out
    }

    fn id_of(row: &Row, model: &Model) -> Option<i64> {
        row.get(&model.pk_column).and_then(Value::as_i64)
    }

    /// One field's value, or None when the key is left out (annotation-only counts).
    fn field(
        &mut self,
        name: &str,
        model: &Model,
        field: &Field,
        row: &Row,
        tags: &BTreeSet<i64>,
        depth: usize,
    ) -> Option<Value> {
        let id = Self::id_of(row, model);
        let column = |c: &Option<String>| {
            c.as_deref()
                .and_then(|c| row.get(c))
                .cloned()
                .unwrap_or(Value::Null)
        };
        Some(match field.kind.as_str() {
            "pk" => id.map_or(Value::Null, Value::from),
            "api_url" => match (&model.api_path, id) {
                (Some(path), Some(id)) => {
                    Value::String(format!("{}{path}{id}/", self.netbox.base()))
                }
                _ => Value::Null,
            },
            "ui_url" => match (&model.ui_path, id) {
                (Some(path), Some(id)) => {
                    Value::String(format!("{}{path}{id}/", self.netbox.base()))
                }
                _ => Value::Null,
            },
            "display" => Value::String(self.display(name, model, row)),
            "value" => format_value(
                &column(&field.column),
                field.format.as_deref(),
                field.item_format.as_deref(),
            ),
            "choice" => self.choice(&column(&field.column), field.choices.as_deref()),
            "fk" => match column(&field.column).as_i64() {
                Some(target) => self.nested(field.model.as_deref()?, target, field, depth),
                None => Value::Null,
            },
            "m2m" => self.m2m(field, id?, depth),
            "content_type" => match column(&field.column).as_i64() {
                Some(ct) => self
                    .netbox
                    .object_type(ct as i32)
                    .map_or(Value::Null, Value::String),
                None => Value::Null,
            },
            "content_types" => self.content_types(field, id?),
            "gfk" => self.gfk(
                row,
                field.ct_column.as_deref()?,
                field.id_column.as_deref()?,
                field,
                depth,
            ),
            "tags" => self.tags(tags),
            "custom_fields" => self.custom_fields(name, row, depth),
            // Related-object counts come from queryset annotations NetBox applies to API updates
            // only: they cannot be known from the database, so they are left out.
            "count" => return None,
            "annotation" => match field.when_missing.as_deref() {
                Some("default") => field.default.clone().unwrap_or(Value::Null),
                Some("null") => Value::Null,
                _ => return None,
            },
            "related" => self.related(name, field, id?, depth),
            "method" => self.method(name, model, field, row, tags, depth),
            _ => Value::Null,
        })
    }

    /// A choice as `{value, label}`; blank and null as null.
    fn choice(&self, value: &Value, set: Option<&str>) -> Value {
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

    /// The row of another object, fetched on demand.
    pub fn row_of(&mut self, model_name: &str, id: i64) -> Option<Row> {
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

    /// A nested (brief, restricted or variant) representation of another object.
    pub(super) fn nested(
        &mut self,
        model_name: &str,
        id: i64,
        spec: &Field,
        depth: usize,
    ) -> Value {
        if depth >= MAX_DEPTH {
            return Value::Null;
        }
        let Some(model) = self.catalogue.model(model_name) else {
            return Value::Null;
        };
        let Some(row) = self.row_of(model_name, id) else {
            return Value::Null;
        };
        self.nested_row(model_name, model, &row, spec, depth)
    }

    /// Like [`Self::nested`], with the object as it was when NetBox serialized the change.
    fn nested_as_serialized(
        &mut self,
        model_name: &str,
        id: i64,
        spec: &Field,
        depth: usize,
    ) -> Value {
        if depth >= MAX_DEPTH {
            return Value::Null;
        }
        let Some(model) = self.catalogue.model(model_name) else {
            return Value::Null;
        };
        let Some(row) = self.row_as_serialized(model_name, id) else {
            return Value::Null;
        };
        self.nested_row(model_name, model, &row, spec, depth)
    }

    fn nested_row(
        &mut self,
        model_name: &str,
        model: &Model,
        row: &Row,
        spec: &Field,
        depth: usize,
    ) -> Value {
        let fields = nested_fields(model, spec);
        Value::Object(self.serialize(model_name, model, &fields, row, &BTreeSet::new(), depth + 1))
    }

    /// Another object's row as it was when NetBox serialized the change being rendered: the
    /// capture's image of it before its first change after that moment in the same
    /// transaction, or the row as of the batch when it did not change later.
    pub fn row_as_serialized(&mut self, model_name: &str, id: i64) -> Option<Row> {
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

    fn m2m(&mut self, field: &Field, id: i64, depth: usize) -> Value {
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
        match field.render_as.as_deref() {
            Some("pk") => {
                return Value::Array(
                    targets
                        .iter()
                        .filter_map(|r| r.get("id").cloned())
                        .collect(),
                );
            }
            Some(column) => {
                return Value::Array(
                    targets
                        .iter()
                        .filter_map(|r| r.get(column).cloned())
                        .collect(),
                );
            }
            None => {}
        }
        let fields = nested_fields(model, field);
        Value::Array(
            targets
                .iter()
                .map(|r| {
                    Value::Object(self.serialize(
                        target,
                        model,
                        &fields,
                        r,
                        &BTreeSet::new(),
                        depth + 1,
                    ))
                })
                .collect(),
        )
    }

    /// For a deleted object's own many-to-many field: the linked ids from NetBox's change log.
    /// The database deletes the link rows with the object, in the same transaction; NetBox
    /// serialized the object before that, and logged the links in its prechange snapshot.
    fn deleted_links(&self, field: &Field, depth: usize) -> Option<Vec<i64>> {
        if depth > 0 || self.context.action != Action::Deleted {
            return None;
        }
        let ids = self.context.prechange?.get(&field.name)?.as_array()?;
        Some(ids.iter().filter_map(Value::as_i64).collect())
    }

    fn content_types(&mut self, field: &Field, id: i64) -> Value {
        let Some(through) = &field.through else {
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
        match self.lookups.related(&key, id) {
            Found::Yes(rows) => {
                let mut names: Vec<String> = rows
                    .iter()
                    .filter_map(|r| r.get(target_column)?.as_i64())
                    .filter_map(|ct| self.netbox.object_type(ct as i32))
                    .collect();
                names.sort();
                Value::Array(names.into_iter().map(Value::String).collect())
            }
            Found::Missing => {
                self.needs.related.insert((key, id));
                Value::Array(Vec::new())
            }
        }
    }

    /// A generic foreign key: the target's nested representation.
    fn gfk(
        &mut self,
        row: &Row,
        ct_column: &str,
        id_column: &str,
        spec: &Field,
        depth: usize,
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
        self.nested(&name, id, &bare, depth)
    }

    /// The full tag objects, ordered by weight then name.
    fn tags(&mut self, ids: &BTreeSet<i64>) -> Value {
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
        Value::Array(
            rows.iter()
                .map(|r| {
                    Value::Object(self.serialize(
                        "extras.tag",
                        model,
                        &fields,
                        r,
                        &BTreeSet::new(),
                        MAX_DEPTH - 1,
                    ))
                })
                .collect(),
        )
    }

    /// Every active custom field of the model, in NetBox's order, unset ones as null.
    fn custom_fields(&mut self, name: &str, row: &Row, depth: usize) -> Value {
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

    fn custom_object(&mut self, target: &str, raw: &Value, many: bool, depth: usize) -> Value {
        let spec = Field {
            kind: "fk".into(),
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
                return Value::Array(
                    only.iter()
                        .map(|r| {
                            Value::Object(self.serialize(
                                target,
                                model,
                                &fields,
                                r,
                                &BTreeSet::new(),
                                depth + 1,
                            ))
                        })
                        .collect(),
                );
            }
            Value::Array(Vec::new())
        } else {
            match raw.as_i64() {
                Some(id) => self.nested(target, id, &spec, depth),
                None => Value::Null,
            }
        }
    }

    /// Reverse relations (rows of another table pointing here).
    fn related(&mut self, name: &str, field: &Field, id: i64, depth: usize) -> Value {
        let Some(model_name) = field.model.as_deref() else {
            return Value::Null;
        };
        let Some(model) = self.catalogue.model(model_name) else {
            return Value::Null;
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
            _ => return Value::Null,
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
        let items: Vec<Value> = rows
            .iter()
            .map(|r| {
                Value::Object(self.serialize(
                    model_name,
                    model,
                    &fields,
                    r,
                    &BTreeSet::new(),
                    depth + 1,
                ))
            })
            .collect();
        if field.many == Some(false) {
            items.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(items)
        }
    }

    /// Fields NetBox computes in Python, reproduced where the catalogue says how.
    fn method(
        &mut self,
        name: &str,
        model: &Model,
        field: &Field,
        row: &Row,
        tags: &BTreeSet<i64>,
        depth: usize,
    ) -> Value {
        let get = |c: &str| row.get(c).cloned().unwrap_or(Value::Null);
        let derive = field.derive.as_ref();
        let s = |k: &str| {
            derive
                .and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        match field.derive_kind() {
            Some("prefer_ipv4") => {
                let v4 = get(&s("ipv4_column").unwrap_or_default());
                let v6 = get(&s("ipv6_column").unwrap_or_default());
                let chosen = if !v6.is_null() { v6 } else { v4 };
                match (chosen.as_i64(), field.render.as_deref()) {
                    (Some(id), Some(render)) => self.nested(
                        render.model.as_deref().unwrap_or("ipam.ipaddress"),
                        id,
                        render,
                        depth,
                    ),
                    _ => Value::Null,
                }
            }
            Some("ip_family") => {
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
            Some("path_depth") => match get(&s("column").unwrap_or_default()).as_str() {
                Some(path) if !path.is_empty() => Value::from(path.split('.').count() as i64 - 1),
                _ => Value::from(0),
            },
            Some("any_truthy") => {
                let columns = derive_list(derive, "columns");
                let not_columns = derive_list(derive, "not_columns");
                let mut any = columns
                    .iter()
                    .any(|c| crate::python::value::truthy(&get(c)))
                    || not_columns
                        .iter()
                        .any(|c| !crate::python::value::truthy(&get(c)));
                if !any
                    && let Some(exists) = derive.and_then(|d| d.get("exists"))
                    && let (Some(table), Some(fk), Some(id)) = (
                        exists.get("table").and_then(Value::as_str),
                        exists.get("fk_column").and_then(Value::as_str),
                        Self::id_of(row, model),
                    )
                {
                    let key = RelatedKey {
                        table: table.to_string(),
                        column: fk.to_string(),
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
            Some("gfk_column_equals_pk") => {
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
            Some("legacy_port_mappings") => {
                let mappings: Vec<String> = get(&s("column").unwrap_or_default())
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let (protocol, ports) = legacy_port_mappings(&mappings);
                if s("part").as_deref() == Some("protocol") {
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
            Some("cable_end_terminations") => self.cable_terminations(field, row, model, depth),
            Some("cached_column") => {
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
            Some("column") => format_value(
                &get(&s("column").unwrap_or_default()),
                s("format").as_deref(),
                None,
            ),
            Some("array_length") => Value::from(
                get(&s("column").unwrap_or_default())
                    .as_array()
                    .map_or(0, Vec::len) as i64,
            ),
            Some("fk_column") => {
                let target = get(&s("fk_column").unwrap_or_default()).as_i64();
                match (target, s("model")) {
                    (Some(id), Some(target_model)) => match self.row_of(&target_model, id) {
                        Some(target_row) => format_value(
                            &target_row
                                .get(&s("column").unwrap_or_default())
                                .cloned()
                                .unwrap_or(Value::Null),
                            s("format").as_deref(),
                            None,
                        ),
                        None => Value::Null,
                    },
                    _ => Value::Null,
                }
            }
            Some("parent_bay") => self.parent_bay(field, row, depth),
            Some("generic_count") | Some("generic_first") => {
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
                if field.derive_kind() == Some("generic_count") {
                    return Value::from(rows.len() as i64);
                }
                let Some(target_name) = s("model") else {
                    return Value::Null;
                };
                let Some(target) = self.catalogue.model(&target_name) else {
                    return Value::Null;
                };
                let mut rows = rows;
                let order: Vec<OrderBy> = derive
                    .and_then(|d| d.get("order_by"))
                    .and_then(|o| serde_json::from_value(o.clone()).ok())
                    .unwrap_or_default();
                sort_rows(
                    &mut rows,
                    if order.is_empty() {
                        &target.ordering
                    } else {
                        &order
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
                        Value::Object(self.serialize(
                            &target_name,
                            target,
                            &fields,
                            first,
                            &BTreeSet::new(),
                            depth + 1,
                        ))
                    }
                    None => Value::Null,
                }
            }
            // Methods the catalogue has no recipe for, reproduced here (see cabling.rs).
            None => match field.name.as_str() {
                "link_peers"
                | "link_peers_type"
                | "connected_endpoints"
                | "connected_endpoints_type"
                | "connected_endpoints_reachable" => {
                    self.cabling(name, model, &field.name, row, depth)
                }
                _ => Value::Null,
            },
            _ => Value::Null,
        }
    }

    /// `render_config_context()` of a device or virtual machine row.
    fn config_context(&mut self, row: &Row, tags: &BTreeSet<i64>) -> Value {
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
    fn cable_terminations(
        &mut self,
        field: &Field,
        row: &Row,
        model: &Model,
        depth: usize,
    ) -> Value {
        let derive = field.derive.as_ref();
        let s = |k: &str| {
            derive
                .and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
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
        let order: Vec<OrderBy> = derive
            .and_then(|d| d.get("order_by"))
            .and_then(|o| serde_json::from_value(o.clone()).ok())
            .unwrap_or_default();
        sort_rows(&mut rows, &order);
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
            let object = self.nested_as_serialized(&object_type, target, &Field::default(), depth);
            let mut item = Map::new();
            item.insert("object_type".into(), Value::String(object_type));
            item.insert("object_id".into(), Value::from(target));
            item.insert("object".into(), object);
            out.push(Value::Object(item));
        }
        Value::Array(out)
    }

    /// Device `parent_device`: the device whose bay holds this one, plus that bay.
    fn parent_bay(&mut self, field: &Field, row: &Row, depth: usize) -> Value {
        let derive = field.derive.as_ref();
        let s = |k: &str| {
            derive
                .and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
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
        let Value::Object(mut parent) = self.nested(&device_model, parent_id, &device_spec, depth)
        else {
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
                Value::Object(self.serialize(
                    &bay_model,
                    model,
                    &fields,
                    bay,
                    &BTreeSet::new(),
                    depth + 1,
                )),
            );
        }
        Value::Object(parent)
    }

    /// `str(obj)`.
    pub fn display(&mut self, name: &str, model: &Model, row: &Row) -> String {
        display::display(self, name, model, row)
    }

    /// For models outside the catalogue: id, url, display and the row's columns.
    fn generic(&mut self, name: &str, row: &Row) -> Map<String, Value> {
        let mut out = Map::new();
        let id = row.get("id").cloned().unwrap_or(Value::Null);
        out.insert("id".into(), id.clone());
        let path = format!("{}/api/{}/", self.netbox.base(), name.replace('.', "/"));
        out.insert("url".into(), Value::String(format!("{path}{id}/")));
        out.insert(
            "display".into(),
            row.get("name")
                .cloned()
                .unwrap_or_else(|| Value::String(format!("{name} object ({id})"))),
        );
        for (k, v) in row {
            if k == "id" || k.starts_with('_') || k == "custom_field_data" {
                continue;
            }
            let key = k.strip_suffix("_id").unwrap_or(k).to_string();
            out.insert(key, v.clone());
        }
        out
    }

    // ---- snapshots ------------------------------------------------------------------------

    fn snapshots(&mut self, change: &TxChange, name: &str, model: Option<&Model>) -> Value {
        // NetBox's own change log carries its snapshots exactly; use them when it logged the change.
        if let (Some(first), Some(last)) = (change.changelog.first(), change.changelog.last()) {
            let order = model.map(|m| m.snapshot.as_slice()).unwrap_or(&[]);
            let pre = first.prechange().map_or(Value::Null, |v| reorder(v, order));
            let post = match change.action {
                crate::assemble::history::Action::Deleted => Value::Null,
                _ => last.postchange().map_or(Value::Null, |v| reorder(v, order)),
            };
            let mut out = Map::new();
            out.insert("prechange".into(), pre);
            out.insert("postchange".into(), post);
            return Value::Object(out);
        }
        let pre = change.pre_row.as_ref().map_or(Value::Null, |row| {
            self.snapshot(name, model, row, &change.pre_tags)
        });
        let post = change.post_row.as_ref().map_or(Value::Null, |row| {
            self.snapshot(name, model, row, &change.post_tags)
        });
        let mut out = Map::new();
        out.insert("prechange".into(), pre);
        out.insert("postchange".into(), post);
        Value::Object(out)
    }

    /// `serialize_object()` of a row.
    fn snapshot(
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

    fn snapshot_field(
        &mut self,
        _name: &str,
        model: &Model,
        field: &SnapshotField,
        row: &Row,
        tags: &BTreeSet<i64>,
    ) -> Value {
        match field.kind.as_deref() {
            Some("custom_fields") => row
                .get("custom_field_data")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
            Some("tags") => {
                let mut names: Vec<String> = tags
                    .iter()
                    .filter_map(|id| self.row_of("extras.tag", *id))
                    .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
                    .collect();
                names.sort();
                Value::Array(names.into_iter().map(Value::String).collect())
            }
            Some("cable_terminations") => {
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
            _ => {
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
                                field: None,
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
                snapshot_value(&value, field.format.as_deref(), field.scale)
            }
        }
    }
}

/// The fields of a nested representation: a named variant, the serializer restricted to the
/// listed fields (in the serializer's order, counts dropped), or the brief fields.
pub fn nested_fields(model: &Model, spec: &Field) -> Vec<Field> {
    if let Some(variant) = spec.variant.as_deref()
        && let Some(fields) = model.variants.get(variant)
    {
        return fields.clone();
    }
    if let Some(names) = &spec.fields {
        return model
            .serializer
            .iter()
            .filter(|f| names.contains(&f.name) && f.kind != "count")
            .cloned()
            .collect();
    }
    model.brief.clone()
}

fn derive_list(derive: Option<&Value>, key: &str) -> Vec<String> {
    derive
        .and_then(|d| d.get(key))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn select_value(choices: &[(Value, String)], value: &Value) -> Value {
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
pub fn format_value(value: &Value, format: Option<&str>, item_format: Option<&str>) -> Value {
    if value.is_null() {
        return Value::Null;
    }
    match format {
        Some("datetime") => format::datetime_rest(value),
        Some("decimal") | Some("float") => format::decimal_rest(value),
        Some("inet") => format::inet(value),
        Some("mac") => value
            .as_str()
            .map_or(value.clone(), |s| Value::String(s.to_uppercase())),
        Some("timezone") if value.as_str() == Some("") => Value::Null,
        Some("file_url") => match value.as_str() {
            Some("") | None => Value::Null,
            Some(path) => Value::String(format!("/media/{path}")),
        },
        Some("array") => match value {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| format_value(v, item_format, None))
                    .collect(),
            ),
            other => other.clone(),
        },
        Some("int_range") => int_range(value),
        _ => value.clone(),
    }
}

/// A PostgreSQL int range as text (`[1,11)`) as NetBox writes it: `[lower, upper inclusive]`.
fn int_range(value: &Value) -> Value {
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
fn legacy_port_mappings(mappings: &[String]) -> (Option<String>, Value) {
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

/// A column's value in the snapshot form.
pub fn snapshot_value(value: &Value, format: Option<&str>, scale: Option<u32>) -> Value {
    if value.is_null() {
        return Value::Null;
    }
    match format {
        Some("datetime") => format::datetime_snapshot(value),
        Some("decimal") => format::decimal_snapshot(value, scale),
        Some("inet") => format::inet(value),
        Some("mac") => value
            .as_str()
            .map_or(value.clone(), |s| Value::String(s.to_uppercase())),
        Some("timezone") if value.as_str() == Some("") => Value::Null,
        Some("array_json") => match value {
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
        _ => value.clone(),
    }
}

/// `json.dumps(value, ensure_ascii=False)`.
fn dumps_unicode(value: &Value) -> String {
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

/// Sorts rows by a model ordering (ascending or descending per column; nulls last).
pub(super) fn sort_rows(rows: &mut [Row], order: &[OrderBy]) {
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

/// Puts a snapshot from NetBox's change log (stored as jsonb, so in jsonb key order) back into
/// the model's field order.
fn reorder(value: &Value, order: &[SnapshotField]) -> Value {
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
