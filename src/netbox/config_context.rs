//! A device's or virtual machine's rendered config context, as NetBox 4.7.3's
//! `ConfigContextModel.render_config_context()` builds it when the pre-rendered cache
//! (`_config_context_data`) is empty: the data of every active config context whose assignments
//! match the object (`ConfigContextQuerySet.get_for_object`), by weight then name, deep-merged,
//! then the object's own `local_context_data` merged on top.
//!
//! The matching and ordering run in SQL, in the batch's snapshot (names sort in the database's
//! collation, as NetBox's `ORDER BY` does); the merge runs here, keeping the key order Python's
//! dicts would have.

use serde_json::{Map, Value};

use crate::change::Row;
use crate::db::Query;

/// What decides which config contexts apply to an object: the attributes `get_for_object`
/// reads. Objects that share them share the result, so a bulk change costs one query.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub site: Option<i64>,
    pub location: Option<i64>,
    pub device_type: Option<i64>,
    pub role: Option<i64>,
    pub platform: Option<i64>,
    pub cluster: Option<i64>,
    pub tenant: Option<i64>,
    /// Tag ids, sorted.
    pub tags: Vec<i64>,
}

impl Scope {
    /// The scope of a `dcim_device` or `virtualization_virtualmachine` row (a virtual machine
    /// has no location or device type, which leaves only unassigned contexts matching those).
    pub fn of(row: &Row, tags: impl IntoIterator<Item = i64>) -> Scope {
        let id = |column: &str| row.get(column).and_then(Value::as_i64);
        let mut tags: Vec<i64> = tags.into_iter().collect();
        tags.sort_unstable();
        tags.dedup();
        Scope {
            site: id("site_id"),
            location: id("location_id"),
            device_type: id("device_type_id"),
            role: id("role_id"),
            platform: id("platform_id"),
            cluster: id("cluster_id"),
            tenant: id("tenant_id"),
            tags,
        }
    }
}

/// The tables [`matching`] reads.
pub const TABLES: &[&str] = &[
    "extras_configcontext",
    "extras_configcontext_regions",
    "extras_configcontext_site_groups",
    "extras_configcontext_sites",
    "extras_configcontext_locations",
    "extras_configcontext_device_types",
    "extras_configcontext_roles",
    "extras_configcontext_platforms",
    "extras_configcontext_cluster_types",
    "extras_configcontext_cluster_groups",
    "extras_configcontext_clusters",
    "extras_configcontext_tenant_groups",
    "extras_configcontext_tenants",
    "extras_configcontext_tags",
    "dcim_site",
    "dcim_region",
    "dcim_sitegroup",
    "dcim_location",
    "dcim_devicerole",
    "dcim_platform",
    "virtualization_cluster",
    "tenancy_tenant",
];

/// `get_for_object(obj, aggregate_data=True)`: the matching contexts' data, by weight then name.
///
/// Regions and site groups (through the site), locations, roles and platforms match with their
/// ancestors (NetBox's ltree `path` columns); sites, device types, cluster types, cluster
/// groups, clusters, tenant groups and tenants match directly; tags by any tag of the object.
/// A context with no assignment of a kind matches every object for that kind.
const MATCHING_SQL: &str = "
with o as (
    select (select r.path from dcim_site s join dcim_region r on r.id = s.region_id where s.id = $1) as region_path,
           (select g.path from dcim_site s join dcim_sitegroup g on g.id = s.group_id where s.id = $1) as site_group_path,
           (select l.path from dcim_location l where l.id = $2) as location_path,
           (select d.path from dcim_devicerole d where d.id = $4) as role_path,
           (select p.path from dcim_platform p where p.id = $5) as platform_path,
           (select c.type_id from virtualization_cluster c where c.id = $6) as cluster_type,
           (select c.group_id from virtualization_cluster c where c.id = $6) as cluster_group,
           (select t.group_id from tenancy_tenant t where t.id = $7) as tenant_group
)
select coalesce(jsonb_agg(cc.data order by cc.weight, cc.name), '[]'::jsonb)::text
from extras_configcontext cc, o
where cc.is_active
  and (not exists (select from extras_configcontext_regions x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_regions x join dcim_region n on n.id = x.region_id
                  where x.configcontext_id = cc.id and n.path @> o.region_path))
  and (not exists (select from extras_configcontext_site_groups x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_site_groups x join dcim_sitegroup n on n.id = x.sitegroup_id
                  where x.configcontext_id = cc.id and n.path @> o.site_group_path))
  and (not exists (select from extras_configcontext_sites x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_sites x where x.configcontext_id = cc.id and x.site_id = $1))
  and (not exists (select from extras_configcontext_locations x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_locations x join dcim_location n on n.id = x.location_id
                  where x.configcontext_id = cc.id and n.path @> o.location_path))
  and (not exists (select from extras_configcontext_device_types x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_device_types x
                  where x.configcontext_id = cc.id and x.devicetype_id = $3))
  and (not exists (select from extras_configcontext_roles x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_roles x join dcim_devicerole n on n.id = x.devicerole_id
                  where x.configcontext_id = cc.id and n.path @> o.role_path))
  and (not exists (select from extras_configcontext_platforms x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_platforms x join dcim_platform n on n.id = x.platform_id
                  where x.configcontext_id = cc.id and n.path @> o.platform_path))
  and (not exists (select from extras_configcontext_cluster_types x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_cluster_types x
                  where x.configcontext_id = cc.id and x.clustertype_id = o.cluster_type))
  and (not exists (select from extras_configcontext_cluster_groups x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_cluster_groups x
                  where x.configcontext_id = cc.id and x.clustergroup_id = o.cluster_group))
  and (not exists (select from extras_configcontext_clusters x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_clusters x where x.configcontext_id = cc.id and x.cluster_id = $6))
  and (not exists (select from extras_configcontext_tenant_groups x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_tenant_groups x
                  where x.configcontext_id = cc.id and x.tenantgroup_id = o.tenant_group))
  and (not exists (select from extras_configcontext_tenants x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_tenants x where x.configcontext_id = cc.id and x.tenant_id = $7))
  and (not exists (select from extras_configcontext_tags x where x.configcontext_id = cc.id)
       or exists (select from extras_configcontext_tags x where x.configcontext_id = cc.id and x.tag_id = any($8)))";

