//! Where a batch ends: a prefix of the unread transactions, about `assembly.batch_changes`
//! changes, so a batch holds its snapshot briefly and the first webhooks of a long backlog go out
//! within seconds.
//!
//! The unread transactions are those committed in the current snapshot `to` and not in the
//! cursor `from` (the technique of PgQ). A batch takes those whose id is below `end`, plus
//! those `from` saw in progress; transactions are never split, so one transaction's changes to
//! an object still merge into one event. Three things make the prefix safe:
//!
//! - **Order.** Transaction ids are handed out when a transaction first writes, not when it
//!   commits, so a transaction left for later (id >= `end`) may have changed an object before one
//!   in the batch did. One object's changes are ordered by the capture's uncached sequence
//!   (a second writer waits for the first one's row lock), so [`conflicts`] looks, per object,
//!   at the change just before the batch's last one: if it was left for later, `end` moves below
//!   the transactions that touched that object and the check runs again. When it cannot move
//!   (the object was touched by a transaction `from` saw in progress) the batch takes the whole
//!   window, which is always safe.
//! - **State after the batch.** The capture stores the row *before* each change, and the row
//!   `data` shows after an object's last change in the batch is the row before its next change,
//!   if a later transaction changed it again ([`later_changes`]), not the row as it stands now.
//! - **The cursor.** What the batch read is again a snapshot ([`Cut::cursor`]): every
//!   transaction below `end`, but those still in progress in `to`.
//!
//! The index `change_object` (migration V14) makes both lookups a few steps per object.

use std::collections::HashMap;

use crate::db::Tx;

use super::source::{CHANGE_COLUMNS, Snapshot, change_from};
use crate::change::history::Change;

/// A batch's place in the unread transactions.
#[derive(Debug, Clone)]
pub struct Cut {
    /// Transactions from `from.xmax` up to, not including, this id are read (with `from.xip`).
    pub end: i64,
    /// Whether unread transactions remain after this batch.
    pub more: bool,
    /// When `more`: the objects the batch changes.
    touched: Vec<Touched>,
}

impl Cut {
    /// The whole window: everything committed in `to`.
    pub fn whole(to: &Snapshot) -> Self {
        Cut {
            end: to.xmax,
            more: false,
            touched: Vec::new(),
        }
    }

    /// The cursor after this batch, as `pg_snapshot` text: every transaction below `end` is read
    /// but those `to` saw in progress, which the next batch reads once they commit.
    pub fn cursor(&self, to: &Snapshot) -> String {
        if !self.more {
            return to.text.clone();
        }
        let xip: Vec<i64> = to.xip.iter().copied().filter(|x| *x < self.end).collect();
        let xmin = xip.first().copied().unwrap_or(self.end);
        let list: Vec<String> = xip.iter().map(i64::to_string).collect();
        format!("{xmin}:{}:{}", self.end, list.join(","))
    }
}

/// Finds where a batch of about `limit` changes ends, given the number of transaction ids one
/// batch spanned last time (`step`, updated for the next batch). Counting uses the BRIN index on
/// `txid`, so it costs about what the batch reads.
pub async fn choose(
    tx: &Tx<'_>,
    from: &Snapshot,
    to: &Snapshot,
    limit: usize,
    step: &mut i64,
) -> Result<Cut, tokio_postgres::Error> {
    let limit = limit as i64;
    let mut end = from.xmax;
    let mut counted = 0i64;
    let mut span = (*step).max(1);
    while end < to.xmax && counted < limit {
        let next = end.saturating_add(span).min(to.xmax);
        let n: i64 = tx
            .query_one(
                "select count(*) from netbox_outbox.change where txid >= $1 and txid < $2",
                &[&end, &next],
            )
            .await?
            .get(0);
        if counted + n > 2 * limit && next - end > 1 {
            // Too much at once: look at a shorter span.
            span = ((next - end) / 2).max(1);
            continue;
        }
        counted += n;
        end = next;
        // Ids are shared by every database of the cluster, so long runs of them may have no
        // change here: widen quickly.
        span = span.saturating_mul(2);
    }
    *step = (end - from.xmax).max(1);
    let mut cut = Cut {
        end,
        more: end < to.xmax,
        touched: Vec::new(),
    };
    if cut.more {
        settle(tx, from, to, &mut cut).await?;
    }
    Ok(cut)
}

/// One object the batch changes, and the id of its last change in the batch.
#[derive(Debug, Clone, Copy)]
struct Touched {
    content_type_id: i32,
    object_id: i64,
    last: i64,
    /// The lowest id of the batch's transactions that touched it, below which `end` moves when
    /// the object's order is at stake; None when a transaction `from` saw in progress did.
    first_txid: Option<i64>,
}

/// How many times `end` may move down before a batch takes the whole window instead.
const SETTLE_TRIES: usize = 16;

/// Moves `end` down until no object's change left for later precedes one in the batch.
async fn settle(
    tx: &Tx<'_>,
    from: &Snapshot,
    to: &Snapshot,
    cut: &mut Cut,
) -> Result<(), tokio_postgres::Error> {
    for _ in 0..SETTLE_TRIES {
        let touched = touched(tx, from, to, cut).await?;
        let conflicting = conflicts(tx, from, to, cut, &touched).await?;
        if conflicting.is_empty() {
            cut.touched = touched;
            return Ok(());
        }
        // Every conflicting object's transactions in the batch are left for later (and with
        // them every later id): an object whose order a transaction `from` saw in progress puts
        // at stake cannot be cut at all.
        let lower = conflicting
            .iter()
            .map(|t| t.first_txid)
            .collect::<Option<Vec<i64>>>()
            .and_then(|firsts| firsts.into_iter().min());
        match lower {
            Some(end) if end > from.xmax => cut.end = end,
            _ => break,
        }
    }
    // Only the whole window is sure to keep these objects in order.
    *cut = Cut::whole(to);
    Ok(())
}

