//! Reading captured changes: one batch is the transactions that committed between the snapshot
//! the previous batch was read with and the current one (the technique of PgQ), up to the end
//! [`super::bounds`] chooses, read one object at a time so a batch streams through bounded memory.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::Row;

use crate::change::history::{Change, ChangeKind, ChangelogEntry, ObjectHistory};
use crate::change::{Row as JsonRow, parse_row, quote_ident};
use crate::db::Tx;

/// A PostgreSQL snapshot (`pg_snapshot`): transactions below `xmin` are finished, those from
/// `xmax` on had not started, those in `xip` were in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub text: String,
    pub xmin: i64,
    pub xmax: i64,
    pub xip: Vec<i64>,
}

impl Snapshot {
    /// Parses `xmin:xmax:xip1,xip2`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<i64>>>()?;
        Some(Snapshot {
            text: text.to_string(),
            xmin,
            xmax,
            xip,
        })
    }
}

/// `content_type_id` and `object_id` (3 and 4) key the rows by object ([`key`]).
pub(super) const CHANGE_COLUMNS: &str = "id, txid, captured_at, content_type_id, object_id, kind::text, db_user, request, before::text, tag_id, link_table";

/// The rows of a batch: committed in `to`, not yet committed in `from`, with a transaction id
/// below the batch's end `$2` (see [`super::bounds`]); those of the content types in `$5`
/// (NetBox's own configuration: rules, webhooks, custom fields) first.
fn batch_query(table: &str, columns: &str) -> String {
    format!(
        "select * from (
         select {columns} from netbox_outbox.{table}
         where txid >= $1 and txid < $2 and pg_visible_in_snapshot(txid::text::xid8, $3::text::pg_snapshot)
         union all
         select {columns} from netbox_outbox.{table}
         where txid = any($4) and pg_visible_in_snapshot(txid::text::xid8, $3::text::pg_snapshot)
         ) batch
         order by content_type_id <> all($5::int[]), content_type_id, object_id, id"
    )
}

/// Streams one batch, object by object, through two portals (changes and change log entries)
/// merged on (content type, object id).
pub struct BatchReader<'t> {
    tx: &'t Tx<'t>,
    changes: Portal,
    changelog: Portal,
    first: Vec<i32>,
}

struct Portal {
    portal: tokio_postgres::Portal,
    buffer: std::collections::VecDeque<Row>,
    done: bool,
}

const FETCH: i32 = 2000;

impl Portal {
    async fn peek<'a>(&'a mut self, tx: &Tx<'_>) -> Result<Option<&'a Row>, tokio_postgres::Error> {
        if self.buffer.is_empty() && !self.done {
            let rows = tx.query_portal(&self.portal, FETCH).await?;
            self.done = rows.len() < FETCH as usize;
            self.buffer.extend(rows);
        }
        Ok(self.buffer.front())
    }

    async fn next(&mut self, tx: &Tx<'_>) -> Result<Option<Row>, tokio_postgres::Error> {
        self.peek(tx).await?;
        Ok(self.buffer.pop_front())
    }
}

/// A row's place in the batch's order (see [`batch_query`]).
fn key(first: &[i32], row: &Row) -> (bool, i32, i64) {
    let content_type: i32 = row.get("content_type_id");
    (
        !first.contains(&content_type),
        content_type,
        row.get("object_id"),
    )
}

