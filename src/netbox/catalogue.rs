//! The model catalogue: what NetBox's REST serializers and snapshot encoder do for each model,
//! generated from NetBox itself by `tools/catalogue/generate.py` and embedded here as data
//! (`src/netbox/catalogue/netbox-4.7.3.json`, and for each older 4.7 release a JSON merge patch
//! of it), read into types so that a value the renderer does not know is refused when the
//! catalogue loads instead of rendering as a silent `null`. Which release's catalogue a process
//! renders with is chosen once ([`select`], from [`super::version`]). See
//! tools/catalogue/README.md for the schema.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

const EMBEDDED: &str = include_str!("catalogue/netbox-4.7.3.json");
const EMBEDDED_NAME: &str = "src/netbox/catalogue/netbox-4.7.3.json";

/// The release rendered when none was selected (tests, commands that do not read the database).
pub const DEFAULT_VERSION: &str = "4.7.3";

/// Each release's catalogue: `None` is 4.7.3's own, otherwise an RFC 7386 JSON merge patch to
/// apply to 4.7.3's (written by `tools/catalogue/versions.py`, whose list of the differences is in
/// tools/catalogue/README.md); 60 to 75 KB each instead of a 1 MB file per release.
const RELEASES: [(&str, Option<(&str, &str)>); 4] = [
    (
        "4.7.0",
        Some((
            "src/netbox/catalogue/netbox-4.7.0.patch.json",
            include_str!("catalogue/netbox-4.7.0.patch.json"),
        )),
    ),
    (
        "4.7.1",
        Some((
            "src/netbox/catalogue/netbox-4.7.1.patch.json",
            include_str!("catalogue/netbox-4.7.1.patch.json"),
        )),
    ),
    (
        "4.7.2",
        Some((
            "src/netbox/catalogue/netbox-4.7.2.patch.json",
            include_str!("catalogue/netbox-4.7.2.patch.json"),
        )),
    ),
    ("4.7.3", None),
];

/// The whole catalogue.
#[derive(Debug, Deserialize)]
pub struct Catalogue {
    pub netbox_version: String,
    #[serde(default)]
    pub models: HashMap<String, Model>,
    /// Choice sets: name to `[value, label]` pairs.
    #[serde(default)]
    pub choices: HashMap<String, Vec<(Value, String)>>,
}

/// One model (`app_label.model`).
#[derive(Debug, Deserialize)]
pub struct Model {
    pub table: String,
    #[serde(default = "default_pk")]
    pub pk_column: String,
    /// The REST list path; the detail path is this plus `<id>/`.
    pub api_path: Option<String>,
    /// The UI detail path without the id.
    pub ui_path: Option<String>,
    #[serde(default)]
    pub event_rules: bool,
    pub display: Display,
    #[serde(default)]
    pub serializer: Vec<Field>,
    #[serde(default)]
    pub brief: Vec<Field>,
    /// Other nested serializers of the model, by class name.
    #[serde(default)]
    pub variants: HashMap<String, Vec<Field>>,
    #[serde(default)]
    pub snapshot: Vec<SnapshotField>,
    /// Column name to its model field, format and choices.
    #[serde(default)]
    pub columns: HashMap<String, Column>,
    /// The model's default ordering.
    #[serde(default)]
    pub ordering: Vec<OrderBy>,
    /// Whether NetBox logs the model's changes (ChangeLoggingMixin). NetBox sends only deletes
    /// of a model that does not, and with no prechange snapshot.
    #[serde(default = "logs_changes")]
    pub change_logging: bool,
}

fn default_pk() -> String {
    "id".into()
}

fn logs_changes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
pub struct Column {
    #[serde(default)]
    pub format: Option<ColumnFormat>,
    #[serde(default)]
    pub scale: Option<u32>,
}

