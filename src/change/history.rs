//! One object's captured history within a batch, merged into one change per transaction the
//! way NetBox merges the changes of one request (reference docs 3.3):
//!
//! - the prechange state is the state before the transaction's first change, the postchange
//!   state the one after its last;
//! - a create followed by updates is a create; anything ending in a delete is a delete;
//! - a tag added or removed is an update of the tagged object;
//! - a deleted link of a model without change logging is no change of its own: it is kept with
//!   the transaction that deleted it, for rendering the deleted object's many-to-many fields.
//!
//! The capture stores only the row *before* each change, so the row after a change is the row
//! before the next change to the object, or the row as it stands in the batch's snapshot. This
//! module walks an object's history backwards from that live row to recover every state.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde_json::{Map, Value};

/// A row as `row_to_json()` renders it: column name to value.
pub type Row = Map<String, Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
    TagAdded,
    TagRemoved,
    /// A row of a many-to-many table listed in `netbox_outbox.watch_link`, deleted.
    LinkRemoved,
}

impl ChangeKind {
    /// Parses the `kind` column of netbox_outbox.change.
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "I" => ChangeKind::Insert,
            "U" => ChangeKind::Update,
            "D" => ChangeKind::Delete,
            "T" => ChangeKind::TagAdded,
            "t" => ChangeKind::TagRemoved,
            "L" => ChangeKind::LinkRemoved,
            _ => return None,
        })
    }

    fn is_row_change(self) -> bool {
        matches!(
            self,
            ChangeKind::Insert | ChangeKind::Update | ChangeKind::Delete
        )
    }
}

/// One row of netbox_outbox.change.
#[derive(Debug, Clone)]
pub struct Change {
    pub id: i64,
    pub txid: i64,
    pub captured_at: SystemTime,
    pub kind: ChangeKind,
    pub db_user: String,
    /// NetBox's request context (the plugin's `netbox_outbox.request` setting), as JSON text.
    pub request_context: Option<String>,
    pub before: Option<Row>,
    pub tag_id: Option<i64>,
    /// For [`ChangeKind::LinkRemoved`], the many-to-many table the link (`before`) was in.
    pub link_table: Option<String>,
}

/// A link row deleted in the transaction (see [`ChangeKind::LinkRemoved`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RemovedLink {
    /// The many-to-many table, e.g. `users_owner_users`.
    pub table: String,
    pub row: Row,
}

/// One row of netbox_outbox.changelog: a copy of NetBox's core_objectchange row.
#[derive(Debug, Clone)]
pub struct ChangelogEntry {
    pub id: i64,
    pub txid: i64,
    pub captured_at: SystemTime,
    pub objectchange_id: i64,
    /// NetBox's request context (the plugin's `netbox_outbox.request` setting), as JSON text.
    pub request_context: Option<String>,
    pub entry: Row,
}

impl ChangelogEntry {
    fn field(&self, name: &str) -> Option<&str> {
        self.entry.get(name).and_then(Value::as_str)
    }

    /// NetBox's request id (`request_id`, a UUID).
    pub fn request_id(&self) -> Option<&str> {
        self.field("request_id")
    }

    pub fn user_name(&self) -> Option<&str> {
        self.field("user_name")
    }

    /// `create`, `update` or `delete`.
    pub fn action(&self) -> Option<&str> {
        self.field("action")
    }

    pub fn prechange(&self) -> Option<&Value> {
        self.entry.get("prechange_data").filter(|v| !v.is_null())
    }

    pub fn postchange(&self) -> Option<&Value> {
        self.entry.get("postchange_data").filter(|v| !v.is_null())
    }
}

/// What happened to the object in the transaction, in NetBox's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

impl Action {
    /// The payload's `event` value.
    pub fn word(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
        }
    }

    /// The event type stored in `extras_eventrule.event_types`.
    pub fn event_type(self) -> &'static str {
        match self {
            Action::Created => "object_created",
            Action::Updated => "object_updated",
            Action::Deleted => "object_deleted",
        }
    }
}

/// An object's changes within one transaction, merged.
#[derive(Debug, Clone)]
pub struct TxChange {
    pub txid: i64,
    pub content_type_id: i32,
    pub object_id: i64,
    /// The id of the first captured change: orders changes to one object by commit.
    pub seq: i64,
    pub committed_at: SystemTime,
    pub action: Action,
    /// The row before the transaction (None for a create).
    pub pre_row: Option<Row>,
    /// The row after the transaction (None for a delete).
    pub post_row: Option<Row>,
    /// For a delete, the row as it was deleted.
    pub deleted_row: Option<Row>,
    pub pre_tags: BTreeSet<i64>,
    pub post_tags: BTreeSet<i64>,
    /// NetBox's change log entries for the object in this transaction: the latest version of
    /// each, in the order NetBox wrote them.
    pub changelog: Vec<ChangelogEntry>,
    /// Captured row changes (inserts, updates, deletes) in the transaction.
    pub row_changes: usize,
    /// Tags added or removed in the transaction.
    pub tag_changes: usize,
    /// The NetBox plugin's request context, if any change carried one.
    pub request_context: Option<String>,
    pub db_user: String,
    /// Links of the object deleted in the transaction, for a model without change logging
    /// (its many-to-many fields as NetBox serialized the deleted object).
    pub removed_links: Vec<RemovedLink>,
}

