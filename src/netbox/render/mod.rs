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

use self::nested::RowSource;
use self::values::format_value;
use super::Netbox;
use super::catalogue::{Catalogue, Field, FieldKind, Model, WhenMissing, catalogue};
use super::lookup::{Found, Lookups, Needs};
use crate::change::{Action, RemovedLink, Row, TxChange};
use crate::db::Query;

/// An event's `data` and `snapshots`.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub data: Map<String, Value>,
    pub snapshots: Value,
    /// Why `data` or `snapshots` is not what NetBox would send, if it is not: the assembler
    /// stores a rejected delivery with this reason instead of sending it.
    pub incomplete: Option<RenderError>,
}

/// Why a change could not be rendered as NetBox would have: the model, the object and what was
/// missing. The delivery must not go out (it would carry nulls NetBox would not send).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Rows it needed were still missing after [`MAX_PASSES`] fetches.
    #[error(
        "{model} {object_id} could not be rendered: still missing after {passes} passes: \
         {missing}"
    )]
    NeedsUnmet {
        model: String,
        object_id: i64,
        passes: usize,
        missing: String,
    },
    /// A field the catalogue describes but the renderer cannot produce.
    #[error("{model} {object_id} could not be rendered: {}", problems.join("; "))]
    Unrenderable {
        model: String,
        object_id: i64,
        problems: Vec<String>,
    },
}

impl RenderError {
    /// A short label for the reason, for a metric (`netbox_outbox_render_incomplete_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            RenderError::NeedsUnmet { .. } => "needs_unmet",
            RenderError::Unrenderable { .. } => "unrenderable",
        }
    }
}

/// How many passes rendering may take before giving up on what is still missing.
const MAX_PASSES: usize = 8;

/// Renders data and snapshots for each change; a change that cannot be rendered fully carries
/// the reason in [`Rendered::incomplete`] (and is logged).
pub async fn render<'c>(
    client: &impl Query,
    netbox: &Netbox,
    batch_txid_floor: i64,
    changes: impl Iterator<Item = &'c TxChange>,
) -> Result<Vec<Rendered>, tokio_postgres::Error> {
    let changes: Vec<&TxChange> = changes.collect();
    let mut lookups = Lookups::new(batch_txid_floor);
    let mut out: Vec<Option<Rendered>> = changes.iter().map(|_| None).collect();
    // The changes a pass renders: all of them, then only those that lacked something. A change
    // that lacked nothing is final: it read only what was fetched, and a fetch only adds what
    // was not there.
    let mut todo: Vec<usize> = (0..changes.len()).collect();
    let mut pass = 0;
    loop {
        pass += 1;
        let last = pass >= MAX_PASSES;
        let these: Vec<&TxChange> = todo.iter().map(|&i| changes[i]).collect();
        let done = render_each(netbox, &lookups, &these, last.then_some(pass));
        let mut lacking = Vec::new();
        for ((i, rendered), lacked) in todo.iter().zip(done.rendered).zip(done.lacked) {
            out[*i] = Some(rendered);
            if lacked {
                lacking.push(*i);
            }
        }
        if done.needs.is_empty() || last {
            // (every change was rendered by the first pass: none is left out, none shifts)
            let out: Vec<Rendered> = out
                .into_iter()
                .map(|r| r.expect("the first pass renders every change"))
                .collect();
            for error in out.iter().filter_map(|r| r.incomplete.as_ref()) {
                tracing::warn!(reason = error.kind(), "{error}");
            }
            return Ok(out);
        }
        todo = lacking;
        lookups
            .fetch(client, done.needs, |ct| netbox.table(ct))
            .await?;
    }
}