/// What a serializer field is (the README's "Serializer field specs").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    Pk,
    ApiUrl,
    UiUrl,
    Display,
    Value,
    Choice,
    Fk,
    M2m,
    ContentType,
    ContentTypes,
    Gfk,
    Tags,
    CustomFields,
    Count,
    Annotation,
    Related,
    Method,
    /// The kinds below only describe the shape of a `related` or `method` field's value (its
    /// `render` spec); a serializer never lists them as a field of its own.
    ///
    /// One nested object (the brief form unless `fields`/`variant` say otherwise); also the
    /// kind of the specs the renderer builds itself for nested objects.
    #[default]
    Nested,
    NestedMany,
    GenericObjects,
    MappingList,
}

impl FieldKind {
    /// Whether the kind only describes a `render` spec (see [`FieldKind::Nested`]).
    pub fn is_render_shape(self) -> bool {
        matches!(
            self,
            FieldKind::Nested
                | FieldKind::NestedMany
                | FieldKind::GenericObjects
                | FieldKind::MappingList
        )
    }
}

/// How a column's value is written in REST `data` (the README's "Value formats").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    Str,
    Int,
    Bool,
    Date,
    Json,
    Uuid,
    Duration,
    Cidr,
    Decimal,
    Datetime,
    Inet,
    Mac,
    Timezone,
    FileUrl,
    Array,
    /// Only as an `item_format` (an array of PostgreSQL int ranges).
    IntRange,
}

/// How a column's value is written in a snapshot (the README's "Snapshot formats").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotFormat {
    Str,
    Int,
    Bool,
    Date,
    Json,
    Uuid,
    Duration,
    Cidr,
    File,
    Binary,
    ArrayList,
    Decimal,
    Datetime,
    Inet,
    Mac,
    Timezone,
    ArrayJson,
}

/// A column's model field type, as display templates need it for `str()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnFormat {
    Str,
    Int,
    Bool,
    Date,
    Json,
    Uuid,
    Duration,
    Cidr,
    File,
    Binary,
    Array,
    Decimal,
    Datetime,
    Inet,
    Mac,
    Timezone,
}

/// What an `annotation` field gives when the queryset annotation is absent (always, for us).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenMissing {
    /// The key is left out.
    Omit,
    /// The field's `default`.
    Default,
}

/// An m2m field rendered as one column of its targets instead of nested objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RenderAs {
    /// ConfigContext `tags`: the tags' slugs.
    Slug,
}

impl RenderAs {
    pub fn column(self) -> &'static str {
        match self {
            RenderAs::Slug => "slug",
        }
    }
}

/// One key of a serialized object.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Field {
    pub name: String,
    pub kind: FieldKind,
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub format: Option<ValueFormat>,
    #[serde(default)]
    pub item_format: Option<ValueFormat>,
    #[serde(default)]
    pub model: Option<String>,
    /// A nested serializer restricted to these fields.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// A nested serializer of another class (see [`Model::variants`]).
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub choices: Option<String>,
    #[serde(default)]
    pub through: Option<Through>,
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
    #[serde(default)]
    pub ct_column: Option<String>,
    #[serde(default)]
    pub id_column: Option<String>,
    #[serde(default)]
    pub fk_column: Option<String>,
    /// For a `count`: the table whose rows with `fk_column` = this object's pk NetBox's REST
    /// viewsets count (a many-to-many's through table).
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub many: Option<bool>,
    #[serde(default)]
    pub render: Option<Box<Field>>,
    /// For a `method`: the recipe that reproduces NetBox's Python.
    #[serde(default)]
    pub derive: Option<Derive>,
    #[serde(default)]
    pub when_missing: Option<WhenMissing>,
    #[serde(default)]
    pub default: Option<Value>,
    #[serde(default)]
    pub item_fields: Vec<Field>,
    /// For an m2m: render that column of the targets instead of nested objects.
    #[serde(default, rename = "as")]
    pub render_as: Option<RenderAs>,
}

