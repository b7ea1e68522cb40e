//! The related rows a payload needs (nested objects, tags, many-to-many links, counts), fetched
//! in batches: rendering records what it misses, [`Lookups::fetch`] gets all of it with one
//! query per table and column, and rendering runs again.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::db::Query;

use serde_json::Value;

use super::config_context::{self, Scope};
use crate::change::Row;
use crate::change::{parse_row, quote_ident};

/// Rows of `table` whose `column` equals a value (a foreign key, or a generic relation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelatedKey {
    pub table: String,
    pub column: String,
    /// For a generic relation: the content type column and its value.
    pub content_type: Option<(String, i32)>,
}

/// What the last rendering pass lacked.
#[derive(Debug, Default)]
pub struct Needs {
    /// Rows by table and id.
    pub rows: BTreeSet<(String, i64)>,
    /// Related rows by key and the value of the key column.
    pub related: BTreeSet<(RelatedKey, i64)>,
    /// Rows deleted within the batch, for nested objects that are gone by its end.
    pub deleted: BTreeSet<(i32, i64)>,
    /// Config contexts matching a device's or virtual machine's scope.
    pub config_contexts: BTreeSet<Scope>,
    /// Objects as they were at a point of a transaction (see [`AsOfKey`]).
    pub as_of: BTreeSet<AsOfKey>,
    /// Rows deleted in a transaction (see [`DeletedKey`]).
    pub deleted_in_tx: BTreeSet<DeletedKey>,
    /// Row counts by table, column and value (see [`CountKey`]).
    pub counts: BTreeSet<(CountKey, i64)>,
}

/// The rows of `table` whose `column` equals a value are counted: what NetBox's REST viewsets
/// annotate a related-object count with (`count_related()`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    pub table: String,
    pub column: String,
}

/// An object (content type, id) as it was in transaction `txid` right after its captured change
/// `after` (0: before the transaction): NetBox serializes an object when it saves it, and the
/// related objects it nests may change later in the same request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AsOfKey {
    pub content_type_id: i32,
    pub object_id: i64,
    pub txid: i64,
    pub after: i64,
}

/// What the capture says of an object at an [`AsOfKey`].
#[derive(Debug, Clone)]
pub enum AsOf {
    /// Not changed later in the transaction: as it stands in the batch.
    Unchanged,
    /// Inserted later in the transaction: it did not exist yet.
    Absent,
    /// Changed later: its image before that change.
    Row(Row),
}

/// Rows of a watched model deleted in transaction `txid` whose `column` held `value` (a cable's
/// terminations, deleted with it): the capture's last image of each.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeletedKey {
    pub content_type_id: i32,
    pub column: String,
    pub value: i64,
    pub txid: i64,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.related.is_empty()
            && self.deleted.is_empty()
            && self.config_contexts.is_empty()
            && self.as_of.is_empty()
            && self.deleted_in_tx.is_empty()
            && self.counts.is_empty()
    }
}

/// Rows fetched so far, as of the batch's snapshot.
#[derive(Debug, Default)]
pub struct Lookups {
    rows: HashMap<(String, i64), Option<Row>>,
    related: HashMap<(RelatedKey, i64), Vec<Row>>,
    deleted_checked: BTreeSet<(i32, i64)>,
    config_contexts: HashMap<Scope, Vec<Value>>,
    as_of: HashMap<AsOfKey, AsOf>,
    deleted_in_tx: HashMap<DeletedKey, Vec<Row>>,
    counts: HashMap<(CountKey, i64), i64>,
    /// The lowest transaction id of the batch, to find its deleted rows cheaply.
    pub batch_txid_floor: i64,
}

/// A cache lookup: found (maybe absent), or not fetched yet.
pub enum Found<T> {
    Yes(T),
    Missing,
}

impl Lookups {
    /// An empty cache for a batch whose transactions start at `batch_txid_floor`.
    pub fn new(batch_txid_floor: i64) -> Self {
        Lookups {
            batch_txid_floor,
            ..Default::default()
        }
    }

