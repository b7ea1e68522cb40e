//! Turning captured changes into events and deliveries.
//!
//! One sidecar at a time reads a batch: the transactions committed since the previous batch, up
//! to about `assembly.batch_changes` changes ([`bounds`]), object by object ([`source`]). Each object's history merges into one change per transaction
//! ([`history`]); each becomes an event if NetBox would send one (see [`Mode`]); each event is
//! matched against the event rules, and each matching rule becomes a delivery with its request
//! rendered ([`build`]) and frozen ([`store`]); a chunk's requests are built while the chunk
//! before it is stored. The batch, its deliveries and the new read position commit
//! together, in a REPEATABLE READ transaction, so the rows read for `data` show the objects as of
//! the batch's commits (an object changed again by a later transaction: as of its last change in
//! the batch, see [`bounds`]), not as they are when webhooks go out.
//!
//! Failure is local: a template, condition or missing webhook rejects one delivery; a model
//! whose rows or related rows cannot be read (a renamed column, a missing grant) defers that
//! model's events ([`deferred`]) under a savepoint, and every other model goes on.

pub mod bounds;
pub mod build;
pub mod deferred;
pub mod source;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use metrics::{counter, histogram};
use tokio_postgres::IsolationLevel;
use tracing::{debug, info, warn};

use self::build::{Builder, Event, attribution};
use self::source::{BatchReader, Snapshot};
use self::store::{NewDeferral, NewDelivery, NewEvent};
use crate::change::Action;
use crate::change::history::{ObjectHistory, TxChange};
use crate::config::Config;
use crate::db::{Session, Tx};
use crate::metrics as m;
use crate::netbox::{self, Netbox};
use crate::rules::RuleSet;

/// The advisory lock that makes one sidecar at a time read changes.
pub const ASSEMBLY_LOCK: i64 = 7418734260116239618;

/// NetBox's models whose changes alter which events are sent, or how.
const CONFIGURATION_MODELS: [&str; 4] = [
    "extras.eventrule",
    "extras.webhook",
    "extras.customfield",
    "extras.customfieldchoiceset",
];

/// Which changes become events: the `capture_mode` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every committed change to a watched table, whoever made it.
    All,
    /// Only what NetBox itself would send: a change NetBox logged in its change log, or an
    /// update by a `save()` (it moves `last_updated`) in a transaction NetBox made (one with a
    /// change log entry, or the plugin's request context).
    Netbox,
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub changes: u64,
    pub events: u64,
    pub deliveries: u64,
    /// Whether committed changes were left for the next batch.
    pub more: bool,
}

/// The state the assembler keeps between batches.
pub struct Assembler {
    config: Config,
    netbox: Netbox,
    rules: RuleSet,
    rules_read: Option<Instant>,
    /// When deferred events were last tried again.
    deferred_tried: Option<Instant>,
    builder: Builder,
    /// How many transaction ids the last bounded batch spanned: where the next one starts
    /// looking for its end.
    txid_step: i64,
    /// Batches rolled back by a serialization failure since the last one that was not.
    conflicts: u32,
}

/// Whether a batch ran.
pub enum Batch {
    /// Another sidecar is reading changes right now.
    Busy,
    /// The batch was rolled back by a serialization failure: a delivery's queue head was
    /// changed by the recorder under the batch's REPEATABLE READ snapshot (V19 says when). It
    /// is to be run again at once.
    Conflicted,
    Done(BatchReport),
}

/// A chunk merged and rendered: the changes that are events, their renderings, the models that
/// could not be read or rendered (with the reason) and NetBox's request ids where needed.
#[derive(Default)]
struct Merged {
    changes: Vec<TxChange>,
    rendered: HashMap<(i32, i64, i64), netbox::Rendered>,
    failing: BTreeMap<i32, String>,
    netbox_txs: HashMap<i64, (String, String)>,
}

/// What a chunk produced, to store.
#[derive(Default)]
struct Produced {
    events: Vec<NewEvent>,
    deliveries: Vec<NewDelivery>,
    deferrals: Vec<NewDeferral>,
}

impl Produced {
    /// Stores it; returns the number of deliveries stored.
    async fn store(&self, tx: &Tx<'_>) -> Result<u64, tokio_postgres::Error> {
        store::insert(tx, &self.events, &self.deliveries, &self.deferrals).await
    }
}

/// Serialization failures in a row after which a batch counts as failing (and backs off): a
/// conflict that comes back every time is not a race any more.
const MOST_CONFLICTS: u32 = 10;