/// The recipe of a `method` field (the README's "`derive` recipes"). The keys every recipe
/// reads the same way are typed here; the rest are column and table names, read by name.
#[derive(Debug, Clone, Deserialize)]
pub struct Derive {
    pub kind: DeriveKind,
    #[serde(default)]
    pub format: Option<ValueFormat>,
    #[serde(default)]
    pub part: Option<PortPart>,
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
    #[serde(default)]
    pub exists: Option<Exists>,
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub not_columns: Vec<String>,
    #[serde(flatten)]
    pub params: HashMap<String, Value>,
}

impl Derive {
    /// A string parameter (a column, table or model name).
    pub fn param(&self, key: &str) -> Option<String> {
        self.params.get(key)?.as_str().map(str::to_string)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeriveKind {
    PreferIpv4,
    IpFamily,
    PathDepth,
    AnyTruthy,
    GfkColumnEqualsPk,
    LegacyPortMappings,
    CableEndTerminations,
    CachedColumn,
    Column,
    ArrayLength,
    FkColumn,
    ParentBay,
    GenericCount,
    GenericFirst,
}

/// Which half of a Service's legacy `(protocol, ports)` a field shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortPart {
    Protocol,
    Ports,
}

/// `any_truthy`'s "a row of `table` has `fk_column` = pk".
#[derive(Debug, Clone, Deserialize)]
pub struct Exists {
    pub table: String,
    pub fk_column: String,
}

/// The `method` fields without a recipe that the renderer computes by name (in
/// `render/cabling.rs`), from the cable tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cabling {
    LinkPeers,
    LinkPeersType,
    ConnectedEndpoints,
    ConnectedEndpointsType,
    ConnectedEndpointsReachable,
}

impl Cabling {
    pub fn of(field_name: &str) -> Option<Self> {
        Self::deserialize(
            serde::de::value::StrDeserializer::<serde::de::value::Error>::new(field_name),
        )
        .ok()
    }
}

/// `method` fields NetBox computes from Python objects the database does not hold (a script's
/// class, a plugin's action provider, module bay type sets): rendered as `null`, by decision
/// (tools/catalogue/README.md). Any other `method` without a recipe is refused at load.
pub const PYTHON_ONLY: &[(&str, &str)] = &[
    ("dcim.module", "is_bay_compatible"),
    ("dcim.modulebay", "is_module_compatible"),
    ("extras.customfield", "data_type"),
    ("extras.customfieldchoiceset", "choices_count"),
    ("extras.eventrule", "action_is_available"),
    ("extras.script", "description"),
    ("extras.script", "vars"),
    ("extras.script", "result"),
];

#[derive(Debug, Clone, Deserialize)]
pub struct Through {
    pub table: String,
    #[serde(default)]
    pub source_column: Option<String>,
    #[serde(default)]
    pub target_column: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderBy {
    pub column: String,
    #[serde(default)]
    pub desc: bool,
}

/// What a snapshot key other than a plain column or local m2m is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// The raw stored `custom_field_data`.
    CustomFields,
    /// The sorted tag names.
    Tags,
    /// Cable's `serialize_object` override: the ids of its A or B terminations.
    CableTerminations,
}

/// One key of a snapshot (`serialize_object`).
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotField {
    pub name: String,
    #[serde(default)]
    pub kind: Option<SnapshotKind>,
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub format: Option<SnapshotFormat>,
    #[serde(default)]
    pub scale: Option<u32>,
    #[serde(default)]
    pub m2m: Option<Through>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
    /// Left out while CHANGELOG_SKIP_EMPTY_CHANGES is on (NetBox's default): last_updated.
    #[serde(default)]
    pub excluded_by_default: bool,
}

