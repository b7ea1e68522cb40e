//! The model catalogue: what NetBox 4.7.3's REST serializers and snapshot encoder do for each
//! model, generated from NetBox itself by `tools/catalogue/generate.py` and embedded here as
//! data (`src/netbox/catalogue/netbox-4.7.3.json`). See tools/catalogue/README.md for the schema.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

const EMBEDDED: &str = include_str!("catalogue/netbox-4.7.3.json");

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
    /// What `snapshot_override` changes, when the model overrides `serialize_object`.
    #[serde(default)]
    pub snapshot_override: Option<String>,
    /// Column name to its model field, format and choices.
    #[serde(default)]
    pub columns: HashMap<String, Column>,
    /// The model's default ordering.
    #[serde(default)]
    pub ordering: Vec<OrderBy>,
}

fn default_pk() -> String {
    "id".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Column {
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub scale: Option<u32>,
    #[serde(default)]
    pub choices: Option<String>,
    #[serde(default)]
    pub fk_model: Option<String>,
}

/// One key of a serialized object.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Field {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub item_format: Option<String>,
    #[serde(default)]
    pub scale: Option<u32>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
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
    #[serde(default)]
    pub fk_model: Option<String>,
    #[serde(default)]
    pub many: Option<bool>,
    #[serde(default)]
    pub render: Option<Box<Field>>,
    #[serde(default)]
    pub derive: Option<Value>,
    #[serde(default)]
    pub when_missing: Option<String>,
    #[serde(default)]
    pub default: Option<Value>,
    #[serde(default)]
    pub item_fields: Vec<Field>,
    /// For an m2m: `slug` or `pk` renders that column instead of nested objects.
    #[serde(default, rename = "as")]
    pub render_as: Option<String>,
}

impl Field {
    /// A derive spec's string attribute.
    pub fn derive_str(&self, key: &str) -> Option<&str> {
        self.derive.as_ref()?.get(key)?.as_str()
    }

    pub fn derive_kind(&self) -> Option<&str> {
        self.derive_str("kind")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Through {
    pub table: String,
    #[serde(default)]
    pub source_column: Option<String>,
    #[serde(default)]
    pub target_column: Option<String>,
    #[serde(default)]
    pub content_type_column: Option<String>,
    #[serde(default)]
    pub object_id_column: Option<String>,
    #[serde(default)]
    pub tag_column: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderBy {
    #[serde(default)]
    pub field: Option<String>,
    pub column: String,
    #[serde(default)]
    pub desc: bool,
}

/// One key of a snapshot (`serialize_object`).
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotField {
    pub name: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
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
    pub kind: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub cases: Vec<DisplayCase>,
    /// Related objects a template refers to (`{=name}`, `{name.column}`).
    #[serde(default)]
    pub refs: HashMap<String, Value>,
    #[serde(default)]
    pub vars: HashMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DisplayCase {
    #[serde(default)]
    pub when: Vec<String>,
    pub template: String,
}

/// The embedded catalogue, parsed once.
pub fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        serde_json::from_str(EMBEDDED).expect("the embedded model catalogue is valid JSON")
    })
}

impl Catalogue {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalogue_covers_netbox_models() {
        let c = catalogue();
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
}
