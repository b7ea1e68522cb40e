//! Writing what a batch produced: events, deliveries (with their frozen requests), events
//! deferred for their model, and the new read position. All in the batch's transaction, so a
//! batch is processed exactly once.

use std::time::SystemTime;

use crate::db::Tx;

use crate::change::Action;
use crate::request::{Request, Transport};

/// An event, ready to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub txid: i64,
    pub seq: i64,
    pub content_type_id: i32,
    pub object_type: String,
    pub object_id: i64,
    pub action: Action,
    pub request_id: String,
    pub user_name: String,
    pub origin: &'static str,
    pub committed_at: SystemTime,
    pub deliveries: i32,
}

/// A delivery, ready to store: a frozen request, or why none could be built.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Index of its event in the batch's event list.
    pub event: usize,
    pub rule_id: i64,
    pub rule_name: String,
    pub webhook_id: i64,
    pub webhook_name: String,
    pub content_type_id: i32,
    pub object_id: i64,
    pub seq: i64,
    pub request: Result<Request, String>,
    /// Timeout and TLS settings, kept even when the request could not be built.
    pub transport: Transport,
}

/// An event whose model could not be read or rendered: stored without deliveries until a retry
/// renders it (see [`super::deferred`]).
#[derive(Debug, Clone)]
pub struct NewDeferral {
    /// Index of its event in the batch's event list.
    pub event: usize,
    pub reason: String,
    /// The rules (and webhooks) that may match it, comma-separated, for the operator.
    pub event_rules: String,
    pub webhooks: String,
}

/// Inserts events, their deliveries and deferrals; returns the number of deliveries stored.
pub async fn insert(
    tx: &Tx<'_>,
    events: &[NewEvent],
    deliveries: &[NewDelivery],
    deferrals: &[NewDeferral],
) -> Result<u64, tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let ids = insert_events(tx, events).await?;
    if !deferrals.is_empty() {
        let event_ids: Vec<i64> = deferrals.iter().map(|d| ids[d.event]).collect();
        let reasons: Vec<&str> = deferrals.iter().map(|d| d.reason.as_str()).collect();
        let rules: Vec<&str> = deferrals.iter().map(|d| d.event_rules.as_str()).collect();
        let webhooks: Vec<&str> = deferrals.iter().map(|d| d.webhooks.as_str()).collect();
        tx.execute(
            "insert into netbox_outbox.deferred (event_id, reason, event_rules, webhooks)
             select * from unnest($1::bigint[], $2::text[], $3::text[], $4::text[])",
            &[&event_ids, &reasons, &rules, &webhooks],
        )
        .await?;
    }
    insert_deliveries(tx, &ids, deliveries).await
}