impl Assembler {
    pub fn new(config: Config) -> Self {
        Assembler {
            netbox: Netbox::new(config.netbox.clone()),
            builder: Builder::new(&config),
            rules: RuleSet::default(),
            rules_read: None,
            deferred_tried: None,
            txid_step: config.assembly.batch_changes as i64,
            conflicts: 0,
            config,
        }
    }

    /// Reads and processes one batch, if no other sidecar is doing so.
    ///
    /// Only transaction-scoped locks are used, so this works behind PgBouncer in transaction
    /// mode too. The REPEATABLE READ snapshot is taken by the first statement, which takes the
    /// lock; if the previous batch committed after that snapshot, locking the read position
    /// fails with a serialization error, and the batch is simply tried again.
    pub async fn run_batch(
        &mut self,
        session: &mut Session,
    ) -> Result<Batch, tokio_postgres::Error> {
        let started = Instant::now();
        let tx = session.transaction(IsolationLevel::RepeatableRead).await?;
        let locked: bool = tx
            .query_one("select pg_try_advisory_xact_lock($1)", &[&ASSEMBLY_LOCK])
            .await?
            .get(0);
        if !locked {
            tx.rollback().await?;
            return Ok(Batch::Busy);
        }
        let row = match tx
            .query_one(
                "select c.snapshot::text, pg_current_snapshot()::text,
                        (select value from netbox_outbox.setting where name = 'capture_mode')
                 from netbox_outbox.cursor c where c.name = 'changes' for update",
                &[],
            )
            .await
        {
            Ok(row) => row,
            Err(e)
                if e.code()
                    == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) =>
            {
                // Another sidecar's batch committed after our snapshot: start over.
                tx.rollback().await?;
                return Ok(Batch::Busy);
            }
            Err(e) => return Err(e),
        };
        match self.process(tx, row, started).await {
            Ok(report) => {
                self.conflicts = 0;
                Ok(Batch::Done(report))
            }
            Err(e)
                if e.code()
                    == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
                    && self.conflicts < MOST_CONFLICTS =>
            {
                // The transaction rolled back when dropped; nothing was written.
                self.conflicts += 1;
                counter!(m::BATCH_CONFLICTS).increment(1);
                info!(error = %crate::error_chain(&e), in_a_row = self.conflicts,
                      "a batch of changes met a concurrent change to a delivery queue; running it again");
                Ok(Batch::Conflicted)
            }
            Err(e) => {
                self.conflicts = 0;
                Err(e)
            }
        }
    }

    async fn process(
        &mut self,
        tx: Tx<'_>,
        row: tokio_postgres::Row,
        started: Instant,
    ) -> Result<BatchReport, tokio_postgres::Error> {
        let from = Snapshot::parse(row.get(0)).expect("pg_snapshot text");
        let to = Snapshot::parse(row.get(1)).expect("pg_snapshot text");
        let mode = match row.get::<_, Option<&str>>(2) {
            Some("netbox") => Mode::Netbox,
            _ => Mode::All,
        };
        let retry_due = self
            .deferred_tried
            .is_none_or(|t| t.elapsed() >= self.config.assembly.deferred_retry_interval);
        if from.xmax == to.xmax && from.xip == to.xip && !retry_due {
            tx.rollback().await?;
            return Ok(BatchReport::default());
        }

        self.refresh_configuration(&tx, false).await?;
        let mut report = BatchReport::default();
        if retry_due {
            // Before the new changes, so a model fixed since gets its older events out first.
            report.deliveries += self.retry_deferred(&tx).await?;
            self.deferred_tried = Some(Instant::now());
        }
        let cut = bounds::choose(
            &tx,
            &from,
            &to,
            self.config.assembly.batch_changes,
            &mut self.txid_step,
        )
        .await?;
        report.more = cut.more;
        let mut later = bounds::later_changes(&tx, &to, &cut).await?;
        // NetBox matches a request's events against the rules as they are when the request
        // ends, so a rule or webhook created just before a change must apply to it: the batch
        // reads changes of NetBox's configuration first and, if there are any, re-reads the
        // configuration before assembling anything.
        let configuration: Vec<i32> = CONFIGURATION_MODELS
            .iter()
            .filter_map(|model| self.netbox.content_type_id(model))
            .collect();
        let mut reader = BatchReader::open(&tx, &from, cut.end, &to, configuration.clone()).await?;
        let mut reading_configuration = true;
        let mut configuration_changed = false;
        let mut chunk: Vec<ObjectHistory> = Vec::new();
        // The previous chunk's events and deliveries: stored while the next chunk's requests are
        // built (the one stretch of a chunk that sends no statement of its own).
        let mut pending = Produced::default();
        loop {
            let next = reader.next_object().await?;
            let end = next.is_none();
            if reading_configuration
                && next
                    .as_ref()
                    .is_none_or(|h| !configuration.contains(&h.content_type_id))
            {
                reading_configuration = false;
                if configuration_changed {
                    self.refresh_configuration(&tx, true).await?;
                }
            }
            if let Some(history) = next {
                configuration_changed |= reading_configuration;
                report.changes += (history.changes.len() + history.changelog.len()) as u64;
                chunk.push(history);
            }
            if (chunk.len() >= self.config.assembly.chunk_size && !reading_configuration)
                || (end && !chunk.is_empty())
            {
                let merged = self
                    .process_chunk(&tx, std::mem::take(&mut chunk), &mut later, mode, from.xmin)
                    .await?;
                let mut produced = Produced::default();
                let (stored, ()) =
                    tokio::join!(pending.store(&tx), self.events_of(merged, &mut produced));
                report.events += pending.events.len() as u64;
                report.deliveries += stored?;
                pending = produced;
            }
            if end {
                break;
            }
        }
        report.events += pending.events.len() as u64;
        report.deliveries += pending.store(&tx).await?;
        drop(reader);
        tx.execute(
            "update netbox_outbox.cursor set snapshot = $1::text::pg_snapshot, advanced_at = now()
             where name = 'changes'",
            &[&cut.cursor(&to)],
        )
        .await?;
        if report.deliveries > 0 {
            // wake the dispatchers of every sidecar (this one is woken in-process as well)
            tx.execute("select pg_notify('netbox_outbox', 'deliveries')", &[])
                .await?;
        }
        tx.commit().await?;
        counter!(m::CHANGES_READ).increment(report.changes);
        histogram!(m::ASSEMBLY_SECONDS).record(started.elapsed().as_secs_f64());
        if report.changes > 0 {
            debug!(
                changes = report.changes,
                more = report.more,
                events = report.events,
                deliveries = report.deliveries,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "batch processed"
            );
        }
        Ok(report)
    }

    /// Whether NetBox logs the changes of a content type's model (true when unknown).
    fn logs_changes(&self, content_type_id: i32) -> bool {
        self.netbox
            .object_type(content_type_id)
            .and_then(|name| netbox::catalogue::catalogue().model(&name))
            .is_none_or(|model| model.change_logging)
    }

    /// Re-reads rules, webhooks, custom fields and content types when they may have changed:
    /// every `rules.refresh_interval` (changes made with plain SQL), or at once when `changed`.
    async fn refresh_configuration(
        &mut self,
        tx: &Tx<'_>,
        changed: bool,
    ) -> Result<(), tokio_postgres::Error> {
        let due = changed
            || self
                .rules_read
                .is_none_or(|t| t.elapsed() >= self.config.rules.refresh_interval);
        if !due {
            return Ok(());
        }
        if let Some(rules) = RuleSet::load(
            tx,
            self.config.rules.deliver_netbox_webhook_rules,
            Some(&self.rules),
        )
        .await?
        {
            debug!(rules = rules.rules.len(), "event rules loaded");
            // Logged when the rules change, so once per bad row rather than once per batch.
            for skipped in &rules.skipped {
                warn!(rule = %skipped.name, rule_id = skipped.id, reason = %skipped.reason,
                      "event rule skipped; the other rules are in force");
            }
            self.rules = rules;
        }
        self.netbox.refresh(tx).await?;
        self.rules_read = Some(Instant::now());
        Ok(())
    }

    /// Reads a chunk's current rows, merges each object's history, keeps the changes that are
    /// events and renders them.
    async fn process_chunk(
        &mut self,
        tx: &Tx<'_>,
        chunk: Vec<ObjectHistory>,
        later: &mut HashMap<(i32, i64), Vec<crate::change::history::Change>>,
        mode: Mode,
        txid_floor: i64,
    ) -> Result<Merged, tokio_postgres::Error> {
        // The rows and tags as they stand in the batch's snapshot: the state after each
        // object's last change.
        let mut by_type: HashMap<i32, Vec<i64>> = HashMap::new();
        for h in &chunk {
            by_type
                .entry(h.content_type_id)
                .or_default()
                .push(h.object_id);
        }
        let mut live_rows: HashMap<(i32, i64), crate::change::Row> = HashMap::new();
        let mut live_tags: HashMap<(i32, i64), BTreeSet<i64>> = HashMap::new();
        // Models whose rows could not be read or rendered, with the database's reason.
        let mut failing: BTreeMap<i32, String> = BTreeMap::new();
        let tables: Vec<String> = by_type
            .keys()
            .filter_map(|ct| self.netbox.table(*ct))
            .collect();
        let existing = source::existing_tables(tx, &tables).await?;
        for (ct, ids) in &by_type {
            let table = self.netbox.table(*ct);
            // A table dropped since its changes were captured: its rows are gone, and the
            // captured images are all there is (reading it would fail the whole batch).
            if let Some(table) = &table
                && !existing.contains(table)
            {
                warn!(table = %table, objects = ids.len(),
                      "a watched table no longer exists; its changes are rendered from what was captured");
                continue;
            }
            let read = isolated(tx, async {
                let rows = match &table {
                    Some(table) => source::live_rows(tx, table, ids).await?,
                    None => HashMap::new(),
                };
                Ok((rows, source::live_tags(tx, *ct, ids).await?))
            })
            .await?;
            match read {
                Ok((rows, tags)) => {
                    for (id, row) in rows {
                        live_rows.insert((*ct, id), row);
                    }
                    for (id, tags) in tags {
                        live_tags.insert((*ct, id), tags);
                    }
                }
                Err(reason) => {
                    failing.insert(*ct, reason);
                }
            }
        }

        // Merge, and keep the changes that are events.
        let mut merged: Vec<(TxChange, bool)> = Vec::new();
        for h in chunk {
            let key = (h.content_type_id, h.object_id);
            if !self.netbox.is_watched(h.content_type_id) {
                continue;
            }
            // Without its current row, a model that could not be read merges as if its objects
            // were gone: its events are deferred rather than judged as noise or vanished.
            let unread = failing.contains_key(&h.content_type_id);
            let later = later.remove(&key).unwrap_or_default();
            for change in h.merge_after(
                later,
                live_rows.remove(&key),
                live_tags.remove(&key).unwrap_or_default(),
            ) {
                let table = self
                    .netbox
                    .table(change.content_type_id)
                    .unwrap_or_default();
                if !unread && change.is_noise(|column| self.netbox.is_ignored(&table, column)) {
                    counter!(m::EVENTS, "outcome" => "noise").increment(1);
                    continue;
                }
                if !unread && change.vanished() {
                    // Nothing captured says what the object looked like after this change, so
                    // any payload would be made up (NetBox would not have sent one either:
                    // TRUNCATE and dropped tables bypass its signals).
                    warn!(object_type = %self.netbox.object_type(change.content_type_id).unwrap_or_default(),
                          object_id = change.object_id, action = change.action.word(),
                          "change skipped: the row was gone (TRUNCATE or a dropped table) before it \
                           could be read, and no captured image shows it");
                    counter!(m::EVENTS, "outcome" => "vanished").increment(1);
                    continue;
                }
                merged.push((change, unread));
            }
        }
        // NetBox's request and user, for the changes NetBox did not log themselves, from the
        // change log entries of their transactions (most changes carry their own).
        let unlogged: BTreeSet<i64> = merged
            .iter()
            .filter(|(c, _)| c.changelog.first().and_then(|e| e.request_id()).is_none())
            .map(|(c, _)| c.txid)
            .collect();
        let netbox_txs = if unlogged.is_empty() {
            HashMap::new()
        } else {
            source::netbox_transactions(tx, &unlogged.into_iter().collect::<Vec<_>>()).await?
        };
        let mut changes: Vec<TxChange> = Vec::new();
        for (change, unread) in merged {
            let netbox_tx =
                netbox_txs.contains_key(&change.txid) || change.request_context.is_some();
            let emit = match mode {
                Mode::All => true,
                Mode::Netbox => {
                    change.logged_by_netbox()
                        || (netbox_tx && (unread || change.last_updated_moved()))
                        // NetBox sends the deletes of a model it does not log changes of
                        // (no change log entry marks them), and nothing else of it.
                        || (netbox_tx
                            && change.action == Action::Deleted
                            && !self.logs_changes(change.content_type_id))
                }
            };
            if !emit {
                counter!(m::EVENTS, "outcome" => "filtered").increment(1);
                continue;
            }
            changes.push(change);
        }
        if changes.is_empty() {
            return Ok(Merged::default());
        }

        // Build data and snapshots for the events some rule may match (NetBox builds data lazily
        // too, only when a rule matches).
        let wanted: Vec<&TxChange> = changes
            .iter()
            .filter(|c| {
                self.rules.watches(c.content_type_id) && !failing.contains_key(&c.content_type_id)
            })
            .collect();
        let (rendered, render_failures) = self.render_isolated(tx, txid_floor, &wanted).await?;
        let wanted: Vec<(i32, i64, i64)> = wanted
            .iter()
            .map(|c| (c.content_type_id, c.object_id, c.seq))
            .collect();
        let rendered_by_change: HashMap<(i32, i64, i64), netbox::Rendered> = wanted
            .into_iter()
            .zip(rendered)
            .filter_map(|(key, r)| Some((key, r?)))
            .collect();
        failing.extend(render_failures);
        self.report_failing(&failing, &changes);
        Ok(Merged {
            changes,
            rendered: rendered_by_change,
            failing,
            netbox_txs,
        })
    }

    /// A chunk's events and their deliveries (or deferrals). Every event's requests are built
    /// together (on every core), then each change becomes its event, in order. Sends no
    /// statement.
    async fn events_of(&self, merged: Merged, out: &mut Produced) {
        let Merged {
            changes,
            rendered: mut rendered_by_change,
            failing,
            netbox_txs,
        } = merged;
        let Produced {
            events,
            deliveries,
            deferrals,
        } = out;
        let first_event = events.len();
        let object_types: Vec<String> = changes
            .iter()
            .map(|c| {
                self.netbox
                    .object_type(c.content_type_id)
                    .unwrap_or_default()
            })
            .collect();
        let attributions: Vec<(String, String, &'static str)> = changes
            .iter()
            .map(|c| attribution(c, &netbox_txs))
            .collect();
        let rendered: Vec<Option<netbox::Rendered>> = changes
            .iter()
            .map(|c| rendered_by_change.remove(&(c.content_type_id, c.object_id, c.seq)))
            .collect();
        let to_build: Vec<(usize, Event<'_>)> = changes
            .iter()
            .enumerate()
            .filter_map(|(i, change)| {
                let (request_id, user_name, _) = &attributions[i];
                let event = Event::new(
                    change,
                    rendered[i].as_ref()?,
                    &object_types[i],
                    (request_id, user_name),
                    &self.netbox,
                );
                Some((first_event + i, event))
            })
            .collect();
        let mut built = self
            .builder
            .deliveries(&self.rules, to_build.iter().map(|(i, e)| (*i, e)))
            .await
            .into_iter();
        drop(to_build);
        for (((change, object_type), (request_id, user_name, origin)), rendered) in changes
            .into_iter()
            .zip(object_types)
            .zip(attributions)
            .zip(rendered)
        {
            let event_index = events.len();
            let mut delivered = 0;
            if rendered.is_some() {
                let built = built.next().expect("deliveries for each rendered event");
                delivered = built.len() as i32;
                deliveries.extend(built);
            } else if let Some(reason) = failing.get(&change.content_type_id)
                && self.rules.watches(change.content_type_id)
            {
                let (rules, webhooks) = self.candidate_names(&change);
                deferrals.push(NewDeferral {
                    event: event_index,
                    reason: deferral_reason(&object_type, reason),
                    event_rules: rules,
                    webhooks,
                });
                counter!(m::EVENTS, "outcome" => "deferred").increment(1);
                counter!(m::EVENTS_DEFERRED, "model" => object_type.clone()).increment(1);
            }
            if !failing.contains_key(&change.content_type_id) || delivered > 0 {
                counter!(m::EVENTS, "outcome" => if delivered > 0 { "dispatched" } else { "no_rule" })
                    .increment(1);
            }
            if delivered > 0 {
                counter!(m::EVENTS_DISPATCHED).increment(1);
            }
            events.push(NewEvent {
                txid: change.txid,
                seq: change.seq,
                content_type_id: change.content_type_id,
                object_type,
                object_id: change.object_id,
                action: change.action,
                request_id,
                user_name,
                origin,
                committed_at: change.committed_at,
                deliveries: delivered,
            });
        }
    }

    /// Renders `data` and `snapshots` for `changes`. All are rendered together (one lookup
    /// query per related table for the whole chunk); if a lookup fails (a renamed column, a
    /// missing grant), each model is rendered again on its own, so the failure stays with the
    /// model whose recipe needs the missing column or table. Returns each change's rendering,
    /// or None if its model failed, and each failed model's reason.
    async fn render_isolated(
        &self,
        tx: &Tx<'_>,
        txid_floor: i64,
        changes: &[&TxChange],
    ) -> Result<(Vec<Option<netbox::Rendered>>, BTreeMap<i32, String>), tokio_postgres::Error> {
        let all = netbox::render(tx, &self.netbox, txid_floor, changes.iter().copied());
        if let Ok(rendered) = isolated(tx, all).await? {
            return Ok((rendered.into_iter().map(Some).collect(), BTreeMap::new()));
        }
        let mut out: Vec<Option<netbox::Rendered>> = changes.iter().map(|_| None).collect();
        let mut failures = BTreeMap::new();
        let models: BTreeSet<i32> = changes.iter().map(|c| c.content_type_id).collect();
        for model in models {
            let indices: Vec<usize> = (0..changes.len())
                .filter(|&i| changes[i].content_type_id == model)
                .collect();
            let one = netbox::render(
                tx,
                &self.netbox,
                txid_floor,
                indices.iter().map(|&i| changes[i]),
            );
            match isolated(tx, one).await? {
                Ok(rendered) => {
                    for (i, r) in indices.into_iter().zip(rendered) {
                        out[i] = Some(r);
                    }
                }
                Err(reason) => {
                    failures.insert(model, reason);
                }
            }
        }
        Ok((out, failures))
    }

    /// One log line per failing model and chunk, naming the model, its objects, the rules and
    /// webhooks waiting on it, and the reason (the database's words: no payload data).
    fn report_failing(&self, failing: &BTreeMap<i32, String>, changes: &[TxChange]) {
        for (model, reason) in failing {
            let deferred: Vec<&TxChange> = changes
                .iter()
                .filter(|c| c.content_type_id == *model)
                .collect();
            let Some(first) = deferred.first() else {
                continue;
            };
            if !self.rules.watches(*model) {
                continue;
            }
            let (rules, webhooks) = self.candidate_names(first);
            let objects: Vec<String> = deferred.iter().map(|c| c.object_id.to_string()).collect();
            warn!(model = %self.netbox.object_type(*model).unwrap_or_default(),
                  objects = %objects.join(","), rules = %rules, webhooks = %webhooks,
                  reason = %reason,
                  "events deferred: the model's rows could not be read; they are retried every \
                   assembly.deferred_retry_interval and sent once it reads again (see \
                   netbox_outbox.failed); every other model goes on");
        }
    }

    /// The names of the rules (and their webhooks) that watch a change's model, comma-separated.
    fn candidate_names(&self, change: &TxChange) -> (String, String) {
        let rules: Vec<&crate::rules::Rule> = self
            .rules
            .candidates(change.action.event_type(), change.content_type_id)
            .collect();
        let names = rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>();
        let webhooks = rules
            .iter()
            .filter_map(|r| r.webhook.as_ref().map(|w| w.name.as_str()))
            .collect::<BTreeSet<_>>();
        (
            names.join(", "),
            webhooks.into_iter().collect::<Vec<_>>().join(", "),
        )
    }
}

/// Runs `work` under a savepoint of the batch's transaction. A database error in it (a renamed
/// column, a missing grant, a table gone) would abort the whole transaction; rolled back to the
/// savepoint, it becomes the caller's to pin on one model. Errors without an SQLSTATE (a lost
/// connection) still fail the batch.
async fn isolated<T>(
    tx: &Tx<'_>,
    work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<Result<T, String>, tokio_postgres::Error> {
    tx.batch_execute("savepoint netbox_outbox_model").await?;
    match work.await {
        Ok(value) => {
            tx.batch_execute("release savepoint netbox_outbox_model")
                .await?;
            Ok(Ok(value))
        }
        Err(e) => match e.as_db_error() {
            Some(db) => {
                let reason = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                tx.batch_execute("rollback to savepoint netbox_outbox_model")
                    .await?;
                Ok(Err(reason))
            }
            None => Err(e),
        },
    }
}

/// The reason stored for a deferred event: what failed, and what to do.
fn deferral_reason(object_type: &str, cause: &str) -> String {
    format!(
        "{object_type} could not be read: {cause}; a column or table its payload needs is gone \
         or not granted to the sidecar's role (a NetBox upgrade, a missing GRANT). The event is \
         kept and sent once the model reads again (retried every \
         assembly.deferred_retry_interval), with data as the object stands then"
    )
}
