//! Every merge case of NetBox's per-request merging (reference docs 3.3), on captured histories.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde_json::json;

use super::*;

fn row(name: &str, status: &str) -> Row {
    match json!({"id": 1, "name": name, "status": status, "last_updated": format!("t-{name}-{status}")})
    {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

struct Builder {
    history: ObjectHistory,
    next_id: i64,
}

impl Builder {
    fn new() -> Self {
        Builder {
            history: ObjectHistory {
                content_type_id: 9,
                object_id: 1,
                ..Default::default()
            },
            next_id: 100,
        }
    }

    fn change(
        mut self,
        txid: i64,
        kind: ChangeKind,
        before: Option<Row>,
        tag: Option<i64>,
    ) -> Self {
        self.next_id += 1;
        self.history.changes.push(Change {
            id: self.next_id,
            txid,
            captured_at: SystemTime::UNIX_EPOCH,
            kind,
            db_user: "netbox".into(),
            request_context: None,
            before,
            tag_id: tag,
            link_table: None,
        });
        self
    }

    fn insert(self, txid: i64) -> Self {
        self.change(txid, ChangeKind::Insert, None, None)
    }

    fn update(self, txid: i64, before: Row) -> Self {
        self.change(txid, ChangeKind::Update, Some(before), None)
    }

    fn delete(self, txid: i64, before: Row) -> Self {
        self.change(txid, ChangeKind::Delete, Some(before), None)
    }

    fn tag(self, txid: i64, tag: i64, added: bool) -> Self {
        let kind = if added {
            ChangeKind::TagAdded
        } else {
            ChangeKind::TagRemoved
        };
        self.change(txid, kind, None, Some(tag))
    }

    fn link_removed(mut self, txid: i64, user_id: i64) -> Self {
        self = self.change(
            txid,
            ChangeKind::LinkRemoved,
            match json!({"id": user_id * 10, "owner_id": 1, "user_id": user_id}) {
                Value::Object(map) => Some(map),
                _ => unreachable!(),
            },
            None,
        );
        if let Some(last) = self.history.changes.last_mut() {
            last.link_table = Some("users_owner_users".into());
        }
        self
    }

    fn logged(mut self, txid: i64, objectchange_id: i64, action: &str, post: Value) -> Self {
        self.next_id += 1;
        self.history.changelog.push(ChangelogEntry {
            id: self.next_id,
            txid,
            captured_at: SystemTime::UNIX_EPOCH,
            objectchange_id,
            request_context: None,
            entry: match json!({"action": action, "request_id": "r", "user_name": "alice", "postchange_data": post}) {
                Value::Object(map) => map,
                _ => unreachable!(),
            },
        });
        self
    }

    fn merge(self, live: Option<Row>, tags: &[i64]) -> Vec<TxChange> {
        self.history.merge(live, tags.iter().copied().collect())
    }
}

fn tags(ids: &[i64]) -> BTreeSet<i64> {
    ids.iter().copied().collect()
}

#[test]
fn create_then_update_is_one_create_with_the_final_state() {
    let merged = Builder::new()
        .insert(7)
        .update(7, row("a", "planned"))
        .merge(Some(row("a", "active")), &[]);
    assert_eq!(merged.len(), 1);
    let m = &merged[0];
    assert_eq!(m.action, Action::Created);
    assert_eq!(m.pre_row, None);
    assert_eq!(m.post_row, Some(row("a", "active")));
    assert_eq!(m.data_row(), Some(&row("a", "active")));
    assert_eq!(m.seq, 101);
}

#[test]
fn update_then_update_keeps_the_first_prechange() {
    let merged = Builder::new()
        .update(7, row("a", "planned"))
        .update(7, row("a", "staged"))
        .merge(Some(row("a", "active")), &[]);
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0].action, Action::Updated);
    assert_eq!(merged[0].pre_row, Some(row("a", "planned")));
    assert_eq!(merged[0].post_row, Some(row("a", "active")));
    assert!(merged[0].last_updated_moved());
}

#[test]
fn create_then_delete_is_a_delete_with_no_snapshots() {
    let merged = Builder::new()
        .insert(7)
        .delete(7, row("a", "active"))
        .merge(None, &[]);
    assert_eq!(merged[0].action, Action::Deleted);
    assert_eq!(merged[0].pre_row, None);
    assert_eq!(merged[0].post_row, None);
    assert_eq!(merged[0].data_row(), Some(&row("a", "active")));
}

#[test]
fn update_then_delete_is_a_delete_with_the_first_prechange() {
    let merged = Builder::new()
        .update(7, row("a", "planned"))
        .delete(7, row("a", "active"))
        .merge(None, &[]);
    assert_eq!(merged[0].action, Action::Deleted);
    assert_eq!(merged[0].pre_row, Some(row("a", "planned")));
    assert_eq!(merged[0].post_row, None);
    assert_eq!(merged[0].data_row(), Some(&row("a", "active")));
}

