//! Events deferred because their model could not be read or rendered (a column a lookup needs
//! was renamed, SELECT on a table is missing): kept in `netbox_outbox.deferred` and tried again
//! every `assembly.deferred_retry_interval`, so that fixing the schema or the grant is all an
//! operator has to do.
//!
//! Deferring (rather than rejecting) keeps the event whole: which rules match is only known
//! once `data` renders, so nothing is decided until then. The price is that `data` shows the
//! object as it stands when the retry renders it (for a delete, as the capture saw it last),
//! as `replay --rerender` does, not as it stood at the original commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use metrics::gauge;
use tracing::{info, warn};

use super::build::{Event, standing_change};
use super::{Assembler, isolated, source, store};
use crate::change::{Action, Row, TxChange};
use crate::db::Tx;
use crate::metrics as m;
use crate::netbox;

/// A deferred event, as stored.
struct Deferred {
    event_id: i64,
    object_id: i64,
    action: Action,
    seq: i64,
    request_id: String,
    user_name: String,
    committed_at: SystemTime,
}

impl Assembler {
    /// Tries the deferred events again (up to a chunk of them, oldest first). Those whose model
    /// now renders get their deliveries and leave the table; the others keep waiting with the
    /// latest reason. Returns the number of deliveries queued.
    pub(super) async fn retry_deferred(&self, tx: &Tx<'_>) -> Result<u64, tokio_postgres::Error> {
        let rows = tx
            .query(
                "select f.event_id, e.content_type_id, e.object_id, e.event, e.seq,
                        e.request_id::text, e.user_name, e.committed_at
                 from netbox_outbox.deferred f join netbox_outbox.event e on e.id = f.event_id
                 order by f.event_id limit $1",
                &[&(self.config.assembly.chunk_size as i64)],
            )
            .await?;
        let mut by_model: BTreeMap<i32, Vec<Deferred>> = BTreeMap::new();
        for r in &rows {
            let action = match r.get::<_, &str>(3) {
                "created" => Action::Created,
                "deleted" => Action::Deleted,
                _ => Action::Updated,
            };
            by_model.entry(r.get(1)).or_default().push(Deferred {
                event_id: r.get(0),
                object_id: r.get(2),
                action,
                seq: r.get(4),
                request_id: r.get(5),
                user_name: r.get(6),
                committed_at: r.get(7),
            });
        }
        let mut queued = 0;
        for (model, deferred) in by_model {
            queued += self.retry_model(tx, model, deferred).await?;
        }
        let waiting: i64 = tx
            .query_one("select count(*) from netbox_outbox.deferred", &[])
            .await?
            .get(0);
        gauge!(m::DEFERRED_EVENTS).set(waiting as f64);
        Ok(queued)
    }

