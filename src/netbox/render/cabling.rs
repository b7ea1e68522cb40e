//! The cable fields NetBox computes in Python (`CabledObjectSerializer` and
//! `ConnectedEndpointsSerializer`): `link_peers`, `link_peers_type`, `connected_endpoints`,
//! `connected_endpoints_type` and `connected_endpoints_reachable`, from the object's cable (its
//! `dcim_cabletermination` rows), its wireless link and its cable path (`dcim_cablepath`).

use serde_json::Value;

use super::Renderer;
use super::nested::{RowSource, sort_rows};
use crate::change::Row;
use crate::netbox::catalogue::{Cabling, Field, Model};
use crate::netbox::lookup::{Found, RelatedKey};

const CABLE_PATH_TABLE: &str = "dcim_cablepath";

/// An object a cable or path leads to: `app_label.model` and id.
type Node = (String, i64);

impl Renderer<'_> {
    /// One of the cable fields of a cabled object's row.
    pub(super) fn cabling(
        &mut self,
        name: &str,
        model: &Model,
        field: Cabling,
        row: &Row,
        depth: usize,
    ) -> Value {
        match field {
            // CabledObjectSerializer.get_link_peers: [] without peers, else each peer nested
            Cabling::LinkPeers => {
                let peers = self.link_peers(name, model, row);
                Value::Array(self.nested_nodes(&peers, depth))
            }
            // only objects with a cable have a peer type (a wireless link has none)
            Cabling::LinkPeersType => {
                if row.get("cable_id").is_none_or(Value::is_null) {
                    return Value::Null;
                }
                self.link_peers(name, model, row)
                    .first()
                    .map_or(Value::Null, |(t, _)| Value::String(t.clone()))
            }
            // ConnectedEndpointsSerializer: null without endpoints
            Cabling::ConnectedEndpoints => {
                let endpoints = self.connected_endpoints(row);
                if endpoints.is_empty() {
                    Value::Null
                } else {
                    Value::Array(self.nested_nodes(&endpoints, depth))
                }
            }
            Cabling::ConnectedEndpointsType => self
                .connected_endpoints(row)
                .first()
                .map_or(Value::Null, |(t, _)| Value::String(t.clone())),
            Cabling::ConnectedEndpointsReachable => {
                Value::Bool(self.cable_path(row).is_some_and(|p| {
                    p.get("is_complete").and_then(Value::as_bool) == Some(true)
                        && p.get("is_active").and_then(Value::as_bool) == Some(true)
                }))
            }
        }
    }

    /// `link_peers`: the cable's terminations on the other end, in CableTermination's order; or,
    /// for an interface on a wireless link, the interface at the link's other end.
    ///
    /// A cable with a profile maps individual connector positions to peers; that mapping lives
    /// in Python classes, so such a cable's peers are all terminations of the other end.
    fn link_peers(&mut self, name: &str, model: &Model, row: &Row) -> Vec<Node> {
        let id_of = |column: &str| row.get(column).and_then(Value::as_i64);
        if let Some(cable) = id_of("cable_id") {
            let key = RelatedKey {
                table: "dcim_cabletermination".into(),
                column: "cable_id".into(),
                content_type: None,
            };
            let mut terminations = match self.lookups.related(&key, cable) {
                Found::Yes(rows) => rows.to_vec(),
                Found::Missing => {
                    self.needs.related.insert((key, cable));
                    return Vec::new();
                }
            };
            if let Some(termination_model) = self.catalogue.model("dcim.cabletermination") {
                sort_rows(&mut terminations, &termination_model.ordering);
            }
            let own_end = row.get("cable_end").cloned().unwrap_or(Value::Null);
            return terminations
                .iter()
                .filter(|t| t.get("cable_end").unwrap_or(&Value::Null) != &own_end)
                .filter_map(|t| {
                    let ct = t.get("termination_type_id")?.as_i64()?;
                    let id = t.get("termination_id")?.as_i64()?;
                    Some((self.netbox.object_type(ct as i32)?, id))
                })
                .collect();
        }
        if name == "dcim.interface"
            && let Some(link) = id_of("wireless_link_id")
            && let Some(link_row) = self.row_of("wireless.wirelesslink", link)
        {
            let a = link_row.get("interface_a_id").and_then(Value::as_i64);
            let b = link_row.get("interface_b_id").and_then(Value::as_i64);
            let own = row.get(&model.pk_column).and_then(Value::as_i64);
            let peer = if a == own { b } else { a };
            return peer
                .map(|p| vec![("dcim.interface".to_string(), p)])
                .unwrap_or_default();
        }
        Vec::new()
    }

    /// `connected_endpoints`: the last hop of the object's cable path, if the path is complete.
    fn connected_endpoints(&mut self, row: &Row) -> Vec<Node> {
        let Some(path) = self.cable_path(row) else {
            return Vec::new();
        };
        if path.get("is_complete").and_then(Value::as_bool) != Some(true) {
            return Vec::new();
        }
        let last = path
            .get("path")
            .and_then(Value::as_array)
            .and_then(|hops| hops.last())
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        last.iter()
            .filter_map(|node| {
                // a node is "<content type id>:<object id>"
                let (ct, id) = node.as_str()?.split_once(':')?;
                let object_type = self.netbox.object_type(ct.parse().ok()?)?;
                Some((object_type, id.parse().ok()?))
            })
            .collect()
    }

    /// The object's cable path (`_path_id`), as of the batch.
    fn cable_path(&mut self, row: &Row) -> Option<Row> {
        let id = row.get("_path_id").and_then(Value::as_i64)?;
        match self.lookups.row(CABLE_PATH_TABLE, id) {
            Found::Yes(path) => path.cloned(),
            Found::Missing => {
                self.needs.rows.insert((CABLE_PATH_TABLE.to_string(), id));
                None
            }
        }
    }

    /// Each node as its model's nested (brief) representation, as `serializer(nested=True,
    /// many=True)` renders a list.
    fn nested_nodes(&mut self, nodes: &[Node], depth: usize) -> Vec<Value> {
        nodes
            .iter()
            .map(|(object_type, id)| {
                self.nested(object_type, *id, &Field::default(), depth, RowSource::Batch)
            })
            .collect()
    }
}
