//! The stream of changes: writers inserting, updating, deleting and tagging sites, some
//! transactions rolled back, each committed one recorded in a ledger in the same transaction.
//!
//! Every transaction sets NetBox's request context (`netbox_outbox.request`, as the plugin does)
//! to a marker of its own, so each webhook it causes names it in `request.id`. The ledger row
//! commits or rolls back with the change itself, so even a commit whose answer was lost (the
//! server restarted under it) is known for sure afterwards. Each writer owns its objects, so one
//! object's changes are committed in the order its writer made them: the ledger's `seq`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;
use rand::seq::IteratorRandom;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// The ledger table and the tags the writers use; run once on the fresh database.
pub const SETUP_SQL: &str = "
    create table chaos_ledger (
        marker    text   not null,
        object_id bigint not null,
        seq       bigint not null,
        event     text   not null,
        primary key (marker, object_id)
    );
    insert into extras_tag (name, slug, weight)
    select 'chaos-' || n, 'chaos-' || n, n from generate_series(1, 8) n;
";

/// One committed change to one object, as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub marker: String,
    pub object_id: i64,
    /// Commit order among this object's changes.
    pub seq: i64,
    /// The webhook event it must cause: created, updated or deleted.
    pub event: String,
}

/// Reads the ledger.
pub async fn ledger(client: &Client) -> Vec<Committed> {
    client
        .query(
            "select marker, object_id, seq, event from chaos_ledger order by object_id, seq",
            &[],
        )
        .await
        .expect("read the chaos ledger")
        .iter()
        .map(|r| Committed {
            marker: r.get(0),
            object_id: r.get(1),
            seq: r.get(2),
            event: r.get(3),
        })
        .collect()
}

/// What one writer did.
#[derive(Debug, Default, Clone)]
pub struct WriterReport {
    pub committed: usize,
    /// Rolled back on purpose.
    pub rolled_back: usize,
    /// Failed (the server went away): not committed.
    pub failed: usize,
    /// The commit's answer was lost; the ledger told whether it committed.
    pub in_doubt: usize,
    /// Markers of every transaction that did not commit: none may ever reach a receiver.
    pub not_committed: Vec<String>,
    pub operations: BTreeMap<&'static str, usize>,
}

/// A change a writer makes in one transaction.
#[derive(Debug, Clone)]
enum Change {
    /// Insert a site (and sometimes update it in the same transaction: still `created`).
    Create { then_update: bool },
    /// Update a site (sometimes twice in the transaction: one event).
    Update(i64, u8),
    /// Add a tag to a site: an update of the site.
    Tag(i64, i64),
    /// Remove a tag from a site.
    Untag(i64, i64),
    /// Update a site and tag it in one transaction: one update.
    UpdateAndTag(i64, i64),
    /// Update several sites in one transaction: one event each.
    UpdateMany(Vec<i64>),
    /// Delete a site and its tags (sometimes after updating it: one `deleted`).
    Delete(i64, bool),
}

impl Change {
    fn name(&self) -> &'static str {
        match self {
            Change::Create { then_update: false } => "insert",
            Change::Create { then_update: true } => "insert+update",
            Change::Update(_, 1) => "update",
            Change::Update(..) => "update twice",
            Change::Tag(..) => "tag added",
            Change::Untag(..) => "tag removed",
            Change::UpdateAndTag(..) => "update+tag",
            Change::UpdateMany(..) => "several objects",
            Change::Delete(_, false) => "delete",
            Change::Delete(_, true) => "update+delete",
        }
    }
}

/// A writer: one connection, its own objects, one transaction at a time.
pub struct Writer {
    id: u16,
    url: String,
    client: Option<Client>,
    site_type: i32,
    tags: Vec<i64>,
    /// Each live object's tags.
    objects: BTreeMap<i64, BTreeSet<i64>>,
    transactions: u64,
    next_seq: i64,
    pub report: WriterReport,
}

impl Writer {
    pub async fn new(id: u16, url: &str) -> Writer {
        let mut writer = Writer {
            id,
            url: url.to_string(),
            client: None,
            site_type: 0,
            tags: Vec::new(),
            objects: BTreeMap::new(),
            transactions: 0,
            next_seq: 1,
            report: WriterReport::default(),
        };
        let client = writer
            .client(&CancellationToken::new())
            .await
            .expect("connect a writer");
        let site_type = client
            .query_one(
                "select id from django_content_type where app_label = 'dcim' and model = 'site'",
                &[],
            )
            .await
            .expect("the site content type")
            .get(0);
        let tags = client
            .query(
                "select id from extras_tag where slug like 'chaos-%' order by id",
                &[],
            )
            .await
            .expect("the chaos tags")
            .iter()
            .map(|r| r.get(0))
            .collect();
        writer.site_type = site_type;
        writer.tags = tags;
        writer
    }