#[test]
fn a_tag_after_a_save_merges_into_the_save() {
    let merged = Builder::new()
        .update(7, row("a", "planned"))
        .tag(7, 3, true)
        .logged(7, 50, "update", json!({"tags": []}))
        .merge(Some(row("a", "active")), &[3]);
    assert_eq!(merged.len(), 1);
    let m = &merged[0];
    assert_eq!(m.action, Action::Updated);
    assert_eq!(m.pre_tags, tags(&[]));
    assert_eq!(m.post_tags, tags(&[3]));
    assert_eq!((m.row_changes, m.tag_changes), (1, 1));
}

#[test]
fn a_tag_without_a_save_is_an_update() {
    let merged = Builder::new()
        .tag(7, 3, false)
        .merge(Some(row("a", "active")), &[]);
    assert_eq!(merged[0].action, Action::Updated);
    assert_eq!(merged[0].pre_tags, tags(&[3]));
    assert_eq!(merged[0].post_tags, tags(&[]));
    assert_eq!(merged[0].pre_row, merged[0].post_row);
    assert!(!merged[0].is_noise(|_| false));
}

#[test]
fn separate_transactions_chain_their_states_in_commit_order() {
    let merged = Builder::new()
        .update(7, row("a", "planned"))
        .tag(8, 4, true)
        .update(9, row("a", "staged"))
        .merge(Some(row("b", "active")), &[4]);
    assert_eq!(merged.len(), 3);
    assert_eq!(merged.iter().map(|m| m.txid).collect::<Vec<_>>(), [7, 8, 9]);
    assert_eq!(merged[0].pre_row, Some(row("a", "planned")));
    assert_eq!(merged[0].post_row, Some(row("a", "staged")));
    assert_eq!(merged[1].pre_row, Some(row("a", "staged")));
    assert_eq!(merged[1].post_tags, tags(&[4]));
    assert_eq!(merged[2].pre_tags, tags(&[4]));
    assert_eq!(merged[2].post_row, Some(row("b", "active")));
}

#[test]
fn netbox_rewrites_its_change_log_row_in_place() {
    let merged = Builder::new()
        .update(7, row("a", "planned"))
        .logged(7, 50, "update", json!({"tags": []}))
        .tag(7, 3, true)
        .logged(7, 50, "update", json!({"tags": ["gold"]}))
        .merge(Some(row("a", "active")), &[3]);
    assert_eq!(merged[0].changelog.len(), 1);
    assert_eq!(
        merged[0].changelog[0].postchange(),
        Some(&json!({"tags": ["gold"]}))
    );
    assert!(merged[0].logged_by_netbox());
}

#[test]
fn counter_only_updates_are_noise_but_saves_are_not() {
    let mut counted = row("a", "active");
    counted.insert("interface_count".into(), json!(1));
    let mut bumped = row("a", "active");
    bumped.insert("interface_count".into(), json!(2));
    let merged = Builder::new()
        .update(7, counted.clone())
        .merge(Some(bumped), &[]);
    assert!(merged[0].is_noise(|c| c.ends_with("_count")));
    assert!(!merged[0].is_noise(|_| false));
    assert!(!merged[0].last_updated_moved());

    // a save that changes nothing but last_updated
    let saved = row("a2", "active");
    let mut resaved = saved.clone();
    resaved.insert("last_updated".into(), json!("later"));
    let merged = Builder::new().update(7, saved).merge(Some(resaved), &[]);
    assert!(!merged[0].is_noise(|c| c.ends_with("_count")));
    assert!(merged[0].last_updated_moved());
}

#[test]
fn deleted_links_stay_with_their_transaction_and_make_no_change_of_their_own() {
    let merged = Builder::new()
        // a link removed alone (no event), then the links and the object deleted together
        .link_removed(7, 3)
        .link_removed(8, 1)
        .link_removed(8, 2)
        .delete(8, row("a", "active"))
        .merge(None, &[]);
    assert_eq!(merged.len(), 1, "{merged:?}");
    let m = &merged[0];
    assert_eq!(m.action, Action::Deleted);
    assert_eq!(m.txid, 8);
    assert_eq!((m.row_changes, m.tag_changes), (1, 0));
    assert_eq!(
        m.seq, 104,
        "ordered by the object's own change, not its links"
    );
    let users: Vec<_> = m
        .removed_links
        .iter()
        .map(|l| (l.table.as_str(), l.row["user_id"].clone()))
        .collect();
    assert_eq!(
        users,
        [
            ("users_owner_users", json!(1)),
            ("users_owner_users", json!(2))
        ]
    );
}
