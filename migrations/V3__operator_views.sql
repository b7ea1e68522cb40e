-- netbox-outbox V3: views that make an operator's usual questions one line of SQL.
-- sql/cookbook.sql shows them in use.

-- Deliveries waiting to go out (or being sent), oldest first.
create view netbox_outbox.pending as
select d.id, d.webhook_name, e.object_type, d.object_id, e.event, d.attempts,
       d.next_attempt_at, d.leased_until > now() as in_flight, now() - d.created_at as age,
       d.last_status, d.last_error, d.event_rule_name, d.event_id, d.created_at
from netbox_outbox.delivery d
join netbox_outbox.event e on e.id = d.event_id
where d.state = 'pending';

comment on view netbox_outbox.pending is 'Deliveries not sent yet, with their last failure if any.';

-- Deliveries that will not go out by themselves: dead (every attempt failed) or rejected (a
-- template or condition error). netbox_outbox.replay() sends dead ones again.
create view netbox_outbox.failed as
select d.id, d.state, d.webhook_name, e.object_type, d.object_id, e.event, d.attempts,
       d.last_status, d.last_error, d.finished_at, d.event_rule_name, d.event_id, d.created_at
from netbox_outbox.delivery d
join netbox_outbox.event e on e.id = d.event_id
where d.state in ('dead', 'rejected');

comment on view netbox_outbox.failed is 'Dead and rejected deliveries, with the reason.';

-- Every attempt, newest first, with what it was about.
create view netbox_outbox.delivery_log as
select a.started_at, d.webhook_name, e.object_type, d.object_id, e.event, a.delivery_id,
       a.attempt, a.status, a.duration_ms, a.error, a.response_excerpt, d.state as delivery_state,
       r.url, e.request_id, e.user_name, a.sidecar
from netbox_outbox.attempt a
join netbox_outbox.delivery d on d.id = a.delivery_id
join netbox_outbox.event e on e.id = d.event_id
left join netbox_outbox.request r on r.delivery_id = d.id;

comment on view netbox_outbox.delivery_log is 'Every delivery attempt: when, to which webhook, about what, and what came back.';

-- Each webhook's state: queue, failures, pause.
create view netbox_outbox.webhook_health as
select d.webhook_id, max(d.webhook_name) as webhook_name,
       count(*) filter (where d.state = 'pending') as pending,
       count(*) filter (where d.state = 'pending' and d.attempts > 0) as retrying,
       count(*) filter (where d.state = 'dead') as dead,
       count(*) filter (where d.state = 'rejected') as rejected,
       min(d.created_at) filter (where d.state = 'pending') as oldest_pending,
       s.consecutive_failures, s.paused_until, s.paused_by_operator, s.reason as pause_reason,
       s.last_success_at, s.last_failure_at
from netbox_outbox.delivery d
left join netbox_outbox.webhook_state s on s.webhook_id = d.webhook_id
group by d.webhook_id, s.consecutive_failures, s.paused_until, s.paused_by_operator, s.reason,
         s.last_success_at, s.last_failure_at;

comment on view netbox_outbox.webhook_health is 'Per webhook: pending, retrying, dead and rejected deliveries, failure streak and pause.';

-- Attempts per minute over the last hour, by webhook and outcome.
create view netbox_outbox.throughput as
select date_trunc('minute', a.started_at) as minute, d.webhook_name,
       count(*) filter (where a.status between 200 and 299) as delivered,
       count(*) filter (where a.status is null or a.status not between 200 and 299) as failed,
       round(avg(a.duration_ms)) as avg_ms,
       percentile_cont(0.99) within group (order by a.duration_ms) as p99_ms
from netbox_outbox.attempt a
join netbox_outbox.delivery d on d.id = a.delivery_id
where a.started_at > now() - interval '1 hour'
group by 1, 2;

comment on view netbox_outbox.throughput is 'Attempts per minute in the last hour, by webhook: delivered, failed, latency.';

-- Everything about one object: its events and their deliveries, oldest first.
--   select * from netbox_outbox.object_history('dcim.device', 12);
create function netbox_outbox.object_history(object_type text, object_id bigint)
returns table (
    event_id bigint, committed_at timestamptz, event text, request_id uuid, user_name text,
    origin text, delivery_id bigint, webhook_name text, event_rule_name text, state text,
    attempts integer, last_status integer, last_error text
)
language sql stable
as $$
    select e.id, e.committed_at, e.event, e.request_id, e.user_name, e.origin,
           d.id, d.webhook_name, d.event_rule_name, d.state, d.attempts, d.last_status, d.last_error
    from netbox_outbox.event e
    left join netbox_outbox.delivery d on d.event_id = e.id
    where e.object_type = lower(object_history.object_type) and e.object_id = object_history.object_id
    order by e.id, d.id
$$;