impl TxChange {
    /// The row `data` describes: the row after the change, or as it was deleted.
    pub fn data_row(&self) -> Option<&Row> {
        match self.action {
            Action::Deleted => self.deleted_row.as_ref().or(self.pre_row.as_ref()),
            _ => self.post_row.as_ref().or(self.pre_row.as_ref()),
        }
    }

    /// Whether the object left no image of itself after this change: created or updated, then
    /// gone without a captured delete (TRUNCATE, a dropped table) before the batch read it.
    pub fn vanished(&self) -> bool {
        self.action != Action::Deleted && self.post_row.is_none()
    }

    /// Whether NetBox wrote a change log entry for this object in this transaction.
    pub fn logged_by_netbox(&self) -> bool {
        !self.changelog.is_empty()
    }

    /// Whether the row's `last_updated` moved: a Django `save()` always moves it; NetBox's own
    /// `QuerySet.update()` calls never do.
    pub fn last_updated_moved(&self) -> bool {
        let before = self.pre_row.as_ref().and_then(|r| r.get("last_updated"));
        let after = self.post_row.as_ref().and_then(|r| r.get("last_updated"));
        self.action == Action::Updated && self.row_changes > 0 && before != after
    }

    /// Whether the transaction changed nothing NetBox reports: only ignored columns (counter
    /// caches and the like) moved, or nothing did, and no tag changed.
    pub fn is_noise(&self, ignored: impl Fn(&str) -> bool) -> bool {
        if self.action != Action::Updated || self.tag_changes > 0 || !self.changelog.is_empty() {
            return false;
        }
        match (&self.pre_row, &self.post_row) {
            (Some(pre), Some(post)) => {
                let relevant = |row: &Row| -> Vec<(String, Value)> {
                    row.iter()
                        .filter(|(k, _)| !ignored(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                relevant(pre) == relevant(post)
            }
            _ => false,
        }
    }
}

/// Everything the batch holds about one object, plus its state in the batch's snapshot.
#[derive(Debug, Default)]
pub struct ObjectHistory {
    pub content_type_id: i32,
    pub object_id: i64,
    /// Captured changes, in id order.
    pub changes: Vec<Change>,
    /// Captured change log entries (each version), in id order.
    pub changelog: Vec<ChangelogEntry>,
}

impl ObjectHistory {
    /// Merges like [`ObjectHistory::merge`] an object that later transactions, left for the
    /// next batch, changed again: `later` holds their changes that the state after this batch
    /// depends on (the row's next change, every tag change; see `assemble::bounds`), which the
    /// row and tags as they stand are walked back through. They yield no change of their own.
    pub fn merge_after(
        mut self,
        later: Vec<Change>,
        live_row: Option<Row>,
        live_tags: BTreeSet<i64>,
    ) -> Vec<TxChange> {
        if later.is_empty() {
            return self.merge(live_row, live_tags);
        }
        let later_txids: BTreeSet<i64> = later.iter().map(|c| c.txid).collect();
        self.changes.extend(later);
        let mut merged = self.merge(live_row, live_tags);
        merged.retain(|c| !later_txids.contains(&c.txid));
        merged
    }

    /// Merges the history into one change per transaction, in commit order, given the row and
    /// tags as they stand in the batch's snapshot.
    pub fn merge(self, live_row: Option<Row>, live_tags: BTreeSet<i64>) -> Vec<TxChange> {
        // Group by transaction, in order of first appearance (which, for one object, is commit
        // order: a second writer waits for the first one's row lock).
        let mut groups: Vec<Group> = Vec::new();
        // Deleted links are no change of their own: set aside, then given to their transaction.
        let (links, changes): (Vec<Change>, Vec<Change>) = self
            .changes
            .into_iter()
            .partition(|c| c.kind == ChangeKind::LinkRemoved);
        let mut changes = changes.into_iter().peekable();
        let mut entries = self.changelog.into_iter().peekable();
        loop {
            let take_change = match (changes.peek(), entries.peek()) {
                (Some(c), Some(e)) => c.id < e.id,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (txid, id) = if take_change {
                let c = changes.peek().expect("peeked");
                (c.txid, c.id)
            } else {
                let e = entries.peek().expect("peeked");
                (e.txid, e.id)
            };
            let group = match groups.iter_mut().position(|g| g.txid == txid) {
                Some(i) => &mut groups[i],
                None => {
                    groups.push(Group::new(txid, id));
                    groups.last_mut().expect("just pushed")
                }
            };
            if take_change {
                group.changes.push(changes.next().expect("peeked"));
            } else {
                group.entries.push(entries.next().expect("peeked"));
            }
        }
        for link in links {
            if let (Some(group), Some(table), Some(row)) = (
                groups.iter_mut().find(|g| g.txid == link.txid),
                link.link_table,
                link.before,
            ) {
                group.links.push(RemovedLink { table, row });
            }
        }

        // Walk backwards from the live state to recover the state before and after each group.
        let mut row = live_row;
        let mut tags = live_tags;
        let mut merged = Vec::with_capacity(groups.len());
        for group in groups.into_iter().rev() {
            let post_row = row.clone();
            let post_tags = tags.clone();
            let mut deleted_row = None;
            for change in group.changes.iter().rev() {
                match change.kind {
                    ChangeKind::Insert => row = None,
                    ChangeKind::Update => row = change.before.clone(),
                    ChangeKind::Delete => {
                        if deleted_row.is_none() {
                            deleted_row = change.before.clone();
                        }
                        row = change.before.clone();
                    }
                    ChangeKind::TagAdded => {
                        if let Some(tag) = change.tag_id {
                            tags.remove(&tag);
                        }
                    }
                    ChangeKind::TagRemoved => {
                        if let Some(tag) = change.tag_id {
                            tags.insert(tag);
                        }
                    }
                    ChangeKind::LinkRemoved => {}
                }
            }
            merged.push(group.finish(
                self.content_type_id,
                self.object_id,
                row.clone(),
                post_row,
                deleted_row,
                tags.clone(),
                post_tags,
            ));
        }
        merged.reverse();
        merged
    }
}

struct Group {
    txid: i64,
    seq: i64,
    changes: Vec<Change>,
    entries: Vec<ChangelogEntry>,
    links: Vec<RemovedLink>,
}

impl Group {
    fn new(txid: i64, seq: i64) -> Self {
        Group {
            txid,
            seq,
            changes: Vec::new(),
            entries: Vec::new(),
            links: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        self,
        content_type_id: i32,
        object_id: i64,
        pre_row: Option<Row>,
        post_row: Option<Row>,
        deleted_row: Option<Row>,
        pre_tags: BTreeSet<i64>,
        post_tags: BTreeSet<i64>,
    ) -> TxChange {
        let row_kinds: Vec<ChangeKind> = self
            .changes
            .iter()
            .map(|c| c.kind)
            .filter(|k| k.is_row_change())
            .collect();
        let logged_delete = self.entries.iter().any(|e| e.action() == Some("delete"));
        let logged_create = self
            .entries
            .first()
            .is_some_and(|e| e.action() == Some("create"));
        let action = match (row_kinds.first(), row_kinds.last()) {
            (_, Some(ChangeKind::Delete)) => Action::Deleted,
            (Some(ChangeKind::Insert), _) => Action::Created,
            (None, None) if logged_delete => Action::Deleted,
            (None, None) if logged_create => Action::Created,
            _ => Action::Updated,
        };
        // NetBox rewrites a change log row in place when tags change after a save: keep the
        // latest version of each, in the order NetBox first wrote them.
        let mut changelog: Vec<ChangelogEntry> = Vec::new();
        for entry in self.entries {
            match changelog
                .iter_mut()
                .find(|e| e.objectchange_id == entry.objectchange_id)
            {
                Some(existing) => *existing = entry,
                None => changelog.push(entry),
            }
        }
        changelog.sort_by_key(|e| e.objectchange_id);
        let committed_at = self
            .changes
            .iter()
            .map(|c| c.captured_at)
            .chain(changelog.iter().map(|e| e.captured_at))
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let first = self.changes.first();
        TxChange {
            txid: self.txid,
            content_type_id,
            object_id,
            seq: self.seq,
            committed_at,
            action,
            pre_row,
            post_row,
            deleted_row,
            pre_tags,
            post_tags,
            row_changes: row_kinds.len(),
            tag_changes: self.changes.len() - row_kinds.len(),
            request_context: self
                .changes
                .iter()
                .find_map(|c| c.request_context.clone())
                .or_else(|| changelog.iter().find_map(|e| e.request_context.clone())),
            db_user: first.map(|c| c.db_user.clone()).unwrap_or_default(),
            changelog,
            removed_links: self.links,
        }
    }
}

#[cfg(test)]
mod tests;
