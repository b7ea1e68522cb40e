//! What netbox-outbox knows of NetBox: its models ([`catalogue`]), its content types and custom
//! fields (read from its tables), and how to render an object as NetBox's REST serializer and
//! snapshot encoder do ([`render`]).

pub mod catalogue;
pub mod config_context;
pub mod format;
pub mod lookup;
pub mod render;
pub mod version;

use std::collections::{HashMap, HashSet};

use crate::db::Query;

use crate::change::{Action, TxChange};
use crate::config::NetboxConfig;

pub use self::render::{Rendered, render};

/// A custom field definition (extras_customfield).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CustomField {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub related_object_type_id: Option<i32>,
    /// `[value, label]` pairs of the field's choice set.
    #[serde(default)]
    pub choices: Vec<(serde_json::Value, String)>,
    pub object_types: Vec<i32>,
}

/// NetBox's configuration as read from its database, plus the catalogue.
pub struct Netbox {
    config: NetboxConfig,
    /// Content type id to `app_label.model`.
    content_types: HashMap<i32, String>,
    by_name: HashMap<String, i32>,
    /// Content types whose tables are watched.
    watched: HashSet<i32>,
    /// Ignored columns per table (netbox_outbox.ignored_column).
    ignored: HashMap<String, HashSet<String>>,
    /// Custom fields, in NetBox's order (group_name, weight, name).
    pub custom_fields: Vec<CustomField>,
    fingerprint: String,
}

impl Netbox {
    pub fn new(config: NetboxConfig) -> Self {
        Netbox {
            config,
            content_types: HashMap::new(),
            by_name: HashMap::new(),
            watched: HashSet::new(),
            ignored: HashMap::new(),
            custom_fields: Vec::new(),
            fingerprint: String::new(),
        }
    }

    /// Re-reads content types, watched tables, ignored columns and custom fields.
    pub async fn refresh(&mut self, client: &impl Query) -> Result<(), tokio_postgres::Error> {
        let row = client
            .query_one(
                "select
                   (select coalesce(json_agg(json_build_array(id, app_label || '.' || model)), '[]')
                      from django_content_type)::text,
                   (select coalesce(json_agg(content_type_id), '[]') from netbox_outbox.watch where watched)::text,
                   (select coalesce(json_agg(json_build_array(w.table_name,
                        netbox_outbox.ignored_columns(to_regclass(format('public.%I', w.table_name))))), '[]')
                      from netbox_outbox.watch w where w.watched)::text,
                   (select coalesce(json_agg(json_build_object(
                        'name', cf.name, 'type', cf.type,
                        'related_object_type_id', cf.related_object_type_id,
                        'choices', (select coalesce(json_agg(json_build_array(s.extra_choices[i][1],
                                                                               s.extra_choices[i][2]) order by i), '[]')
                                    from extras_customfieldchoiceset s, generate_subscripts(s.extra_choices, 1) i
                                    where s.id = cf.choice_set_id),
                        'object_types', (select coalesce(json_agg(ot.contenttype_id), '[]')
                                         from extras_customfield_object_types ot where ot.customfield_id = cf.id)
                      ) order by cf.group_name, cf.weight, cf.name), '[]')
                      from extras_customfield cf where cf.status = 'active')::text",
                &[],
            )
            .await?;
        let texts: Vec<String> = (0..4).map(|i| row.get(i)).collect();
        let fingerprint = texts.concat();
        if fingerprint == self.fingerprint {
            return Ok(());
        }
        let content_types: Vec<(i32, String)> = serde_json::from_str(&texts[0]).unwrap_or_default();
        self.by_name = content_types
            .iter()
            .map(|(id, name)| (name.clone(), *id))
            .collect();
        self.content_types = content_types.into_iter().collect();
        self.watched = serde_json::from_str::<Vec<i32>>(&texts[1])
            .unwrap_or_default()
            .into_iter()
            .collect();
        self.ignored = serde_json::from_str::<Vec<(String, Vec<String>)>>(&texts[2])
            .unwrap_or_default()
            .into_iter()
            .map(|(t, cols)| (t, cols.into_iter().collect()))
            .collect();
        self.custom_fields = serde_json::from_str(&texts[3]).unwrap_or_default();
        self.fingerprint = fingerprint;
        Ok(())
    }

    /// `app_label.model` of a content type.
    pub fn object_type(&self, content_type_id: i32) -> Option<String> {
        self.content_types.get(&content_type_id).cloned()
    }

    pub fn content_type_id(&self, object_type: &str) -> Option<i32> {
        self.by_name.get(object_type).copied()
    }

    /// The table of a content type's model.
    pub fn table(&self, content_type_id: i32) -> Option<String> {
        let name = self.content_types.get(&content_type_id)?;
        Some(match catalogue::catalogue().model(name) {
            Some(model) => model.table.clone(),
            None => name.replace('.', "_"),
        })
    }

    pub fn is_watched(&self, content_type_id: i32) -> bool {
        self.watched.contains(&content_type_id)
    }

    pub fn is_ignored(&self, table: &str, column: &str) -> bool {
        self.ignored
            .get(table)
            .is_some_and(|cols| cols.contains(column))
    }

    /// NetBox's BASE_PATH as a prefix ("" or "/netbox").
    pub fn base(&self) -> String {
        if self.config.base_path.is_empty() {
            String::new()
        } else {
            format!("/{}", self.config.base_path)
        }
    }

    /// The custom fields of a content type, in NetBox's order.
    pub fn custom_fields_of(&self, content_type_id: i32) -> impl Iterator<Item = &CustomField> {
        self.custom_fields
            .iter()
            .filter(move |cf| cf.object_types.contains(&content_type_id))
    }

    /// Without the plugin, the request's path and method are unknown: use what NetBox's REST
    /// API would have seen (POST to the list for a create, PATCH or DELETE on the object).
    pub fn fallback_request(
        &self,
        change: &TxChange,
        _rendered: &Rendered,
    ) -> (String, &'static str) {
        let name = self.object_type(change.content_type_id).unwrap_or_default();
        let list = catalogue::catalogue()
            .model(&name)
            .and_then(|m| m.api_path.clone())
            .unwrap_or_else(|| format!("/api/{}/", name.replace('.', "/")));
        let list = format!("{}{list}", self.base());
        match change.action {
            Action::Created => (list, "POST"),
            Action::Updated => (format!("{list}{}/", change.object_id), "PATCH"),
            Action::Deleted => (format!("{list}{}/", change.object_id), "DELETE"),
        }
    }
}
