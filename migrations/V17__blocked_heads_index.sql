-- V17: the blocked queue heads, found from the failing deliveries alone; the queue heads
-- vacuumed often.
--
-- The sidecar samples `netbox_outbox.blocked_heads` every heartbeat (10 s) for its metrics. The
-- view walked the queue heads and joined each to its delivery, event and first attempt before
-- keeping the failing ones, so its cost grew with the backlog: during a 1,000,000-change drain
-- (docs/benchmarks.md, section 3e) one sample ran for about a minute. A statement that long
-- holds back the cleanup of every row version newer than its snapshot: the queue heads, updated
-- on every delivery, piled up dead versions that each claim then walked, and claims took 10 to
-- 15 seconds. The heartbeat waited behind it too.
--
-- Now the failing pending deliveries have a partial index (a healthy outbox has none, so it is
-- empty and costs an insert nothing), and the view starts from it: its cost is the number of
-- failing deliveries, whatever the backlog. Same columns, same meaning.
--
-- Building the index reads `netbox_outbox.delivery` once (seconds per million rows); writes to
-- it wait meanwhile: apply with the sidecar stopped or idle.

create index delivery_failing on netbox_outbox.delivery (webhook_id, id)
    where state = 'pending' and last_error is not null;

create or replace view netbox_outbox.blocked_heads as
with failing as materialized (
    select d.*
    from netbox_outbox.delivery d
    where d.state = 'pending' and d.last_error is not null
)
select h.webhook_id, d.webhook_name, e.object_type, h.object_id, d.id as delivery_id,
       coalesce(d.message_id, d.id) as message_id, d.attempts, d.last_status, d.last_error,
       d.next_attempt_at, f.first_failure_at as failing_since,
       now() - f.first_failure_at as blocked_for,
       (select count(*) from netbox_outbox.delivery q
         where q.webhook_id = h.webhook_id and q.content_type_id = h.content_type_id
           and q.object_id = h.object_id and q.state = 'pending' and q.id <> d.id) as waiting_behind,
       d.event_rule_name, d.event_id
from failing d
join netbox_outbox.queue_head h
  on h.webhook_id = d.webhook_id and h.content_type_id = d.content_type_id
 and h.object_id = d.object_id and h.delivery_id = d.id
join netbox_outbox.event e on e.id = d.event_id
cross join lateral (
    select coalesce(min(a.started_at), d.created_at) as first_failure_at
    from netbox_outbox.attempt a where a.delivery_id = d.id
) f;

revoke all on netbox_outbox.blocked_heads from public;

comment on view netbox_outbox.blocked_heads is
    'Queue heads that failed at least once, and how many deliveries of the same object wait behind '
    'each; netbox_outbox.skip() releases one.';

-- The queue heads are few rows updated all the time (each delivery moves its queue's head, and
-- such an update changes an indexed column, so it is never HOT): at autovacuum's default, a
-- fifth of the table, dead versions pile up between vacuums and every claim walks them. In the
-- 1,000,000-change drain on a server without autovacuum, queue_head held 428,629 dead versions
-- against 11,203 live heads and a claim took up to 20 s. Vacuumed (and analyzed) after every
-- 1,000 dead versions instead, whatever the table's size.
alter table netbox_outbox.queue_head set (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000
);
