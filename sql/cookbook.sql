-- netbox-outbox SQL cookbook: the queries an operator runs by hand, against NetBox's database.
-- Every statement here runs in netbox-outbox's test suite, so none of them rots.
-- Replace the example values (webhook names, ids, object types) with your own.

-- ---------------------------------------------------------------------------------------------
-- What is waiting
-- ---------------------------------------------------------------------------------------------

-- Deliveries not sent yet, oldest first, with their last failure (if they are being retried).
select id, webhook_name, object_type, object_id, event, attempts, next_attempt_at, in_flight, age, last_error
from netbox_outbox.pending
order by created_at
limit 50;

-- The backlog per webhook: how many, how old, how many are being retried.
select webhook_name, count(*) as pending, count(*) filter (where attempts > 0) as retrying,
       max(age) as oldest
from netbox_outbox.pending
group by webhook_name
order by pending desc;

-- Changes committed but not read by a sidecar yet (should be near zero while one runs).
select count(*) as unread, min(captured_at) as oldest from netbox_outbox.unread_change;

-- ---------------------------------------------------------------------------------------------
-- What failed, and why
-- ---------------------------------------------------------------------------------------------

-- Dead deliveries (every attempt failed) and rejected ones (a template or condition error),
-- newest first, with the reason.
select id, state, webhook_name, object_type, object_id, event, attempts, last_status, last_error, finished_at
from netbox_outbox.failed
order by finished_at desc
limit 50;

-- Failures grouped by reason, to see a pattern (a TLS error, a 401, a bad template...).
select webhook_name, state, coalesce(last_error, 'HTTP ' || last_status) as reason, count(*)
from netbox_outbox.failed
group by 1, 2, 3
order by count(*) desc;

-- Each webhook's health: queue, failure streak, pause.
select * from netbox_outbox.webhook_health order by webhook_name;

-- ---------------------------------------------------------------------------------------------
-- One delivery, one object
-- ---------------------------------------------------------------------------------------------

-- Every attempt of one delivery (replace 1 with a delivery id).
select attempt, started_at, duration_ms, status, error, response_excerpt
from netbox_outbox.delivery_log
where delivery_id = 1
order by attempt;

-- The request a delivery sends, exactly (URL, headers, body); the body is what X-Hook-Signature
-- signs. Never share it: it may hold sensitive data.
select method, url, headers, convert_from(body, 'UTF8') as body
from netbox_outbox.request
where delivery_id = 1;

-- Everything about one object: each change (event) and each of its deliveries.
select * from netbox_outbox.object_history('dcim.device', 1);

-- The raw captured changes of one object (the outbox itself), newest first.
select c.id, c.captured_at, c.kind, c.db_user, c.application_name, c.before, c.link_table
from netbox_outbox.change c
join django_content_type ct on ct.id = c.content_type_id
where ct.app_label = 'dcim' and ct.model = 'device' and c.object_id = 1
order by c.id desc
limit 20;

-- Who changed what in the last hour: NetBox users by request, and changes made outside NetBox.
select origin, user_name, object_type, event, count(*)
from netbox_outbox.event
where created_at > now() - interval '1 hour'
group by 1, 2, 3, 4
order by count(*) desc;

-- Events deferred because their model could not be read (a renamed column, a missing grant):
-- the sidecar retries them by itself once the model reads again.
select event_id, object_type, object_id, attempts, last_error as reason, created_at as deferred_at
from netbox_outbox.failed
where state = 'deferred'
order by created_at;

-- Objects whose queue is held by a head that keeps failing (a retrying head blocks the later
-- deliveries of its object to that webhook; dead, rejected and skipped heads release them):
-- netbox_outbox.blocked_heads, below with skip(), which releases them.
select webhook_name, object_type, object_id, attempts, last_status, last_error, next_attempt_at,
       waiting_behind
from netbox_outbox.blocked_heads
order by attempts desc, next_attempt_at
limit 50;

-- TRUNCATE of a watched table: NetBox sends nothing for it, neither does netbox-outbox; each is
-- recorded here (and logged and counted by the sidecar).
select table_name, truncated_at, db_user, application_name, reported_at
from netbox_outbox.truncation
order by truncated_at desc;

-- ---------------------------------------------------------------------------------------------
-- Throughput
-- ---------------------------------------------------------------------------------------------

-- Attempts per minute over the last hour, by webhook, with latency.
select * from netbox_outbox.throughput order by minute desc, webhook_name;

-- Deliveries and events in the last hour, and the time from commit to delivery.
select count(*) as delivered,
       percentile_cont(0.5) within group (order by extract(epoch from d.finished_at - e.committed_at)) as p50_seconds,
       percentile_cont(0.99) within group (order by extract(epoch from d.finished_at - e.committed_at)) as p99_seconds
from netbox_outbox.delivery d
join netbox_outbox.event e on e.id = d.event_id
where d.state = 'delivered' and d.finished_at > now() - interval '1 hour';

-- ---------------------------------------------------------------------------------------------
-- Replay (each replayed delivery is a new delivery with the same request and the same id at the
-- receiver, sent after whatever is queued for its object; the original stays in the log as
-- 'replayed' and is never replayed again). One row per delivery.
-- ---------------------------------------------------------------------------------------------

-- How many dead deliveries of the last day would be replayed (dry run).
select * from netbox_outbox.replay(since => now() - interval '1 day', dry_run => true);