/// How `str(obj)` is built.
#[derive(Debug, Clone, Deserialize)]
pub struct Display {
    pub kind: DisplayKind,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub cases: Vec<DisplayCase>,
    /// Related objects a template refers to (`{=name}`, `{name.column}`).
    #[serde(default)]
    pub refs: HashMap<String, DisplayRef>,
    /// Sub-templates (`{$name}`).
    #[serde(default)]
    pub vars: HashMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisplayKind {
    /// One `template`.
    Template,
    /// The first of `cases` whose `when` expressions are all truthy.
    Cases,
}

/// A related object a display template refers to.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DisplayRef {
    /// The row of `model` whose id is in `column`.
    Fk { column: String, model: String },
    /// The row a generic foreign key points at.
    Gfk {
        ct_column: String,
        id_column: String,
    },
    /// The first row of `model` (by `order_by`) pointing here through a generic relation.
    FirstRelated {
        model: String,
        ct_column: String,
        id_column: String,
        #[serde(default)]
        ct_model: Option<String>,
        #[serde(default)]
        order_by: Vec<OrderBy>,
    },
}

/// A Python string filter in a display expression (`{base|filter:arg}`), see
/// `render/display.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisplayFilter {
    Label,
    Replace,
    Capitalize,
    Basename,
    Removeprefix,
    Localdate,
    LocaltimeHm,
    AsnWithAsdot,
    IpRangeName,
    PythonModuleName,
}

impl DisplayFilter {
    /// The filter a `name:arg` part names.
    pub fn of(filter: &str) -> Option<Self> {
        let name = filter.split_once(':').map_or(filter, |(name, _)| name);
        Self::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name))
            .ok()
    }
}

impl Display {
    /// Every expression of the spec: the `{...}` placeholders of its templates and
    /// sub-templates, and the cases' `when` expressions.
    pub fn expressions(&self) -> Vec<&str> {
        let templates = self
            .template
            .iter()
            .chain(self.cases.iter().map(|c| &c.template))
            .chain(self.vars.values());
        let mut out: Vec<&str> = Vec::new();
        for template in templates {
            let mut rest = template.as_str();
            while let Some(start) = rest.find('{') {
                let Some(end) = rest[start..].find('}') else {
                    break;
                };
                out.push(&rest[start + 1..start + end]);
                rest = &rest[start + end + 1..];
            }
        }
        out.extend(
            self.cases
                .iter()
                .flat_map(|c| c.when.iter().map(String::as_str)),
        );
        out
    }

    /// The filters of every expression (the parts after `|`).
    pub fn filters(&self) -> Vec<&str> {
        self.expressions()
            .into_iter()
            .flat_map(|e| e.split('|').skip(1))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DisplayCase {
    #[serde(default)]
    pub when: Vec<String>,
    pub template: String,
}

/// A catalogue the renderer cannot interpret, naming where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the model catalogue {source_name} is invalid: {location}: {problem}; fix the generator \
     (tools/catalogue/generate.py) and regenerate it, or teach the renderer the new value"
)]
pub struct CatalogueError {
    pub source_name: String,
    /// `model dcim.device, field status (serializer[3].kind)`, or the JSON path.
    pub location: String,
    pub problem: String,
}

/// The catalogue this process renders with: the one [`select`]ed, else 4.7.3's.
pub fn catalogue() -> &'static Catalogue {
    SELECTED.get_or_init(|| for_version(DEFAULT_VERSION))
}

static SELECTED: OnceLock<&'static Catalogue> = OnceLock::new();

/// Makes `version`'s catalogue the one [`catalogue`] returns. Called once, at start, before
/// anything renders; a later call for a release with another catalogue is a bug.
///
/// # Panics
/// When `version` is not an embedded release, or another catalogue is already in use.
pub fn select(version: &str) {
    let wanted = for_version(version);
    let in_use = SELECTED.get_or_init(|| wanted);
    assert!(
        std::ptr::eq(*in_use, wanted),
        "the {} catalogue is already in use; {version} was selected too late",
        in_use.netbox_version
    );
}