    pub fn row(&self, table: &str, id: i64) -> Found<Option<&Row>> {
        match self.rows.get(&(table.to_string(), id)) {
            Some(row) => Found::Yes(row.as_ref()),
            None => Found::Missing,
        }
    }

    pub fn related(&self, key: &RelatedKey, value: i64) -> Found<&[Row]> {
        match self.related.get(&(key.clone(), value)) {
            Some(rows) => Found::Yes(rows.as_slice()),
            None => Found::Missing,
        }
    }

    /// Records a count as [`Lookups::fetch`] would (unit tests render without a database).
    #[cfg(test)]
    pub fn insert_count(&mut self, key: CountKey, value: i64, n: i64) {
        self.counts.insert((key, value), n);
    }

    /// How many rows of `key.table` have `key.column` = `value`.
    pub fn count(&self, key: &CountKey, value: i64) -> Found<i64> {
        match self.counts.get(&(key.clone(), value)) {
            Some(n) => Found::Yes(*n),
            None => Found::Missing,
        }
    }

    /// The data of the config contexts matching a scope, in merge order.
    pub fn config_contexts(&self, scope: &Scope) -> Found<&[Value]> {
        match self.config_contexts.get(scope) {
            Some(data) => Found::Yes(data.as_slice()),
            None => Found::Missing,
        }
    }

    pub fn as_of(&self, key: &AsOfKey) -> Found<&AsOf> {
        match self.as_of.get(key) {
            Some(found) => Found::Yes(found),
            None => Found::Missing,
        }
    }

    pub fn deleted_in_tx(&self, key: &DeletedKey) -> Found<&[Row]> {
        match self.deleted_in_tx.get(key) {
            Some(rows) => Found::Yes(rows.as_slice()),
            None => Found::Missing,
        }
    }

    /// Whether the batch was searched for a deleted row of this object.
    pub fn deleted_checked(&self, content_type_id: i32, id: i64) -> bool {
        self.deleted_checked.contains(&(content_type_id, id))
    }