/// The data of the config contexts that apply to a scope, in merge order.
pub async fn matching(
    client: &impl Query,
    scope: &Scope,
) -> Result<Vec<Value>, tokio_postgres::Error> {
    let text: String = client
        .query_one(
            MATCHING_SQL,
            &[
                &scope.site,
                &scope.location,
                &scope.device_type,
                &scope.role,
                &scope.platform,
                &scope.cluster,
                &scope.tenant,
                &scope.tags,
            ],
        )
        .await?
        .get(0);
    Ok(match serde_json::from_str(&text) {
        Ok(Value::Array(items)) => items,
        _ => Vec::new(),
    })
}

/// `render_config_context()`: each context merged in turn, then the local data if it is truthy.
pub fn render(contexts: &[Value], local: Option<&Value>) -> Value {
    let mut data = Map::new();
    for context in contexts {
        if let Value::Object(context) = context {
            data = deepmerge(&data, context);
        }
    }
    if let Some(Value::Object(local)) = local
        && !local.is_empty()
    {
        data = deepmerge(&data, local);
    }
    Value::Object(data)
}

/// NetBox's `utilities.data.deepmerge`: a new dict with `new` merged into `original`. A key both
/// hold as dicts (the new one non-empty) merges recursively; any other key of `new` replaces
/// the original's value in its place, or is appended.
pub fn deepmerge(original: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut merged = original.clone();
    for (key, value) in new {
        match (original.get(key), value) {
            (Some(Value::Object(a)), Value::Object(b)) if !b.is_empty() => {
                merged.insert(key.clone(), Value::Object(deepmerge(a, b)));
            }
            _ => {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    #[test]
    fn deepmerge_keeps_the_first_position_and_takes_the_last_value() {
        let merged = deepmerge(
            &map(json!({"ntp": {"servers": ["a"], "prefer": true}, "b": 1, "a": [1]})),
            &map(json!({"a": [1, 2], "ntp": {"servers": ["b"]}, "syslog": "x"})),
        );
        assert_eq!(
            Value::Object(merged.clone()),
            json!({"ntp": {"servers": ["b"], "prefer": true}, "b": 1, "a": [1, 2], "syslog": "x"})
        );
        assert_eq!(keys(&Value::Object(merged)), ["ntp", "b", "a", "syslog"]);
    }

    #[test]
    fn an_empty_or_non_dict_value_replaces_instead_of_merging() {
        let original = map(json!({"x": {"keep": 1}, "y": {"keep": 1}, "z": 1}));
        let merged = deepmerge(&original, &map(json!({"x": {}, "y": 5, "z": {"n": 1}})));
        assert_eq!(
            Value::Object(merged),
            json!({"x": {}, "y": 5, "z": {"n": 1}})
        );
    }

    #[test]
    fn contexts_merge_in_order_then_local_data_on_top() {
        let contexts = [
            json!({"syslog": "10.0.0.1", "ntp": {"servers": ["192.0.2.1"]}}),
            json!({"ntp": {"servers": ["192.0.2.123"]}, "b": 1}),
        ];
        let local = json!({"a": [1, 2], "b": 2});
        let rendered = render(&contexts, Some(&local));
        assert_eq!(
            rendered,
            json!({"syslog": "10.0.0.1", "ntp": {"servers": ["192.0.2.123"]}, "b": 2, "a": [1, 2]})
        );
        assert_eq!(keys(&rendered), ["syslog", "ntp", "b", "a"]);
        // empty local data is skipped; no context at all renders {}
        assert_eq!(render(&contexts[..1], Some(&json!({}))), contexts[0]);
        assert_eq!(render(&[], None), json!({}));
    }
}