/// The rows of the batch: `$1` from.xmax, `$2` end, `$3` to, `$4` from.xip.
const IN_BATCH: &str = "((c.txid >= $1 and c.txid < $2) or c.txid = any($4))
     and pg_visible_in_snapshot(c.txid::text::xid8, $3::text::pg_snapshot)";

async fn touched(
    tx: &Tx<'_>,
    from: &Snapshot,
    to: &Snapshot,
    cut: &Cut,
) -> Result<Vec<Touched>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "select content_type_id, object_id, max(id), min(txid) filter (where txid >= $1),
                    bool_or(txid < $1)
             from (select content_type_id, object_id, id, txid from netbox_outbox.change c
                   where c.txid >= $1 and c.txid < $2
                     and pg_visible_in_snapshot(c.txid::text::xid8, $3::text::pg_snapshot)
                   union all
                   select content_type_id, object_id, id, txid from netbox_outbox.change c
                   where c.txid = any($4)
                     and pg_visible_in_snapshot(c.txid::text::xid8, $3::text::pg_snapshot)) b
             group by 1, 2",
            &[&from.xmax, &cut.end, &to.text, &from.xip],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let in_progress: bool = r.get(4);
            Touched {
                content_type_id: r.get(0),
                object_id: r.get(1),
                last: r.get(2),
                first_txid: if in_progress { None } else { r.get(3) },
            }
        })
        .collect())
}

/// The objects whose change just before the batch's last one was left for later.
async fn conflicts(
    tx: &Tx<'_>,
    from: &Snapshot,
    to: &Snapshot,
    cut: &Cut,
    touched: &[Touched],
) -> Result<Vec<Touched>, tokio_postgres::Error> {
    if touched.is_empty() {
        return Ok(Vec::new());
    }
    let (types, ids, lasts) = arrays(touched);
    // Walking back from the batch's last change, the first change not in the batch is either
    // read already (then so is everything before it: it committed before `from`) or left for
    // later, which is the conflict.
    let rows = tx
        .query(
            &format!(
                "select o.n from unnest($5::int[], $6::bigint[], $7::bigint[])
                   with ordinality o(content_type_id, object_id, last, n)
                 where exists (
                   select from (select c.txid from netbox_outbox.change c
                                where c.content_type_id = o.content_type_id
                                  and c.object_id = o.object_id and c.id < o.last
                                  and not ({IN_BATCH})
                                order by c.id desc limit 1) before_last
                   where before_last.txid >= $2
                     and pg_visible_in_snapshot(before_last.txid::text::xid8, $3::text::pg_snapshot))"
            ),
            &[&from.xmax, &cut.end, &to.text, &from.xip, &types, &ids, &lasts],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| touched[(r.get::<_, i64>(0) - 1) as usize])
        .collect())
}

fn arrays(touched: &[Touched]) -> (Vec<i32>, Vec<i64>, Vec<i64>) {
    (
        touched.iter().map(|t| t.content_type_id).collect(),
        touched.iter().map(|t| t.object_id).collect(),
        touched.iter().map(|t| t.last).collect(),
    )
}

/// For the objects of a cut batch, the changes committed after it that the state after the
/// batch depends on: the first change of the row (its `before` is the row after the batch) and
/// every tag added or removed (the tags as they stand, undone). Keyed by (content type, object).
pub async fn later_changes(
    tx: &Tx<'_>,
    to: &Snapshot,
    cut: &Cut,
) -> Result<HashMap<(i32, i64), Vec<Change>>, tokio_postgres::Error> {
    let mut later: HashMap<(i32, i64), Vec<Change>> = HashMap::new();
    if !cut.more || cut.touched.is_empty() {
        return Ok(later);
    }
    let (types, ids, lasts) = arrays(&cut.touched);
    let columns = CHANGE_COLUMNS
        .split(", ")
        .map(|c| format!("c.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let after = "c.content_type_id = o.content_type_id and c.object_id = o.object_id
                 and c.id > o.last and c.txid >= $1
                 and pg_visible_in_snapshot(c.txid::text::xid8, $2::text::pg_snapshot)";
    let rows = tx
        .query(
            &format!(
                "select l.* from unnest($3::int[], $4::bigint[], $5::bigint[])
                   o(content_type_id, object_id, last)
                 cross join lateral (
                   (select {columns} from netbox_outbox.change c
                    where {after} and c.kind in ('I', 'U', 'D') order by c.id limit 1)
                   union all
                   (select {columns} from netbox_outbox.change c
                    where {after} and c.kind in ('T', 't'))
                 ) l
                 order by l.content_type_id, l.object_id, l.id"
            ),
            &[&cut.end, &to.text, &types, &ids, &lasts],
        )
        .await?;
    for row in rows {
        if let Some(change) = change_from(&row) {
            later
                .entry((row.get("content_type_id"), row.get("object_id")))
                .or_default()
                .push(change);
        }
    }
    Ok(later)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_cursor_keeps_what_was_in_progress() {
        let to = Snapshot::parse("100:200:105,150,190").unwrap();
        let cut = |end| Cut {
            end,
            more: true,
            touched: Vec::new(),
        };
        assert_eq!(cut(160).cursor(&to), "105:160:105,150");
        assert_eq!(cut(101).cursor(&to), "101:101:");
        assert_eq!(Cut::whole(&to).cursor(&to), to.text);
        // the cursor parses back as a snapshot
        let cursor = Snapshot::parse(&cut(160).cursor(&to)).unwrap();
        assert_eq!(
            (cursor.xmin, cursor.xmax, cursor.xip),
            (105, 160, vec![105, 150])
        );
    }
}