    /// Fetches everything `needs` lists.
    pub async fn fetch(
        &mut self,
        client: &impl Query,
        needs: Needs,
        table_of: impl Fn(i32) -> Option<String>,
    ) -> Result<(), tokio_postgres::Error> {
        let mut by_table: HashMap<String, Vec<i64>> = HashMap::new();
        for (table, id) in needs.rows {
            by_table.entry(table).or_default().push(id);
        }
        for (table, ids) in by_table {
            let found = rows_by_column(client, &table, "id", None, &ids).await?;
            let mut found: HashMap<i64, Row> = found
                .into_iter()
                .filter_map(|(_, row)| Some((row.get("id")?.as_i64()?, row)))
                .collect();
            for id in ids {
                self.rows.insert((table.clone(), id), found.remove(&id));
            }
        }

        let mut by_key: HashMap<RelatedKey, Vec<i64>> = HashMap::new();
        for (key, value) in needs.related {
            by_key.entry(key).or_default().push(value);
        }
        for (key, values) in by_key {
            let found = rows_by_column(
                client,
                &key.table,
                &key.column,
                key.content_type.as_ref(),
                &values,
            )
            .await?;
            let mut grouped: HashMap<i64, Vec<Row>> = HashMap::new();
            for (value, row) in found {
                grouped.entry(value).or_default().push(row);
            }
            for value in values {
                self.related.insert(
                    (key.clone(), value),
                    grouped.remove(&value).unwrap_or_default(),
                );
            }
        }

        let mut by_count: HashMap<CountKey, Vec<i64>> = HashMap::new();
        for (key, value) in needs.counts {
            by_count.entry(key).or_default().push(value);
        }
        // Which of the counted columns the schema has, all in one statement: a batch counts
        // several (a site's racks, devices, VLANs...), and each check was a round trip.
        let pairs: Vec<(&str, &str)> = by_count
            .keys()
            .map(|k| (k.table.as_str(), k.column.as_str()))
            .collect();
        let present = columns_exist(client, &pairs).await?;
        for (key, values) in by_count {
            let found = if present.contains(&(key.table.clone(), key.column.clone())) {
                count_by_column(client, &key.table, &key.column, &values).await?
            } else {
                HashMap::new()
            };
            for value in values {
                let n = found.get(&value).copied().unwrap_or(0);
                self.counts.insert((key.clone(), value), n);
            }
        }

        if !needs.config_contexts.is_empty() {
            // A database without NetBox's config context tables (or its ltree paths) has no
            // context to apply; a failing query would abort the batch's transaction instead.
            let present = tables_exist(client, config_context::TABLES).await?;
            for scope in needs.config_contexts {
                let data = if present {
                    config_context::matching(client, &scope).await?
                } else {
                    Vec::new()
                };
                self.config_contexts.insert(scope, data);
            }
        }

        for key in needs.as_of {
            let row = client
                .query_opt(
                    "select kind::text, before::text from netbox_outbox.change
                     where txid = $1 and content_type_id = $2 and object_id = $3 and id > $4
                       and kind in ('I', 'U', 'D')
                     order by id limit 1",
                    &[&key.txid, &key.content_type_id, &key.object_id, &key.after],
                )
                .await?;
            let found = match row {
                None => AsOf::Unchanged,
                Some(r) if r.get::<_, &str>(0) == "I" => AsOf::Absent,
                Some(r) => match parse_row(r.get::<_, Option<String>>(1).as_deref()) {
                    Some(before) => AsOf::Row(before),
                    None => AsOf::Unchanged,
                },
            };
            self.as_of.insert(key, found);
        }

        for key in needs.deleted_in_tx {
            let rows = client
                .query(
                    "select before::text from netbox_outbox.change
                     where txid = $1 and content_type_id = $2 and kind = 'D'
                       and before ->> $3 = $4::bigint::text
                     order by id",
                    &[&key.txid, &key.content_type_id, &key.column, &key.value],
                )
                .await?;
            let rows = rows
                .iter()
                .filter_map(|r| parse_row(r.get::<_, Option<String>>(0).as_deref()))
                .collect();
            self.deleted_in_tx.insert(key, rows);
        }

        // Objects deleted within the batch: their last image, from the capture.
        let mut by_type: HashMap<i32, Vec<i64>> = HashMap::new();
        for (ct, id) in needs.deleted {
            by_type.entry(ct).or_default().push(id);
            self.deleted_checked.insert((ct, id));
        }
        for (ct, ids) in by_type {
            let Some(table) = table_of(ct) else { continue };
            let rows = client
                .query(
                    "select distinct on (object_id) object_id, before::text from netbox_outbox.change
                     where txid >= $1 and content_type_id = $2 and object_id = any($3) and kind = 'D'
                     order by object_id, id desc",
                    &[&self.batch_txid_floor, &ct, &ids],
                )
                .await?;
            for r in rows {
                let id: i64 = r.get(0);
                if let Some(row) = parse_row(r.get::<_, Option<String>>(1).as_deref()) {
                    self.rows.insert((table.clone(), id), Some(row));
                }
            }
        }
        Ok(())
    }
}

/// Whether every one of `tables` exists in the public schema.
async fn tables_exist(client: &impl Query, tables: &[&str]) -> Result<bool, tokio_postgres::Error> {
    let names: Vec<String> = tables
        .iter()
        .map(|t| format!("public.{}", quote_ident(t)))
        .collect();
    client
        .query_one(
            "select coalesce(bool_and(to_regclass(t) is not null), true) from unnest($1::text[]) t",
            &[&names],
        )
        .await
        .map(|r| r.get(0))
}