-- Replay one delivery, whatever its state.
select * from netbox_outbox.replay(delivery_id => 1, states => '{dead,delivered}');

-- Replay everything about one object.
select * from netbox_outbox.replay(object_type => 'dcim.device', object_id => 1, states => '{dead,delivered}');

-- Replay a time range of dead deliveries to one webhook (after fixing its receiver).
select * from netbox_outbox.replay(webhook => 'crm', since => now() - interval '6 hours', until => now());

-- Rejected deliveries (a template, URL, header or condition error) have no request to copy, so
-- replay() skips them: fix the webhook or rule in NetBox, then render them again with
--   netbox-outbox replay --rerender --webhook crm --since 1d

-- ---------------------------------------------------------------------------------------------
-- Pause and resume a webhook (deliveries wait; nothing is lost)
-- ---------------------------------------------------------------------------------------------

select netbox_outbox.pause_webhook('crm', 'receiver maintenance until 14:00');
select netbox_outbox.resume_webhook('crm');

-- ---------------------------------------------------------------------------------------------
-- What is captured
-- ---------------------------------------------------------------------------------------------

-- The watched tables and whether their trigger is in place.
select * from netbox_outbox.watched_tables order by table_name;

-- The many-to-many tables of models NetBox does not change-log whose deleted rows are kept (kind
-- L), so that a deleted owner lists its users as NetBox did; and whether their trigger is in place.
select l.*, exists (select from pg_trigger t where t.tgname = 'netbox_outbox_capture_link'
                     and t.tgrelid = to_regclass(format('public.%I', l.table_name))) as trigger_installed
from netbox_outbox.watch_link l order by l.table_name;

-- Stop or start capturing one model, or all of them.
select netbox_outbox.unwatch('dcim.interface');
select netbox_outbox.watch('dcim.interface');
select * from netbox_outbox.watch_all();

-- Re-install missing triggers (after a NetBox upgrade; the sidecar does this every minute too).
select * from netbox_outbox.sync();

-- Columns whose changes alone are not events (NetBox's caches and counters); add your own.
select * from netbox_outbox.ignored_column;

-- Capture mode: 'all' (every committed change) or 'netbox' (only what NetBox itself would send).
select name, value from netbox_outbox.setting;
update netbox_outbox.setting set value = 'all' where name = 'capture_mode';

-- ---------------------------------------------------------------------------------------------
-- Retention
-- ---------------------------------------------------------------------------------------------

-- Keep 7 days of history (1 to 14); the sidecar prunes every few minutes.
update netbox_outbox.setting set value = '7' where name = 'retention_days';

-- Prune now (one transaction; fine by hand).
select * from netbox_outbox.prune();

-- Prune a large backlog of finished deliveries gently: one bounded batch per call (and per
-- transaction, so vacuum keeps up); repeat until it returns 0. The sidecar does this itself.
select netbox_outbox.prune_deliveries(10000);

-- How much space netbox-outbox uses.
select relname, pg_size_pretty(pg_total_relation_size(c.oid)) as size
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'netbox_outbox' and c.relkind in ('r', 'p')
order by pg_total_relation_size(c.oid) desc;

-- ---------------------------------------------------------------------------------------------
-- Sidecars
-- ---------------------------------------------------------------------------------------------

-- Unread changes and how old the oldest is (what /readyz and the stall alert look at).
select * from netbox_outbox.read_lag();

-- The sidecars that ran in the last hour.
select id, hostname, pid, version, started_at, last_seen_at, stopped_at
from netbox_outbox.sidecar
where last_seen_at > now() - interval '1 hour'
order by started_at;

-- What shapes the payloads, per live sidecar: sidecars on one database must agree on it.
select id, hostname, fingerprint
from netbox_outbox.sidecar
where stopped_at is null and last_seen_at > now() - interval '30 seconds';

-- ---------------------------------------------------------------------------------------------
-- Privileges (docs/privileges.md)
-- ---------------------------------------------------------------------------------------------

-- Everything the sidecar's role may read, write or call.
select object_kind, object_name, privileges, columns, reason
from netbox_outbox.sidecar_grant
order by object_kind, object_name;

-- The roles sidecars log in with. As the migrations' owner, make their rights equal to the list
-- again (sync() does it every minute; it prints what it changed):
--   select * from netbox_outbox.refresh_grants();
select role_name, granted_at from netbox_outbox.sidecar_role;

-- Queues held back by a failing delivery (the head of an object's queue that keeps failing), and
-- how many deliveries wait behind each; release one (it becomes 'skipped'), or every failing
-- head of a webhook; send a skipped one after all (same id at the receiver).
select webhook_name, object_type, object_id, delivery_id, attempts, last_status, blocked_for, waiting_behind
from netbox_outbox.blocked_heads order by blocked_for desc;
select * from netbox_outbox.skip(delivery_id => 1);
select * from netbox_outbox.skip(webhook => 'crm', reason => 'payload fixed by hand in the CRM');
select * from netbox_outbox.replay(delivery_id => 1, states => '{skipped}');

-- The chain of a replay: every delivery and attempt under one message id (what the receiver
-- sees as X-Netbox-Outbox-Delivery / webhook-id).
select delivery_id, replay_of, attempt, status, delivery_state, started_at
from netbox_outbox.delivery_log where message_id = 1 order by started_at;