/// A release's embedded catalogue, parsed and checked once. It is part of the binary, so a bad
/// one is a build defect: the unit test `every_release_catalogue_loads` catches it before it
/// ships.
///
/// # Panics
/// When `version` is not an embedded release (callers take it from [`super::version::RELEASES`]).
pub fn for_version(version: &str) -> &'static Catalogue {
    static BASE: OnceLock<Catalogue> = OnceLock::new();
    static PATCHED: [OnceLock<Catalogue>; RELEASES.len()] =
        [const { OnceLock::new() }; RELEASES.len()];
    let index = RELEASES
        .iter()
        .position(|(v, _)| *v == version)
        .unwrap_or_else(|| panic!("no catalogue is embedded for NetBox {version}"));
    let loaded = |result: Result<Catalogue, CatalogueError>| match result {
        Ok(catalogue) => catalogue,
        Err(error) => panic!("{error}"),
    };
    match RELEASES[index].1 {
        None => BASE.get_or_init(|| loaded(Catalogue::parse(EMBEDDED_NAME, EMBEDDED))),
        Some((name, patch)) => PATCHED[index].get_or_init(|| loaded(patched(name, patch))),
    }
}

/// 4.7.3's catalogue with a release's merge patch applied.
fn patched(name: &str, patch: &str) -> Result<Catalogue, CatalogueError> {
    let error = |problem: String| CatalogueError {
        source_name: name.to_string(),
        location: "the file".into(),
        problem,
    };
    let mut raw: Value = serde_json::from_str(EMBEDDED).map_err(|e| error(e.to_string()))?;
    let patch: Value = serde_json::from_str(patch).map_err(|e| error(e.to_string()))?;
    merge_patch(&mut raw, &patch);
    Catalogue::parse(name, &raw.to_string())
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(fields) = target else {
        unreachable!("made an object above")
    };
    for (key, change) in changes {
        if change.is_null() {
            fields.remove(key);
        } else {
            merge_patch(fields.entry(key.clone()).or_insert(Value::Null), change);
        }
    }
}

impl Catalogue {
    /// Reads a catalogue, refusing any kind, derive, format or other value the renderer does
    /// not know (with the model, field and value), and any field the renderer could only
    /// render as `null`.
    pub fn parse(source_name: &str, json: &str) -> Result<Catalogue, CatalogueError> {
        let error = |location: String, problem: String| CatalogueError {
            source_name: source_name.to_string(),
            location,
            problem,
        };
        let raw: Value =
            serde_json::from_str(json).map_err(|e| error("the file".into(), e.to_string()))?;
        let catalogue: Catalogue = serde_path_to_error::deserialize(&raw).map_err(|e| {
            let location = locate(&raw, e.path());
            error(location, e.into_inner().to_string())
        })?;
        catalogue
            .check()
            .map_err(|(location, problem)| error(location, problem))?;
        Ok(catalogue)
    }