/// Which of the (table, column) pairs the public schema has. A table or column it does not have
/// (a NetBox without that model) counts nothing in [`count_by_column`].
async fn columns_exist(
    client: &impl Query,
    pairs: &[(&str, &str)],
) -> Result<HashSet<(String, String)>, tokio_postgres::Error> {
    if pairs.is_empty() {
        return Ok(HashSet::new());
    }
    let tables: Vec<String> = pairs
        .iter()
        .map(|(t, _)| format!("public.{}", quote_ident(t)))
        .collect();
    let columns: Vec<&str> = pairs.iter().map(|(_, c)| *c).collect();
    let rows = client
        .query(
            "select p.ord from unnest($1::text[], $2::text[]) with ordinality p(tbl, col, ord)
             where exists (select from pg_attribute a
                           where a.attrelid = to_regclass(p.tbl) and a.attname = p.col
                             and a.attnum > 0 and not a.attisdropped)",
            &[&tables, &columns],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (table, column) = pairs[r.get::<_, i64>(0) as usize - 1];
            (table.to_string(), column.to_string())
        })
        .collect())
}

/// `select column, count(*) from table where column = any(values) group by column`: NetBox's
/// `count_related()` for several objects at once, of a column [`columns_exist`] found. One the
/// role may not read fails the query, so the change is deferred with that reason rather than
/// sent with a wrong count.
pub(crate) async fn count_by_column(
    client: &impl Query,
    table: &str,
    column: &str,
    values: &[i64],
) -> Result<HashMap<i64, i64>, tokio_postgres::Error> {
    let column = quote_ident(column);
    let rows = client
        .query(
            &format!(
                "select {column}::bigint, count(*) from public.{} where {column} = any($1::bigint[]) group by {column}",
                quote_ident(table)
            ),
            &[&values],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `select row_to_json(t) from <table> t where <column> = any($ids) [and <ct column> = $ct]`,
/// returning (the column's value, the row). Of a table the role may read only some columns of
/// (users_user, whose password hash the sidecar's role is not granted: docs/privileges.md), the
/// row holds those columns: a whole-row reference would need them all.
async fn rows_by_column(
    client: &impl Query,
    table: &str,
    column: &str,
    content_type: Option<&(String, i32)>,
    values: &[i64],
) -> Result<Vec<(i64, Row)>, tokio_postgres::Error> {
    let found = client
        .query_one(
            "select r is not null, coalesce(has_table_privilege(r, 'select'), false),
                    case when has_table_privilege(r, 'select') then '{}'::text[]
                         else array(select quote_ident(a.attname) from pg_attribute a
                                    where a.attrelid = r and a.attnum > 0 and not a.attisdropped
                                      and has_column_privilege(r, a.attnum, 'select')
                                    order by a.attnum) end
             from to_regclass($1) r",
            &[&format!("public.{}", quote_ident(table))],
        )
        .await?;
    if !found.get::<_, bool>(0) {
        return Ok(Vec::new());
    }
    let source = if found.get::<_, bool>(1) {
        format!("public.{}", quote_ident(table))
    } else {
        let readable: Vec<String> = found.get(2);
        format!(
            "(select {} from public.{})",
            readable.join(", "),
            quote_ident(table)
        )
    };
    let sql = match content_type {
        None => format!(
            "select t.{col}::bigint, row_to_json(t)::text from {source} t where t.{col} = any($1::bigint[])",
            col = quote_ident(column),
        ),
        Some((ct_column, _)) => format!(
            "select t.{col}::bigint, row_to_json(t)::text from {source} t
             where t.{col} = any($1::bigint[]) and t.{ct} = $2",
            col = quote_ident(column),
            ct = quote_ident(ct_column)
        ),
    };
    let rows = match content_type {
        None => client.query(&sql, &[&values]).await?,
        Some((_, ct)) => client.query(&sql, &[&values, ct]).await?,
    };
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                r.get::<_, Option<i64>>(0)?,
                parse_row(r.get::<_, Option<String>>(1).as_deref())?,
            ))
        })
        .collect())
}