/// Inserts events; returns their ids, in order.
async fn insert_events(
    tx: &Tx<'_>,
    events: &[NewEvent],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let ids: Vec<i64> = tx
        .query(
            "select nextval(pg_get_serial_sequence('netbox_outbox.event', 'id')) from generate_series(1, $1::bigint)",
            &[&(events.len() as i64)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();

    let txids: Vec<i64> = events.iter().map(|e| e.txid).collect();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let cts: Vec<i32> = events.iter().map(|e| e.content_type_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.object_type.as_str()).collect();
    let oids: Vec<i64> = events.iter().map(|e| e.object_id).collect();
    let words: Vec<&str> = events.iter().map(|e| e.action.word()).collect();
    let requests: Vec<&str> = events.iter().map(|e| e.request_id.as_str()).collect();
    let users: Vec<&str> = events.iter().map(|e| e.user_name.as_str()).collect();
    let origins: Vec<&str> = events.iter().map(|e| e.origin).collect();
    let committed: Vec<SystemTime> = events.iter().map(|e| e.committed_at).collect();
    let counts: Vec<i32> = events.iter().map(|e| e.deliveries).collect();
    tx.execute(
        "insert into netbox_outbox.event
             (id, txid, seq, content_type_id, object_type, object_id, event, request_id, user_name,
              origin, committed_at, deliveries)
         select id, txid, seq, ct, ot, oid, ev, rid::uuid, usr, org, cat, n
         from unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::int[], $5::text[], $6::bigint[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::int[])
              as e(id, txid, seq, ct, ot, oid, ev, rid, usr, org, cat, n)",
        &[
            &ids, &txids, &seqs, &cts, &types, &oids, &words, &requests, &users, &origins, &committed, &counts,
        ],
    )
    .await?;
    Ok(ids)
}

/// Inserts deliveries (with their requests) for events already stored: `ids[d.event]` is each
/// one's event id. Returns the number stored.
pub async fn insert_deliveries(
    tx: &Tx<'_>,
    ids: &[i64],
    deliveries: &[NewDelivery],
) -> Result<u64, tokio_postgres::Error> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let event_ids: Vec<i64> = deliveries.iter().map(|d| ids[d.event]).collect();
    let rule_ids: Vec<i64> = deliveries.iter().map(|d| d.rule_id).collect();
    let rule_names: Vec<&str> = deliveries.iter().map(|d| d.rule_name.as_str()).collect();
    let webhook_ids: Vec<i64> = deliveries.iter().map(|d| d.webhook_id).collect();
    let webhook_names: Vec<&str> = deliveries.iter().map(|d| d.webhook_name.as_str()).collect();
    let cts: Vec<i32> = deliveries.iter().map(|d| d.content_type_id).collect();
    let oids: Vec<i64> = deliveries.iter().map(|d| d.object_id).collect();
    let seqs: Vec<i64> = deliveries.iter().map(|d| d.seq).collect();
    let states: Vec<&str> = deliveries
        .iter()
        .map(|d| {
            if d.request.is_ok() {
                "pending"
            } else {
                "rejected"
            }
        })
        .collect();
    let methods: Vec<Option<&str>> = deliveries
        .iter()
        .map(|d| d.request.as_ref().ok().map(|r| r.method.as_str()))
        .collect();
    let urls: Vec<Option<&str>> = deliveries
        .iter()
        .map(|d| d.request.as_ref().ok().map(|r| r.url.as_str()))
        .collect();
    let headers: Vec<Option<String>> = deliveries
        .iter()
        .map(|d| d.request.as_ref().ok().map(Request::headers_json))
        .collect();
    let bodies: Vec<Option<&[u8]>> = deliveries
        .iter()
        .map(|d| d.request.as_ref().ok().map(|r| r.body.as_slice()))
        .collect();
    let timeouts: Vec<i32> = deliveries
        .iter()
        .map(|d| d.transport.timeout_ms())
        .collect();
    let verify: Vec<bool> = deliveries
        .iter()
        .map(|d| d.transport.ssl_verification)
        .collect();
    let ca_files: Vec<Option<&str>> = deliveries
        .iter()
        .map(|d| d.transport.ca_file_path.as_deref())
        .collect();
    let errors: Vec<Option<&str>> = deliveries
        .iter()
        .map(|d| d.request.as_ref().err().map(String::as_str))
        .collect();
    // One statement: the deliveries, and the requests of those that are not rejected (one
    // delivery per event and rule, so (event, rule) finds each one's request).
    let n: i64 = tx
        .query_one(
            "with d as (
                 select * from unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[],
                                      $6::int[], $7::bigint[], $8::bigint[], $9::text[], $10::text[],
                                      $11::text[], $12::text[], $13::bytea[], $14::int[], $15::bool[],
                                      $16::text[], $17::text[])
                     as d(ev, rid, rname, wid, wname, ct, oid, seq, st, m, u, h, b, t, v, ca, err)
             ), deliveries as (
                 insert into netbox_outbox.delivery
                     (event_id, event_rule_id, event_rule_name, webhook_id, webhook_name, content_type_id,
                      object_id, seq, state, timeout_ms, ssl_verification, ca_file_path, last_error,
                      finished_at)
                 select ev, rid, rname, wid, wname, ct, oid, seq, st, t, v, ca, err,
                        case when st = 'rejected' then now() end
                 from d
                 returning id, event_id, event_rule_id
             ), requests as (
                 insert into netbox_outbox.request (delivery_id, method, url, headers, body)
                 select deliveries.id, d.m, d.u, d.h::jsonb, d.b
                 from deliveries join d on d.ev = deliveries.event_id and d.rid = deliveries.event_rule_id
                 where d.st = 'pending'
             )
             select count(*) from deliveries",
            &[
                &event_ids, &rule_ids, &rule_names, &webhook_ids, &webhook_names, &cts, &oids, &seqs, &states,
                &methods, &urls, &headers, &bodies, &timeouts, &verify, &ca_files, &errors,
            ],
        )
        .await?
        .get(0);
    Ok(n as u64)
}
