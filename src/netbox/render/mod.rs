//! Rendering an object as NetBox 4.7.3 does in a webhook: `data` in the form of its REST
//! serializer (reference docs 7), and `snapshots` in the form of `serialize_object` (docs 8).
//!
//! Rendering is synchronous and reads only [`Lookups`]; whatever it lacks it records in
//! [`Needs`]. [`render`] runs passes, fetching what the previous pass lacked, until nothing is
//! missing (nesting is shallow: a few passes suffice).
//!
//! By concern: this file interprets the catalogue (one field at a time, [`Renderer::field`]);
//! [`nested`] renders other objects inside this one, [`derived`] the fields NetBox computes in
//! Python (with [`cabling`] for cable peers and paths), [`display`] an object's `display`
//! string, [`values`] the value forms, [`snapshot`] the `snapshots` block.

mod cabling;
mod derived;
mod display;
pub(crate) mod nested;
mod snapshot;
mod values;

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use tokio_postgres::GenericClient;

use self::nested::RowSource;
use self::values::format_value;
use super::Netbox;
use super::catalogue::{Catalogue, Field, Model, catalogue};
use super::lookup::{Lookups, Needs};
use crate::change::{Action, Row, TxChange};

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
pub(crate) const MAX_DEPTH: usize = 4;

impl Renderer<'_> {
    fn change(&mut self, change: &TxChange) -> Rendered {
        let name = self
            .netbox
            .object_type(change.content_type_id)
            .unwrap_or_default();
        let model = self.catalogue.model(&name);
        let empty = Row::new();
        let row = change.data_row().unwrap_or(&empty);
        let data_tags = if change.action == Action::Deleted {
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
                Some(target) => self.nested(
                    field.model.as_deref()?,
                    target,
                    field,
                    depth,
                    RowSource::Batch,
                ),
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
}