/// One pass over every change, from what `lookups` holds, with what the pass lacked. On the
/// last pass (`last_pass`: its number), a change that still lacks something is incomplete.
#[cfg(test)]
pub(crate) fn render_all(
    netbox: &Netbox,
    lookups: &Lookups,
    changes: &[&TxChange],
    last_pass: Option<usize>,
) -> (Vec<Rendered>, Needs) {
    let done = render_each(netbox, lookups, changes, last_pass);
    (done.rendered, done.needs)
}

/// What one pass made of some changes: each one's rendering and whether it lacked something,
/// in the changes' order, and everything they lacked.
struct Pass {
    rendered: Vec<Rendered>,
    lacked: Vec<bool>,
    needs: Needs,
}

/// One pass over `changes`, each on its own from shared, read-only lookups: a large chunk is
/// split among the cores, each part in order, and put back together in order.
fn render_each(
    netbox: &Netbox,
    lookups: &Lookups,
    changes: &[&TxChange],
    last_pass: Option<usize>,
) -> Pass {
    let threads = crate::threads_for(changes.len());
    if threads <= 1 {
        return render_part(netbox, lookups, changes, last_pass);
    }
    let part = changes.len().div_ceil(threads);
    let parts: Vec<Pass> = std::thread::scope(|scope| {
        let running: Vec<_> = changes
            .chunks(part)
            .map(|part| scope.spawn(move || render_part(netbox, lookups, part, last_pass)))
            .collect();
        running
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut all = Pass {
        rendered: Vec::with_capacity(changes.len()),
        lacked: Vec::with_capacity(changes.len()),
        needs: Needs::default(),
    };
    for part in parts {
        all.rendered.extend(part.rendered);
        all.lacked.extend(part.lacked);
        merge(&mut all.needs, part.needs);
    }
    all
}

/// One part of a pass, in order, on the calling thread.
fn render_part(
    netbox: &Netbox,
    lookups: &Lookups,
    changes: &[&TxChange],
    last_pass: Option<usize>,
) -> Pass {
    let mut pass = Pass {
        rendered: Vec::with_capacity(changes.len()),
        lacked: Vec::with_capacity(changes.len()),
        needs: Needs::default(),
    };
    for change in changes {
        let mut own = Needs::default();
        let mut rendered = render_pass(netbox, lookups, &mut own, change);
        if let Some(passes) = last_pass
            && !own.is_empty()
            && rendered.incomplete.is_none()
        {
            rendered.incomplete = Some(RenderError::NeedsUnmet {
                model: object_type_name(netbox, change),
                object_id: change.object_id,
                passes,
                missing: describe(&own),
            });
        }
        pass.lacked.push(!own.is_empty());
        merge(&mut pass.needs, own);
        pass.rendered.push(rendered);
    }
    pass
}

/// One change rendered from what `lookups` holds, recording in `needs` what it lacked.
fn render_pass(
    netbox: &Netbox,
    lookups: &Lookups,
    needs: &mut Needs,
    change: &TxChange,
) -> Rendered {
    let mut r = Renderer {
        netbox,
        catalogue: catalogue(),
        lookups,
        needs,
        context: ChangeContext::of(change),
        problems: Vec::new(),
    };
    let mut rendered = r.change(change);
    if !r.problems.is_empty() {
        rendered.incomplete = Some(RenderError::Unrenderable {
            model: object_type_name(netbox, change),
            object_id: change.object_id,
            problems: std::mem::take(&mut r.problems),
        });
    }
    rendered
}

fn object_type_name(netbox: &Netbox, change: &TxChange) -> String {
    netbox
        .object_type(change.content_type_id)
        .unwrap_or_else(|| format!("content type {}", change.content_type_id))
}

fn merge(into: &mut Needs, from: Needs) {
    into.rows.extend(from.rows);
    into.related.extend(from.related);
    into.deleted.extend(from.deleted);
    into.config_contexts.extend(from.config_contexts);
    into.as_of.extend(from.as_of);
    into.deleted_in_tx.extend(from.deleted_in_tx);
    into.counts.extend(from.counts);
}

/// What `needs` lists, briefly (the first few of each sort), for a reason an operator reads.
fn describe(needs: &Needs) -> String {
    const SHOWN: usize = 3;
    fn some<T>(
        label: &str,
        items: impl ExactSizeIterator<Item = T>,
        show: impl Fn(T) -> String,
    ) -> Option<String> {
        let total = items.len();
        if total == 0 {
            return None;
        }
        let shown: Vec<String> = items.take(SHOWN).map(show).collect();
        let more = if total > SHOWN {
            format!(" and {} more", total - SHOWN)
        } else {
            String::new()
        };
        Some(format!("{label} {}{more}", shown.join(", ")))
    }
    [
        some("rows", needs.rows.iter(), |(table, id)| {
            format!("{table} id {id}")
        }),
        some("related rows", needs.related.iter(), |(key, value)| {
            format!("{} where {} = {value}", key.table, key.column)
        }),
        some("deleted rows", needs.deleted.iter(), |(ct, id)| {
            format!("content type {ct} id {id}")
        }),
        some("counts", needs.counts.iter(), |(key, value)| {
            format!("{} where {} = {value}", key.table, key.column)
        }),
        some("config contexts", needs.config_contexts.iter(), |_| {
            "of a scope".into()
        }),
        some("objects as of a change", needs.as_of.iter(), |k| {
            format!("content type {} id {}", k.content_type_id, k.object_id)
        }),
        some(
            "rows deleted in the transaction",
            needs.deleted_in_tx.iter(),
            |k| {
                format!(
                    "content type {} where {} = {}",
                    k.content_type_id, k.column, k.value
                )
            },
        ),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("; ")
}

/// One rendering pass over the cache.
pub struct Renderer<'a> {
    pub netbox: &'a Netbox,
    pub catalogue: &'a Catalogue,
    pub lookups: &'a Lookups,
    pub needs: &'a mut Needs,
    pub context: ChangeContext<'a>,
    /// What this change has that the renderer cannot produce (see [`RenderError::Unrenderable`]).
    pub problems: Vec<String>,
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
    /// Links deleted with the object, for a model without change logging (no prechange).
    pub removed_links: &'a [RemovedLink],
    /// The object's row before the transaction (None for a create).
    pub pre_row: Option<&'a Row>,
    /// NetBox's REST viewset loaded the object through its annotated queryset (a PATCH, PUT or
    /// DELETE of it through the API), so `data` has its related-object counts
    /// ([`rest_annotated`]).
    pub rest_counts: bool,
}

/// Whether NetBox's REST API made the change through a viewset that annotates counts: an
/// update or delete whose request (the plugin's) is a PATCH, PUT or DELETE of the object's API
/// detail path or its list path (a bulk update or delete). Without the plugin the request is
/// the documented fallback, a PATCH or DELETE of the object's API path, so every update and
/// delete has them.
pub fn rest_annotated(change: &TxChange, api_path: Option<&str>, base: &str) -> bool {
    if !matches!(change.action, Action::Updated | Action::Deleted) {
        return false;
    }
    let Some(text) = change.request_context.as_deref() else {
        return true;
    };
    let Ok(Value::Object(request)) = serde_json::from_str::<Value>(text) else {
        return true;
    };
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let path = request.get("path").and_then(Value::as_str).unwrap_or("");
    let Some(list) = api_path else {
        return false;
    };
    let list = format!("{base}{list}");
    matches!(method, "PATCH" | "PUT" | "DELETE")
        && (path == list || path == format!("{list}{}/", change.object_id))
}

/// Where the related objects an object nests directly come from. NetBox nests them from the
/// in-memory copies it serialized with (see [`ChangeContext::serialized_after`]); for most
/// objects those equal the rows as of the batch, but a signal that runs after the serialization
/// and changes them with `QuerySet.update()` makes them differ: a new cable termination's object
/// before the signal attaches the cable to it (`cable` null, `_occupied` false), a deleted
/// wireless link's interfaces before the signal detaches them (`_occupied` true).
pub(crate) fn related_source(name: &str, action: Action, depth: usize) -> RowSource {
    match (name, action) {
        ("dcim.cabletermination", Action::Created | Action::Deleted)
        | ("wireless.wirelesslink", Action::Deleted)
            if depth == 0 =>
        {
            RowSource::AsSerialized
        }
        _ => RowSource::Batch,
    }
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
            removed_links: &change.removed_links,
            pre_row: change.pre_row.as_ref(),
            rest_counts: false,
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
        self.context.rest_counts = rest_annotated(
            change,
            model.and_then(|m| m.api_path.as_deref()),
            &self.netbox.base(),
        );
        let data = match model {
            Some(model) => self.serialize(&name, model, &model.serializer, row, data_tags, 0),
            None => self.generic(&name, row),
        };
        let snapshots = self.snapshots(change, &name, model);
        Rendered {
            data,
            snapshots,
            incomplete: None,
        }
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
        Some(match field.kind {
            FieldKind::Pk => id.map_or(Value::Null, Value::from),
            FieldKind::ApiUrl => match (&model.api_path, id) {
                (Some(path), Some(id)) => {
                    Value::String(format!("{}{path}{id}/", self.netbox.base()))
                }
                _ => Value::Null,
            },
            FieldKind::UiUrl => match (&model.ui_path, id) {
                (Some(path), Some(id)) => {
                    Value::String(format!("{}{path}{id}/", self.netbox.base()))
                }
                _ => Value::Null,
            },
            FieldKind::Display => Value::String(self.display(name, model, row)),
            FieldKind::Value => {
                format_value(&column(&field.column), field.format, field.item_format)
            }
            FieldKind::Choice => self.choice(&column(&field.column), field.choices.as_deref()),
            FieldKind::Fk => match column(&field.column).as_i64() {
                Some(target) => match field.model.as_deref() {
                    Some(target_model) => {
                        let source = related_source(name, self.context.action, depth);
                        self.nested(target_model, target, field, depth, source)
                    }
                    None => self.unrenderable(name, field, "an `fk` without `model`"),
                },
                None => Value::Null,
            },
            FieldKind::M2m => self.m2m(field, id?, depth),
            FieldKind::ContentType => match column(&field.column).as_i64() {
                Some(ct) => self
                    .netbox
                    .object_type(ct as i32)
                    .map_or(Value::Null, Value::String),
                None => Value::Null,
            },
            FieldKind::ContentTypes => self.content_types(field, id?, depth),
            FieldKind::Gfk => match (field.ct_column.as_deref(), field.id_column.as_deref()) {
                (Some(ct_column), Some(id_column)) => {
                    let source = related_source(name, self.context.action, depth);
                    self.gfk(row, ct_column, id_column, field, depth, source)
                }
                _ => self.unrenderable(name, field, "a `gfk` without `ct_column`/`id_column`"),
            },
            FieldKind::Tags => self.tags(tags),
            FieldKind::CustomFields => self.custom_fields(name, row, depth),
            // Related-object counts come from the queryset annotations of NetBox's REST
            // viewsets: present for an API update or delete (counted from the database, as
            // NetBox counts them), absent otherwise.
            FieldKind::Count if depth == 0 && self.context.rest_counts => self.count(field, id?)?,
            FieldKind::Count => return None,
            FieldKind::Annotation => match field.when_missing {
                Some(WhenMissing::Default) => field.default.clone().unwrap_or(Value::Null),
                Some(WhenMissing::Omit) | None => return None,
            },
            FieldKind::Related => self.related(name, field, id?, depth),
            FieldKind::Method => self.method(name, model, field, row, tags, depth),
            // refused as fields when the catalogue loads (Catalogue::check)
            FieldKind::Nested
            | FieldKind::NestedMany
            | FieldKind::GenericObjects
            | FieldKind::MappingList => {
                self.unrenderable(name, field, "a render shape used as a field")
            }
        })
    }

    /// A related-object count: the rows of the field's `table` whose `fk_column` is `id`, as
    /// NetBox's `count_related()` annotation counts them; None until fetched.
    fn count(&mut self, field: &Field, id: i64) -> Option<Value> {
        // both are there: a count without them is refused when the catalogue loads
        let (table, column) = (field.table.as_ref()?, field.fk_column.as_ref()?);
        let key = crate::netbox::lookup::CountKey {
            table: table.clone(),
            column: column.clone(),
        };
        match self.lookups.count(&key, id) {
            Found::Yes(n) => Some(Value::from(n)),
            Found::Missing => {
                self.needs.counts.insert((key, id));
                Some(Value::from(0))
            }
        }
    }

    /// Records that a field of the change cannot be rendered (which fails the change: see
    /// [`RenderError`]) and gives the null that stands in for it meanwhile.
    pub(crate) fn unrenderable(&mut self, model: &str, field: &Field, why: &str) -> Value {
        self.problems.push(if field.name.is_empty() {
            format!("{model}: {why}")
        } else {
            format!("{model} field {}: {why}", field.name)
        });
        Value::Null
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

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::SystemTime;

    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_documented_in_memory_relations_are_shown_as_serialized() {
        use super::nested::RowSource::{AsSerialized, Batch};
        assert_eq!(
            related_source("dcim.cabletermination", Action::Created, 0),
            AsSerialized
        );
        assert_eq!(
            related_source("wireless.wirelesslink", Action::Deleted, 0),
            AsSerialized
        );
        // nested deeper, other actions and other models: as of the batch
        assert_eq!(
            related_source("dcim.cabletermination", Action::Created, 1),
            Batch
        );
        assert_eq!(
            related_source("dcim.cabletermination", Action::Deleted, 0),
            AsSerialized
        );
        assert_eq!(
            related_source("wireless.wirelesslink", Action::Created, 0),
            Batch
        );
        assert_eq!(related_source("dcim.interface", Action::Created, 0), Batch);
    }

    const DEVICE: i32 = 10;
    const FRONT_PORT: i32 = 11;
    const SITE: i32 = 12;

    /// A NetBox that knows two content types and nothing else.
    fn netbox() -> Netbox {
        let mut netbox = Netbox::new(crate::config::Config::defaults().netbox);
        netbox.content_types = HashMap::from([
            (DEVICE, "dcim.device".to_string()),
            (FRONT_PORT, "dcim.frontport".to_string()),
        ]);
        netbox.by_name = netbox
            .content_types
            .iter()
            .map(|(id, name)| (name.clone(), *id))
            .collect();
        netbox.watched = HashSet::from([DEVICE, FRONT_PORT]);
        netbox
    }

    fn created(content_type_id: i32, row: Value) -> TxChange {
        let Value::Object(row) = row else {
            unreachable!()
        };
        TxChange {
            txid: 0,
            content_type_id,
            object_id: row["id"].as_i64().unwrap(),
            seq: 1,
            committed_at: SystemTime::now(),
            action: Action::Created,
            pre_row: None,
            post_row: Some(row),
            deleted_row: None,
            pre_tags: BTreeSet::new(),
            post_tags: BTreeSet::new(),
            changelog: Vec::new(),
            row_changes: 1,
            tag_changes: 0,
            request_context: None,
            db_user: "netbox".into(),
            removed_links: Vec::new(),
        }
    }

    /// A chunk large enough to be split among threads renders exactly as each change does
    /// alone, in the chunk's order, and lacks what they lack.
    #[test]
    fn a_chunk_split_among_threads_renders_as_each_change_alone() {
        let netbox = netbox();
        let changes: Vec<TxChange> = (1..=300)
            .map(|i| match i % 3 {
                0 => created(
                    FRONT_PORT,
                    json!({"id": i, "name": format!("fp{i}"), "device_id": i / 3, "type": "8p8c",
                           "positions": 1, "custom_field_data": {}}),
                ),
                _ => created(
                    DEVICE,
                    json!({"id": i, "name": format!("sw{i}"), "site_id": i % 7, "role_id": 4,
                           "device_type_id": 5, "status": "active", "custom_field_data": {}}),
                ),
            })
            .collect();
        let changes: Vec<&TxChange> = changes.iter().collect();
        let lookups = Lookups::new(0);

        let together = render_each(&netbox, &lookups, &changes, None);
        assert_eq!(together.rendered.len(), changes.len());
        let mut needs = Needs::default();
        for (i, change) in changes.iter().enumerate() {
            let alone = render_part(&netbox, &lookups, &[change], None);
            assert_eq!(
                format!("{:?}", together.rendered[i]),
                format!("{:?}", alone.rendered[0]),
                "change {i}"
            );
            assert_eq!(together.lacked[i], alone.lacked[0], "change {i}");
            merge(&mut needs, alone.needs);
        }
        assert_eq!(format!("{:?}", together.needs), format!("{needs:?}"));
    }

    #[test]
    fn a_render_whose_needs_cannot_be_met_reports_incomplete() {
        let netbox = netbox();
        // the device's site (and role, type) are rows the lookups never got
        let device = created(
            DEVICE,
            json!({"id": 7, "name": "sw1", "site_id": 3, "role_id": 4, "device_type_id": 5,
                   "status": "active", "custom_field_data": {}}),
        );
        let lookups = Lookups::new(0);

        let (rendered, needs) = render_all(&netbox, &lookups, &[&device], None);
        assert!(!needs.is_empty());
        assert_eq!(
            rendered[0].incomplete, None,
            "a pass before the last one may lack rows"
        );

        let (rendered, _) = render_all(&netbox, &lookups, &[&device], Some(MAX_PASSES));
        let error = rendered[0].incomplete.clone().expect("incomplete");
        assert_eq!(error.kind(), "needs_unmet");
        let reason = error.to_string();
        for wanted in ["dcim.device 7", "after 8 passes", "dcim_site id 3"] {
            assert!(reason.contains(wanted), "{wanted:?} not in {reason:?}");
        }
    }

    #[test]
    fn a_front_ports_mappings_are_read_from_the_port_mapping_table() {
        let netbox = netbox();
        // FrontPort `rear_ports` lists dcim.portmapping rows (a catalogue model since the
        // generator follows mapping lists; it used to be refused as unrenderable)
        let port = created(
            FRONT_PORT,
            json!({"id": 9, "name": "fp1", "device_id": 7, "type": "8p8c", "positions": 1,
                   "custom_field_data": {}}),
        );
        let (rendered, needs) = render_all(&netbox, &Lookups::new(0), &[&port], None);
        assert_eq!(rendered[0].incomplete, None);
        assert!(
            needs
                .related
                .iter()
                .any(|(key, id)| key.table == "dcim_portmapping"
                    && key.column == "front_port_id"
                    && *id == 9),
            "{needs:?}"
        );
    }

    /// A site updated through the API has the counts NetBox's viewset annotates, counted from
    /// the database (the rows of each count's table pointing at it), in the serializer's order;
    /// created, it has none.
    #[test]
    fn a_rest_update_has_its_counts_from_the_database() {
        let mut netbox = netbox();
        netbox.content_types.insert(SITE, "dcim.site".into());
        netbox.by_name.insert("dcim.site".into(), SITE);
        netbox.watched.insert(SITE);
        let row = json!({"id": 5, "name": "s1", "slug": "s1", "status": "active",
                         "custom_field_data": {}, "time_zone": ""});
        let updated = with_request(created(SITE, row.clone()), Action::Updated, None);
        let (_, needs) = render_all(&netbox, &Lookups::new(0), &[&updated], None);
        let wanted: Vec<(String, String)> = needs
            .counts
            .iter()
            .filter(|(_, id)| *id == 5)
            .map(|(k, _)| (k.table.clone(), k.column.clone()))
            .collect();
        for pair in [
            ("dcim_device", "site_id"),
            ("dcim_rack", "site_id"),
            ("ipam_prefix", "_site_id"),
            ("circuits_circuittermination", "_site_id"),
        ] {
            assert!(
                wanted.contains(&(pair.0.to_string(), pair.1.to_string())),
                "{pair:?} in {wanted:?}"
            );
        }
        let mut lookups = Lookups::new(0);
        for (key, id) in &needs.counts {
            let n = if key.table == "dcim_device" { 3 } else { 0 };
            lookups.insert_count(key.clone(), *id, n);
        }
        let (rendered, _) = render_all(&netbox, &lookups, &[&updated], None);
        let data = &rendered[0].data;
        assert_eq!(data["device_count"], json!(3));
        assert_eq!(data["rack_count"], json!(0));
        let keys: Vec<&String> = data.keys().collect();
        let at = |k: &str| keys.iter().position(|x| *x == k).unwrap();
        assert!(at("circuit_count") < at("device_count") && at("device_count") < at("vlan_count"));

        let (rendered, needs) = render_all(&netbox, &lookups, &[&created(SITE, row)], None);
        assert!(needs.counts.is_empty());
        assert!(rendered[0].data.get("device_count").is_none());
    }

    fn with_request(mut change: TxChange, action: Action, request: Option<Value>) -> TxChange {
        change.action = action;
        change.request_context = request.map(|r| r.to_string());
        change
    }

    /// NetBox's REST viewsets annotate counts on the object they load for a PATCH, PUT or
    /// DELETE of it (or of its list, in bulk); the plugin's request says which; without it the
    /// documented fallback is such a request for every update and delete.
    #[test]
    fn counts_are_rendered_for_rest_updates_and_deletes_only() {
        let site = created(DEVICE, json!({"id": 5}));
        let api = Some("/api/dcim/sites/");
        let request = |method: &str, path: &str| Some(json!({"method": method, "path": path}));
        let cases = [
            (Action::Created, None, false),
            (Action::Updated, None, true),
            (Action::Deleted, None, true),
            (Action::Created, request("POST", "/api/dcim/sites/"), false),
            (
                Action::Updated,
                request("PATCH", "/api/dcim/sites/5/"),
                true,
            ),
            (Action::Updated, request("PUT", "/api/dcim/sites/5/"), true),
            (Action::Updated, request("PATCH", "/api/dcim/sites/"), true),
            (
                Action::Deleted,
                request("DELETE", "/api/dcim/sites/5/"),
                true,
            ),
            // another object's request (a device saved with it), the UI, a script
            (
                Action::Updated,
                request("PATCH", "/api/dcim/devices/1/"),
                false,
            ),
            (
                Action::Updated,
                request("PATCH", "/api/dcim/sites/55/"),
                false,
            ),
            (
                Action::Updated,
                request("POST", "/dcim/sites/5/edit/"),
                false,
            ),
            (
                Action::Deleted,
                request("POST", "/dcim/sites/5/delete/"),
                false,
            ),
        ];
        for (action, request, want) in cases {
            let change = with_request(site.clone(), action, request.clone());
            assert_eq!(
                rest_annotated(&change, api, ""),
                want,
                "{action:?} {request:?}"
            );
        }
        let under_base = with_request(
            site,
            Action::Updated,
            request("PATCH", "/netbox/api/dcim/sites/5/"),
        );
        assert!(rest_annotated(&under_base, api, "/netbox"));
        assert!(!rest_annotated(&under_base, None, "/netbox"));
    }
}