    /// What types alone cannot say: render-shape kinds used as fields, and methods without a
    /// recipe the renderer knows.
    fn check(&self) -> Result<(), (String, String)> {
        let mut names: Vec<&String> = self.models.keys().collect();
        names.sort();
        for name in names {
            let model = &self.models[name];
            if let Some(filter) = model
                .display
                .filters()
                .into_iter()
                .find(|f| DisplayFilter::of(f).is_none())
            {
                return Err((
                    format!("model {name}, display"),
                    format!("unknown filter `{filter}` in a display template"),
                ));
            }
            let mut lists: Vec<(String, &Vec<Field>)> = vec![
                ("serializer".into(), &model.serializer),
                ("brief".into(), &model.brief),
            ];
            lists.extend(
                model
                    .variants
                    .iter()
                    .map(|(v, f)| (format!("variants.{v}"), f)),
            );
            for (list, fields) in lists {
                for (i, field) in fields.iter().enumerate() {
                    let at = || format!("model {name}, field {} ({list}[{i}])", field.name);
                    if field.kind.is_render_shape() {
                        return Err((
                            at(),
                            format!(
                                "kind {:?} only describes a `render` spec, not a field",
                                field.kind
                            ),
                        ));
                    }
                    if field.kind == FieldKind::Count
                        && (field.table.is_none() || field.fk_column.is_none())
                    {
                        return Err((
                            at(),
                            "a `count` without the `table` and `fk_column` NetBox counts \
                             (regenerate the catalogue)"
                                .into(),
                        ));
                    }
                    if field.kind == FieldKind::Method
                        && field.derive.is_none()
                        && Cabling::of(&field.name).is_none()
                        && !PYTHON_ONLY.contains(&(name.as_str(), field.name.as_str()))
                    {
                        return Err((
                            at(),
                            "a `method` field without a `derive` recipe the renderer knows \
                             (it would render as null)"
                                .into(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.get(name)
    }

    /// The label of a choice value, if the choice set knows it.
    pub fn choice_label(&self, set: &str, value: &Value) -> Option<&str> {
        self.choices
            .get(set)?
            .iter()
            .find(|(v, _)| crate::python::value::eq(v, value))
            .map(|(_, label)| label.as_str())
    }
}

/// A JSON path in the catalogue as "model M, field F (path)": the model is the key under
/// `models`, the field the innermost object on the way that has a `name`.
fn locate(raw: &Value, path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut node = Some(raw);
    let mut model: Option<String> = None;
    let mut field: Option<String> = None;
    let mut below_model: Vec<String> = Vec::new();
    for (i, segment) in path.iter().enumerate() {
        node = match (segment, node) {
            (Segment::Map { key }, Some(n)) => {
                if i == 1 && model.is_none() {
                    model = Some(key.clone());
                } else if model.is_some() {
                    below_model.push(key.clone());
                }
                n.get(key)
            }
            (Segment::Seq { index }, Some(n)) => {
                if let Some(last) = below_model.last_mut() {
                    last.push_str(&format!("[{index}]"));
                }
                n.get(index)
            }
            _ => None,
        };
        if model.is_some()
            && let Some(name) = node.and_then(|n| n.get("name")).and_then(Value::as_str)
        {
            field = Some(name.to_string());
        }
    }
    match (model, field) {
        (Some(m), Some(f)) => format!("model {m}, field {f} ({})", below_model.join(".")),
        (Some(m), None) => format!("model {m} ({})", below_model.join(".")),
        _ => format!("at {path}"),
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    #[test]
    fn every_release_catalogue_loads() {
        for (version, patch) in RELEASES {
            let c = for_version(version);
            // a shared catalogue is 4.7.3's, and says so
            let generated_by = if patch.is_some() {
                version
            } else {
                DEFAULT_VERSION
            };
            assert_eq!(c.netbox_version, generated_by, "the catalogue of {version}");
            assert!(c.models.values().filter(|m| m.event_rules).count() >= 127);
        }
        // one entry per release the detection knows, in the same order
        let versions: Vec<&str> = RELEASES.iter().map(|(v, _)| *v).collect();
        let known: Vec<&str> = crate::netbox::version::RELEASES
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(versions, known);
    }

    #[test]
    fn a_merge_patch_merges_objects_removes_nulls_and_replaces_the_rest() {
        let mut target = serde_json::json!({"a": {"b": 1, "c": [1, 2], "d": "x"}, "e": 1});
        merge_patch(
            &mut target,
            &serde_json::json!({"a": {"b": null, "c": [3], "f": {"g": 1}}, "h": true}),
        );
        assert_eq!(
            target,
            serde_json::json!({"a": {"c": [3], "d": "x", "f": {"g": 1}}, "e": 1, "h": true})
        );
    }

    #[test]
    fn the_embedded_catalogue_loads() {
        let c = Catalogue::parse(EMBEDDED_NAME, EMBEDDED).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.netbox_version, "4.7.3");
        assert!(c.models.values().filter(|m| m.event_rules).count() >= 127);
        let device = c.model("dcim.device").expect("dcim.device");
        assert_eq!(device.table, "dcim_device");
        assert_eq!(device.api_path.as_deref(), Some("/api/dcim/devices/"));
        assert_eq!(device.serializer[0].name, "id");
        assert_eq!(
            c.choice_label("DeviceStatusChoices", &Value::from("active")),
            Some("Active")
        );
    }

    /// The embedded catalogue with one value of one field of dcim.device replaced.
    fn with_device_field(name: &str, edit: impl FnOnce(&mut Value)) -> Result<Catalogue, String> {
        let mut raw: Value = serde_json::from_str(EMBEDDED).unwrap();
        let fields = raw["models"]["dcim.device"]["serializer"]
            .as_array_mut()
            .unwrap();
        let field = fields.iter_mut().find(|f| f["name"] == name).unwrap();
        edit(field);
        Catalogue::parse("test.json", &raw.to_string()).map_err(|e| e.to_string())
    }

    fn assert_names(error: Result<Catalogue, String>, wanted: &[&str]) {
        let message = error.expect_err("the catalogue is refused");
        for w in wanted {
            assert!(message.contains(w), "{w:?} not in {message:?}");
        }
    }

    #[test]
    fn an_unknown_kind_is_refused_naming_model_field_and_value() {
        assert_names(
            with_device_field("status", |f| f["kind"] = "choise".into()),
            &["test.json", "dcim.device", "field status", "`choise`"],
        );
    }

    #[test]
    fn an_unknown_derive_is_refused_naming_model_field_and_value() {
        assert_names(
            with_device_field("parent_device", |f| {
                f["derive"]["kind"] = "parent_bays".into()
            }),
            &["dcim.device", "field parent_device", "`parent_bays`"],
        );
    }

    #[test]
    fn an_unknown_format_is_refused_naming_model_field_and_value() {
        assert_names(
            with_device_field("serial", |f| f["format"] = "string".into()),
            &["dcim.device", "field serial", "`string`"],
        );
        let mut raw: Value = serde_json::from_str(EMBEDDED).unwrap();
        raw["models"]["dcim.site"]["snapshot"][1]["format"] = "datetim".into();
        let message = Catalogue::parse("t.json", &raw.to_string())
            .expect_err("refused")
            .to_string();
        assert!(
            message.contains("dcim.site") && message.contains("`datetim`"),
            "{message}"
        );
    }

    #[test]
    fn a_method_without_a_known_recipe_is_refused() {
        assert_names(
            with_device_field("parent_device", |f| {
                f.as_object_mut().unwrap().remove("derive");
            }),
            &[
                "dcim.device",
                "field parent_device",
                "without a `derive` recipe",
            ],
        );
    }

    #[test]
    fn a_render_shape_is_refused_as_a_field() {
        assert_names(
            with_device_field("serial", |f| f["kind"] = "nested_many".into()),
            &["dcim.device", "field serial", "NestedMany"],
        );
    }

    /// The variant names a serde enum accepts, as its `Deserialize` declares them.
    fn variants<T: serde::de::DeserializeOwned>() -> Vec<String> {
        #[derive(Debug)]
        struct Found(Vec<String>);
        impl fmt::Display for Found {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl std::error::Error for Found {}
        impl serde::de::Error for Found {
            fn custom<M: fmt::Display>(_: M) -> Self {
                Found(Vec::new())
            }
        }
        struct Capture;
        impl<'de> serde::Deserializer<'de> for Capture {
            type Error = Found;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
                Err(Found(Vec::new()))
            }
            fn deserialize_enum<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                variants: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Found> {
                Err(Found(variants.iter().map(|v| v.to_string()).collect()))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                struct identifier ignored_any
            }
        }
        match T::deserialize(Capture) {
            Err(Found(names)) => names,
            Ok(_) => unreachable!(),
        }
    }

    fn name(value: impl Serialize) -> String {
        serde_json::to_value(value)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Every value the renderer knows is one some model of the embedded catalogue uses: a variant
    /// nothing uses is dead code to delete (or to document here as reserved).
    #[test]
    fn every_variant_is_used_by_the_embedded_catalogue() {
        use std::collections::BTreeSet;
        let c = catalogue();
        let mut used: HashMap<&str, BTreeSet<String>> = HashMap::new();
        let mut add = |set: &'static str, value: String| {
            used.entry(set).or_default().insert(value);
        };
        fn walk(f: &Field, add: &mut dyn FnMut(&'static str, String)) {
            add("FieldKind", name(f.kind));
            f.format
                .iter()
                .chain(&f.item_format)
                .for_each(|v| add("ValueFormat", name(v)));
            f.when_missing
                .iter()
                .for_each(|v| add("WhenMissing", name(v)));
            f.render_as.iter().for_each(|v| add("RenderAs", name(v)));
            if let Some(d) = &f.derive {
                add("DeriveKind", name(d.kind));
                d.format.iter().for_each(|v| add("ValueFormat", name(v)));
                d.part.iter().for_each(|v| add("PortPart", name(v)));
            }
            if f.kind == FieldKind::Method && f.derive.is_none() {
                Cabling::of(&f.name)
                    .iter()
                    .for_each(|v| add("Cabling", name(v)));
            }
            if let Some(r) = &f.render {
                walk(r, add);
            }
            for i in &f.item_fields {
                walk(i, add);
            }
        }
        for model in c.models.values() {
            let lists = [&model.serializer, &model.brief]
                .into_iter()
                .chain(model.variants.values());
            for f in lists.flatten() {
                walk(f, &mut add);
            }
            for s in &model.snapshot {
                s.kind.iter().for_each(|v| add("SnapshotKind", name(v)));
                s.format.iter().for_each(|v| add("SnapshotFormat", name(v)));
            }
            for col in model.columns.values() {
                col.format.iter().for_each(|v| add("ColumnFormat", name(v)));
            }
            add("DisplayKind", name(model.display.kind));
            for f in model.display.filters() {
                add("DisplayFilter", name(DisplayFilter::of(f).unwrap()));
            }
            for r in model.display.refs.values() {
                let kind = match r {
                    DisplayRef::Fk { .. } => "fk",
                    DisplayRef::Gfk { .. } => "gfk",
                    DisplayRef::FirstRelated { .. } => "first_related",
                };
                add("DisplayRef", kind.to_string());
            }
        }
        let declared: [(&str, Vec<String>); 13] = [
            ("DisplayFilter", variants::<DisplayFilter>()),
            ("FieldKind", variants::<FieldKind>()),
            ("ValueFormat", variants::<ValueFormat>()),
            ("SnapshotFormat", variants::<SnapshotFormat>()),
            ("ColumnFormat", variants::<ColumnFormat>()),
            ("WhenMissing", variants::<WhenMissing>()),
            ("RenderAs", variants::<RenderAs>()),
            ("DeriveKind", variants::<DeriveKind>()),
            ("PortPart", variants::<PortPart>()),
            ("Cabling", variants::<Cabling>()),
            ("SnapshotKind", variants::<SnapshotKind>()),
            ("DisplayKind", variants::<DisplayKind>()),
            (
                "DisplayRef",
                vec!["fk".into(), "gfk".into(), "first_related".into()],
            ),
        ];
        for (set, names) in declared {
            assert!(!names.is_empty(), "{set} has variants");
            for n in names {
                assert!(
                    used.get(set).is_some_and(|u| u.contains(&n)),
                    "{set}::{n} is used by no model of the embedded catalogue"
                );
            }
        }
        // and every method NetBox computes from Python alone is still in the catalogue
        for (model, field) in PYTHON_ONLY {
            let m = c.model(model).unwrap_or_else(|| panic!("{model}"));
            assert!(
                m.serializer
                    .iter()
                    .chain(&m.brief)
                    .any(|f| f.name == *field),
                "{model}.{field} is no longer in the catalogue"
            );
        }
    }

    #[test]
    fn an_unknown_display_filter_is_refused() {
        let mut raw: Value = serde_json::from_str(EMBEDDED).unwrap();
        raw["models"]["dcim.site"]["display"]["template"] = "{name|upper}".into();
        let message = Catalogue::parse("t.json", &raw.to_string())
            .expect_err("refused")
            .to_string();
        assert!(
            message.contains("model dcim.site, display") && message.contains("`upper`"),
            "{message}"
        );
    }
}
