-- netbox-outbox V8: events deferred because their model could not be read or rendered.
--
-- A failure that belongs to one model (a column a lookup needs was renamed by a NetBox upgrade,
-- SELECT on one of NetBox's tables is missing) must not stop the other models' webhooks, and
-- must heal by itself once fixed. The sidecar stores such an event as usual, without deliveries,
-- and records it here with the reason; it tries again every assembly.deferred_retry_interval and,
-- once the model renders, matches the rules and queues the deliveries (the row then goes).

create table netbox_outbox.deferred (
    event_id    bigint      primary key references netbox_outbox.event (id) on delete cascade,
    -- the database's error, as the sidecar last saw it (no payload data)
    reason      text        not null,
    -- the rules (and their webhooks) that may match, for the operator reading netbox_outbox.failed
    event_rules text        not null default '',
    webhooks    text        not null default '',
    attempts    integer     not null default 1,
    deferred_at timestamptz not null default now(),
    retried_at  timestamptz
);

comment on table netbox_outbox.deferred is
    'Events whose model could not be read or rendered (schema drift, a missing grant), retried by the sidecar until they render.';

-- netbox_outbox.failed shows deferred events too (state deferred, no delivery id yet).
create or replace view netbox_outbox.failed as
select d.id, d.state, d.webhook_name, e.object_type, d.object_id, e.event, d.attempts,
       d.last_status, d.last_error, d.finished_at, d.event_rule_name, d.event_id, d.created_at
from netbox_outbox.delivery d
join netbox_outbox.event e on e.id = d.event_id
where d.state in ('dead', 'rejected')
union all
select null::bigint, 'deferred', nullif(f.webhooks, ''), e.object_type, e.object_id, e.event,
       f.attempts, null::integer, f.reason, null::timestamptz, nullif(f.event_rules, ''),
       f.event_id, f.deferred_at
from netbox_outbox.deferred f
join netbox_outbox.event e on e.id = f.event_id;

comment on view netbox_outbox.failed is
    'Dead and rejected deliveries, and deferred events (their model could not be rendered yet), with the reason.';

-- The sidecar keeps this table itself (V5's list; sync() applies it).
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('table', 'netbox_outbox.deferred', '{select,insert,update,delete}', 'deferred events: recorded, retried, and removed once delivered')
on conflict do nothing;
-- a retried event gets its delivery count
update netbox_outbox.sidecar_grant set privileges = '{select,insert,update}'
 where object_kind = 'table' and object_name = 'netbox_outbox.event';
