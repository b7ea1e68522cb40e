//! `netbox-outbox replay`: send deliveries again, selected by delivery, event, object, webhook or
//! time range (netbox_outbox.replay() in SQL does the work).

use std::time::Duration;

use tokio_postgres::Client;

/// Which deliveries to replay; the filters combine with AND.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// One delivery, by id.
    #[arg(long)]
    pub delivery: Option<i64>,
    /// The deliveries of one event, by id.
    #[arg(long)]
    pub event: Option<i64>,
    /// The deliveries about one object: app_label.model:id (for example dcim.device:12), or
    /// app_label.model for every object of that type.
    #[arg(long, value_name = "TYPE[:ID]")]
    pub object: Option<String>,
    /// The deliveries to one webhook, by name or id.
    #[arg(long)]
    pub webhook: Option<String>,
    /// Deliveries created at or after this time: a timestamp (2026-11-24 10:00, UTC unless an
    /// offset is given) or an age (30m, 2h, 1d ago).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Deliveries created before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Which states to replay (repeat or comma-separate): dead, delivered, pending.
    #[arg(long = "state", value_delimiter = ',', default_value = "dead")]
    pub states: Vec<String>,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Invalid(String),
    #[error("replay failed")]
    Query(#[from] tokio_postgres::Error),
}

/// A time argument as an SQL expression over parameter `$n` (pushed onto `texts`): an age
/// becomes now() minus it, anything else is read as a timestamp by PostgreSQL.
fn time_sql(value: &str, texts: &mut Vec<String>) -> String {
    match crate::config::duration("", value.trim_end_matches(" ago")) {
        Ok(age) => {
            texts.push(age.as_secs_f64().to_string());
            format!(
                "now() - make_interval(secs => ${}::text::float8)",
                texts.len()
            )
        }
        Err(_) => {
            texts.push(value.to_string());
            format!("${}::text::timestamptz", texts.len())
        }
    }
}

impl Selection {
    fn is_empty(&self) -> bool {
        self.delivery.is_none()
            && self.event.is_none()
            && self.object.is_none()
            && self.webhook.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    /// The call of netbox_outbox.replay() for this selection.
    fn call(&self, dry_run: bool) -> Result<(String, Vec<String>), ReplayError> {
        if self.is_empty() {
            return Err(ReplayError::Invalid(
                "say what to replay: --delivery, --event, --object, --webhook, --since or --until"
                    .into(),
            ));
        }
        let mut args = Vec::new();
        let mut texts = Vec::new();
        if let Some(id) = self.delivery {
            args.push(format!("delivery_id => {id}"));
        }
        if let Some(id) = self.event {
            args.push(format!("event_id => {id}"));
        }
        if let Some(object) = &self.object {
            let (model, id) = match object.split_once(':') {
                Some((m, id)) => (
                    m,
                    Some(id.parse::<i64>().map_err(|_| {
                        ReplayError::Invalid(format!(
                            "--object {object:?}: the id after ':' must be a number"
                        ))
                    })?),
                ),
                None => (object.as_str(), None),
            };
            if !model.contains('.') {
                return Err(ReplayError::Invalid(format!(
                    "--object {object:?}: give the model as app_label.model, for example dcim.device:12"
                )));
            }
            texts.push(model.to_string());
            args.push(format!("object_type => ${}", texts.len()));
            if let Some(id) = id {
                args.push(format!("object_id => {id}"));
            }
        }
        if let Some(webhook) = &self.webhook {
            texts.push(webhook.clone());
            args.push(format!("webhook => ${}", texts.len()));
        }
        if let Some(since) = &self.since {
            let expr = time_sql(since, &mut texts);
            args.push(format!("since => {expr}"));
        }
        if let Some(until) = &self.until {
            let expr = time_sql(until, &mut texts);
            args.push(format!("until => {expr}"));
        }
        for state in &self.states {
            if !["dead", "delivered", "pending"].contains(&state.as_str()) {
                return Err(ReplayError::Invalid(format!(
                    "--state {state:?}: use dead, delivered or pending"
                )));
            }
        }
        texts.push(self.states.join(","));
        args.push(format!(
            "states => string_to_array(${}::text, ',')",
            texts.len()
        ));
        args.push(format!("dry_run => {dry_run}"));
        Ok((
            format!("select netbox_outbox.replay({})", args.join(", ")),
            texts,
        ))
    }
}

/// Replays (or counts, with `dry_run`) the selected deliveries; returns how many.
pub async fn replay(
    client: &Client,
    selection: &Selection,
    dry_run: bool,
    progress: bool,
) -> Result<i64, ReplayError> {
    let (sql, texts) = selection.call(dry_run)?;
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = texts
        .iter()
        .map(|t| t as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let spinner = (progress && !dry_run).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(if dry_run {
            "counting deliveries"
        } else {
            "replaying deliveries"
        });
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let result = client.query_one(&sql, &params).await;
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    match result {
        Ok(row) => Ok(row.get(0)),
        Err(e) => match e.as_db_error() {
            Some(db) => Err(ReplayError::Invalid(match db.hint() {
                Some(hint) => format!("{} ({hint})", db.message()),
                None => db.message().to_string(),
            })),
            None => Err(ReplayError::Query(e)),
        },
    }
}