impl<'t> BatchReader<'t> {
    /// Opens the batch between `from` and `to`, up to transaction id `end`; the objects of the
    /// content types in `first` come before all others.
    pub async fn open(
        tx: &'t Tx<'t>,
        from: &Snapshot,
        end: i64,
        to: &Snapshot,
        first: Vec<i32>,
    ) -> Result<BatchReader<'t>, tokio_postgres::Error> {
        let changes = tx.prepared(&batch_query("change", CHANGE_COLUMNS)).await?;
        let changelog = tx
            .prepared(&batch_query(
                "changelog",
                "id, txid, captured_at, content_type_id, object_id, objectchange_id, request, entry::text",
            ))
            .await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&from.xmax, &end, &to.text, &from.xip, &first];
        Ok(BatchReader {
            changes: Portal {
                portal: tx.bind(&changes, &params).await?,
                buffer: Default::default(),
                done: false,
            },
            changelog: Portal {
                portal: tx.bind(&changelog, &params).await?,
                buffer: Default::default(),
                done: false,
            },
            tx,
            first,
        })
    }

    /// The next object's history in the batch, or `None` at the end.
    pub async fn next_object(&mut self) -> Result<Option<ObjectHistory>, tokio_postgres::Error> {
        let first = std::mem::take(&mut self.first);
        let key = |row: &Row| key(&first, row);
        let object = self.next_key(&key).await?;
        let result = match object {
            None => None,
            Some(object) => Some(self.read_object(object, &key).await?),
        };
        self.first = first;
        Ok(result)
    }

    async fn next_key(
        &mut self,
        key: &impl Fn(&Row) -> (bool, i32, i64),
    ) -> Result<Option<(bool, i32, i64)>, tokio_postgres::Error> {
        let next_change = self.changes.peek(self.tx).await?.map(key);
        let next_entry = self.changelog.peek(self.tx).await?.map(key);
        Ok(match (next_change, next_entry) {
            (None, None) => None,
            (Some(a), None) => Some(a),
            (None, Some(b)) => Some(b),
            (Some(a), Some(b)) => Some(a.min(b)),
        })
    }

    async fn read_object(
        &mut self,
        object: (bool, i32, i64),
        key: &impl Fn(&Row) -> (bool, i32, i64),
    ) -> Result<ObjectHistory, tokio_postgres::Error> {
        let mut history = ObjectHistory {
            content_type_id: object.1,
            object_id: object.2,
            ..Default::default()
        };
        while self.changes.peek(self.tx).await?.map(key) == Some(object) {
            let row = self.changes.next(self.tx).await?.expect("peeked");
            if let Some(change) = change_from(&row) {
                history.changes.push(change);
            }
        }
        while self.changelog.peek(self.tx).await?.map(key) == Some(object) {
            let row = self.changelog.next(self.tx).await?.expect("peeked");
            history.changelog.push(ChangelogEntry {
                id: row.get(0),
                txid: row.get(1),
                captured_at: row.get(2),
                objectchange_id: row.get(5),
                request_context: row.get(6),
                entry: parse_row(row.get::<_, Option<String>>(7).as_deref()).unwrap_or_default(),
            });
        }
        Ok(history)
    }
}

pub(super) fn change_from(row: &Row) -> Option<Change> {
    Some(Change {
        id: row.get(0),
        txid: row.get(1),
        captured_at: row.get(2),
        kind: ChangeKind::from_code(row.get::<_, &str>(5))?,
        db_user: row.get(6),
        request_context: row.get(7),
        before: parse_row(row.get::<_, Option<String>>(8).as_deref()),
        tag_id: row.get(9),
        link_table: row.get(10),
    })
}

/// NetBox's request and user for each of `txids` (transactions of the batch) that wrote change
/// log entries: those of its first entry.
pub async fn netbox_transactions(
    tx: &Tx<'_>,
    txids: &[i64],
) -> Result<HashMap<i64, (String, String)>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "select distinct on (txid) txid, entry->>'request_id', entry->>'user_name'
             from netbox_outbox.changelog where txid = any($1)
             order by txid, id",
            &[&txids],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let request: Option<String> = r.get(1);
            let user: Option<String> = r.get(2);
            Some((r.get(0), (request?, user.unwrap_or_default())))
        })
        .collect())
}

/// Which of `tables` (in schema public) exist in the transaction's snapshot.
pub async fn existing_tables(
    tx: &Tx<'_>,
    tables: &[String],
) -> Result<std::collections::HashSet<String>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "select t from unnest($1::text[]) t where to_regclass(format('public.%I', t)) is not null",
            &[&tables],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The rows of some objects of one table as they stand in the transaction's snapshot.
pub async fn live_rows(
    tx: &Tx<'_>,
    table: &str,
    ids: &[i64],
) -> Result<HashMap<i64, JsonRow>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &format!(
                "select t.id::bigint, row_to_json(t)::text from public.{} t where t.id = any($1)",
                quote_ident(table)
            ),
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                r.get(0),
                parse_row(r.get::<_, Option<String>>(1).as_deref())?,
            ))
        })
        .collect())
}

/// The tags of some objects of one content type, as they stand in the transaction's snapshot.
pub async fn live_tags(
    tx: &Tx<'_>,
    content_type_id: i32,
    ids: &[i64],
) -> Result<HashMap<i64, BTreeSet<i64>>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "select object_id::bigint, tag_id from extras_taggeditem
             where content_type_id = $1 and object_id = any($2::bigint[]::int[])",
            &[&content_type_id, &ids],
        )
        .await?;
    let mut tags: HashMap<i64, BTreeSet<i64>> = HashMap::new();
    for r in rows {
        tags.entry(r.get(0)).or_default().insert(r.get(1));
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse() {
        let s = Snapshot::parse("100:105:101,103").unwrap();
        assert_eq!((s.xmin, s.xmax, s.xip), (100, 105, vec![101, 103]));
        let s = Snapshot::parse("7:7:").unwrap();
        assert!(s.xip.is_empty());
        assert!(Snapshot::parse("x:1:").is_none());
    }
}