    /// Makes changes until `stop`, pacing itself so the sidecars are busy but not swamped.
    pub async fn run(mut self, stop: CancellationToken, pace: Duration) -> WriterReport {
        while !stop.is_cancelled() {
            let change = self.pick();
            let rollback = rand::rng().random_bool(0.1);
            self.apply(change, rollback, &stop).await;
            let jitter = rand::rng().random_range(0.5..1.5);
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(pace.mul_f64(jitter)) => {}
            }
        }
        self.report
    }

    /// Creates one site and returns it (for the fault schedule's probes).
    pub async fn create_one(&mut self) -> i64 {
        self.apply(
            Change::Create { then_update: false },
            false,
            &CancellationToken::new(),
        )
        .await;
        *self
            .objects
            .keys()
            .last()
            .expect("the probe site was created")
    }

    /// Updates `object` in one committed transaction and returns the marker; retries until
    /// the database takes it.
    pub async fn update(&mut self, object: i64, stop: &CancellationToken) -> Option<String> {
        loop {
            let before = self.report.committed;
            let marker = self.apply(Change::Update(object, 1), false, stop).await;
            if self.report.committed > before {
                return Some(marker);
            }
            if stop.is_cancelled() {
                return None;
            }
        }
    }

    fn pick(&self) -> Change {
        let mut rng = rand::rng();
        let live = self.objects.len();
        if live < 4 {
            return Change::Create {
                then_update: rng.random_bool(0.3),
            };
        }
        let object = *self.objects.keys().choose(&mut rng).expect("live objects");
        let tags = &self.objects[&object];
        let absent = self
            .tags
            .iter()
            .filter(|t| !tags.contains(t))
            .choose(&mut rng)
            .copied();
        let present = tags.iter().choose(&mut rng).copied();
        match rng.random_range(0..100) {
            0..15 => Change::Create {
                then_update: rng.random_bool(0.3),
            },
            15..45 => Change::Update(object, if rng.random_bool(0.2) { 2 } else { 1 }),
            45..58 if absent.is_some() => Change::Tag(object, absent.unwrap_or_default()),
            58..66 if present.is_some() => Change::Untag(object, present.unwrap_or_default()),
            66..74 if absent.is_some() => Change::UpdateAndTag(object, absent.unwrap_or_default()),
            74..86 => Change::UpdateMany(self.objects.keys().copied().choose_multiple(&mut rng, 3)),
            86..100 if live > 12 => Change::Delete(object, rng.random_bool(0.3)),
            _ => Change::Update(object, 1),
        }
    }

    /// Runs one change in one transaction, committed (with its ledger rows) or rolled back;
    /// returns its marker.
    async fn apply(&mut self, change: Change, rollback: bool, stop: &CancellationToken) -> String {
        self.transactions += 1;
        // A valid UUID (the event table stores request ids as uuid), unique per transaction.
        let marker = format!(
            "00000000-0000-4000-8{:03x}-{:012x}",
            self.id, self.transactions
        );
        let (site_type, seq) = (self.site_type, self.next_seq);
        let Some(client) = self.client(stop).await else {
            return marker;
        };
        let outcome = run_transaction(client, &change, &marker, site_type, seq, rollback).await;
        let committed = match outcome {
            Ok(Some(touched)) => Some(touched),
            Ok(None) => {
                self.report.rolled_back += 1;
                None
            }
            Err(Failure::Before) => {
                self.report.failed += 1;
                None
            }
            Err(Failure::AtCommit(touched)) => {
                // The answer to COMMIT was lost: the ledger row committed with the change, or
                // neither did.
                self.report.in_doubt += 1;
                self.client = None;
                match self.was_committed(&marker, stop).await {
                    Some(true) => Some(touched),
                    _ => None,
                }
            }
        };
        match committed {
            Some(touched) => {
                self.report.committed += 1;
                *self.report.operations.entry(change.name()).or_default() += 1;
                self.next_seq += 1;
                self.remember(&change, &touched);
            }
            None => {
                self.report.not_committed.push(marker.clone());
                if self.client.as_ref().is_some_and(Client::is_closed) {
                    self.client = None;
                }
            }
        }
        marker
    }

    /// Keeps the writer's picture of its objects in step with what committed.
    fn remember(&mut self, change: &Change, touched: &[(i64, &'static str)]) {
        match *change {
            Change::Create { .. } => {
                self.objects.insert(touched[0].0, BTreeSet::new());
            }
            Change::Tag(object, tag) | Change::UpdateAndTag(object, tag) => {
                self.objects.entry(object).or_default().insert(tag);
            }
            Change::Untag(object, tag) => {
                self.objects.entry(object).or_default().remove(&tag);
            }
            Change::Delete(object, _) => {
                self.objects.remove(&object);
            }
            Change::Update(..) | Change::UpdateMany(..) => {}
        }
    }

    async fn was_committed(&mut self, marker: &str, stop: &CancellationToken) -> Option<bool> {
        loop {
            let client = self.client(stop).await?;
            match client
                .query_one(
                    "select exists (select 1 from chaos_ledger where marker = $1)",
                    &[&marker],
                )
                .await
            {
                Ok(row) => return Some(row.get(0)),
                Err(_) => self.client = None,
            }
        }
    }

    /// The writer's connection, reconnecting (while the server restarts) until `stop`.
    async fn client(&mut self, stop: &CancellationToken) -> Option<&mut Client> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        while self.client.is_none() {
            match tokio_postgres::connect(&self.url, NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    self.client = Some(client);
                }
                Err(_) => {
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
        self.client.as_mut()
    }
}

enum Failure {
    /// Failed before COMMIT was sent: nothing committed.
    Before,
    /// COMMIT was sent and no answer came: committed or not, the ledger knows.
    AtCommit(Vec<(i64, &'static str)>),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(_: tokio_postgres::Error) -> Self {
        Failure::Before
    }
}

/// One transaction: the request context, the change, the ledger rows, then COMMIT (or ROLLBACK).
/// Returns the objects touched with the event each must cause, or None when rolled back.
async fn run_transaction(
    client: &mut Client,
    change: &Change,
    marker: &str,
    site_type: i32,
    seq: i64,
    rollback: bool,
) -> Result<Option<Vec<(i64, &'static str)>>, Failure> {
    let tx = client.transaction().await?;
    let request = serde_json::json!({"id": marker, "user": "chaos"}).to_string();
    tx.execute(
        "select set_config('netbox_outbox.request', $1, true)",
        &[&request],
    )
    .await?;
    let description = format!("chaos {marker}");
    let update = "update dcim_site set description = $2, comments = comments || '.', last_updated = now() where id = $1";
    let touched: Vec<(i64, &'static str)> = match *change {
        Change::Create { then_update } => {
            let name = format!("chaos-{marker}");
            let id: i64 = tx
                .query_one(
                    "insert into dcim_site (created, last_updated, name, slug, description)
                     values (now(), now(), $1, $1, $2) returning id",
                    &[&name, &description],
                )
                .await?
                .get(0);
            if then_update {
                tx.execute(update, &[&id, &description]).await?;
            }
            vec![(id, "created")]
        }
        Change::Update(object, times) => {
            for _ in 0..times {
                tx.execute(update, &[&object, &description]).await?;
            }
            vec![(object, "updated")]
        }
        Change::Tag(object, tag) | Change::UpdateAndTag(object, tag) => {
            if matches!(change, Change::UpdateAndTag(..)) {
                tx.execute(update, &[&object, &description]).await?;
            }
            tx.execute(
                "insert into extras_taggeditem (object_id, content_type_id, tag_id) values ($1, $2, $3)",
                &[&(object as i32), &site_type, &tag],
            )
            .await?;
            vec![(object, "updated")]
        }
        Change::Untag(object, tag) => {
            tx.execute(
                "delete from extras_taggeditem where object_id = $1 and content_type_id = $2 and tag_id = $3",
                &[&(object as i32), &site_type, &tag],
            )
            .await?;
            vec![(object, "updated")]
        }
        Change::UpdateMany(ref objects) => {
            for object in objects {
                tx.execute(update, &[object, &description]).await?;
            }
            objects.iter().map(|o| (*o, "updated")).collect()
        }
        Change::Delete(object, update_first) => {
            if update_first {
                tx.execute(update, &[&object, &description]).await?;
            }
            tx.execute(
                "delete from extras_taggeditem where object_id = $1 and content_type_id = $2",
                &[&(object as i32), &site_type],
            )
            .await?;
            tx.execute("delete from dcim_site where id = $1", &[&object])
                .await?;
            vec![(object, "deleted")]
        }
    };
    if rollback {
        tx.rollback().await?;
        return Ok(None);
    }
    for (object, event) in &touched {
        tx.execute(
            "insert into chaos_ledger (marker, object_id, seq, event) values ($1, $2, $3, $4)",
            &[&marker, object, &seq, event],
        )
        .await?;
    }
    tx.commit()
        .await
        .map_err(|_| Failure::AtCommit(touched.clone()))?;
    Ok(Some(touched))
}