    async fn retry_model(
        &self,
        tx: &Tx<'_>,
        model: i32,
        deferred: Vec<Deferred>,
    ) -> Result<u64, tokio_postgres::Error> {
        let object_type = self.netbox.object_type(model).unwrap_or_default();
        let ids: Vec<i64> = deferred.iter().map(|d| d.event_id).collect();
        let attempt = isolated(tx, async {
            let changes = self.current_changes(tx, model, &deferred).await?;
            let present: Vec<&TxChange> = changes.iter().flatten().collect();
            let rendered = netbox::render(tx, &self.netbox, 0, present.iter().copied()).await?;
            Ok((changes, rendered))
        })
        .await?;
        let (changes, rendered) = match attempt {
            Ok(done) => done,
            Err(reason) => {
                tx.execute(
                    "update netbox_outbox.deferred
                     set attempts = attempts + 1, retried_at = now(), reason = $2
                     where event_id = any($1)",
                    &[&ids, &super::deferral_reason(&object_type, &reason)],
                )
                .await?;
                warn!(model = %object_type, events = ids.len(), reason = %reason,
                      "deferred events still cannot be read; retried again later");
                return Ok(0);
            }
        };

        // The present changes' requests are built together, then each event gets its own.
        let mut rendered = rendered.into_iter();
        let rendered: Vec<Option<netbox::Rendered>> = changes
            .iter()
            .map(|change| {
                change
                    .as_ref()
                    .map(|_| rendered.next().expect("one rendering per present change"))
            })
            .collect();
        let events: Vec<(usize, Event<'_>)> = deferred
            .iter()
            .zip(changes.iter().zip(&rendered))
            .enumerate()
            .filter_map(|(index, (event, (change, rendered)))| {
                let event = Event::new(
                    change.as_ref()?,
                    rendered.as_ref()?,
                    &object_type,
                    (&event.request_id, &event.user_name),
                    &self.netbox,
                );
                Some((index, event))
            })
            .collect();
        let mut built = self
            .builder
            .deliveries(&self.rules, events.iter().map(|(i, e)| (*i, e)))
            .await
            .into_iter();
        drop(events);
        let mut deliveries = Vec::new();
        let mut counts: Vec<i32> = Vec::new();
        for (event, change) in deferred.iter().zip(&changes) {
            if change.is_none() {
                // Gone since, with no captured image left to render it from.
                warn!(model = %object_type, object_id = event.object_id, event_id = event.event_id,
                      "deferred event dropped: the object no longer exists and no captured \
                       image of it is left");
                counts.push(0);
                continue;
            }
            let built = built.next().expect("deliveries for each present change");
            counts.push(built.len() as i32);
            deliveries.extend(built);
        }
        let queued = store::insert_deliveries(tx, &ids, &deliveries).await?;
        tx.execute(
            "update netbox_outbox.event e set deliveries = n.n
             from unnest($1::bigint[], $2::int[]) as n(id, n) where e.id = n.id",
            &[&ids, &counts],
        )
        .await?;
        tx.execute(
            "delete from netbox_outbox.deferred where event_id = any($1)",
            &[&ids],
        )
        .await?;
        info!(model = %object_type, events = ids.len(), deliveries = queued,
              "deferred events rendered and queued: the model reads again");
        Ok(queued)
    }

    /// Each deferred event as a change to render now: the object's current row and tags (for a
    /// delete, its last captured image); None where the object is gone without a trace.
    async fn current_changes(
        &self,
        tx: &Tx<'_>,
        model: i32,
        deferred: &[Deferred],
    ) -> Result<Vec<Option<TxChange>>, tokio_postgres::Error> {
        let ids: Vec<i64> = deferred.iter().map(|d| d.object_id).collect();
        let mut rows: HashMap<i64, Row> = match self.netbox.table(model) {
            Some(table)
                if source::existing_tables(tx, std::slice::from_ref(&table))
                    .await?
                    .contains(&table) =>
            {
                source::live_rows(tx, &table, &ids).await?
            }
            _ => HashMap::new(),
        };
        let tags = source::live_tags(tx, model, &ids).await?;
        let mut last_images: HashMap<i64, Row> = HashMap::new();
        for r in tx
            .query(
                "select distinct on (object_id) object_id, before::text from netbox_outbox.change
                 where content_type_id = $1 and object_id = any($2) and kind = 'D'
                 order by object_id, id desc",
                &[&model, &ids],
            )
            .await?
        {
            if let Some(row) = crate::change::parse_row(r.get::<_, Option<String>>(1).as_deref()) {
                last_images.insert(r.get(0), row);
            }
        }
        Ok(deferred
            .iter()
            .map(|d| {
                let row = match d.action {
                    Action::Deleted => last_images.get(&d.object_id).cloned(),
                    _ => rows
                        .remove(&d.object_id)
                        .or_else(|| last_images.get(&d.object_id).cloned()),
                }?;
                let tags: BTreeSet<i64> = tags.get(&d.object_id).cloned().unwrap_or_default();
                Some(standing_change(
                    model,
                    d.object_id,
                    d.action,
                    row,
                    tags,
                    d.seq,
                    d.committed_at,
                    d.user_name.clone(),
                ))
            })
            .collect())
    }
}
