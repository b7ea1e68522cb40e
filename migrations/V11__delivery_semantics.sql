-- netbox-outbox V11: delivery semantics a receiver's owner can rely on (issue 13).
--
-- * A replay keeps the id the receiver sees: each delivery has a message id (its own id, or the
--   id of the delivery it replays, down the chain), sent as X-Netbox-Outbox-Delivery and, with
--   Standard Webhooks, as webhook-id. The replayed original becomes 'replayed', so the same
--   replay cannot be issued twice; replay_of and message_id show the chain.
-- * A queue blocked behind a failing head is visible (netbox_outbox.blocked_heads) and an
--   operator can release it: netbox_outbox.skip() moves the head (or a chosen pending delivery)
--   to 'skipped', and the next delivery of the object goes out.
-- * Automatic pauses keep their own length (webhook_state.pause_ms), so the first pause is the
--   configured initial length and each failed probe doubles it, whatever the failure count.
-- * claim() returns the message id, and the webhook's secret when it is a Standard Webhooks
--   secret (whsec_...): that scheme signs each attempt with its own timestamp, so it is signed
--   when sent, not frozen.
-- docs/receivers.md describes what the receiver sees; docs/privileges.md the grants.

-- ---------------------------------------------------------------------------------------------
-- States and identity.
-- ---------------------------------------------------------------------------------------------
alter table netbox_outbox.delivery drop constraint delivery_state_check;
alter table netbox_outbox.delivery add constraint delivery_state_check
    check (state in ('pending', 'delivered', 'dead', 'rejected', 'replayed', 'skipped'));

-- null: the delivery's own id. A replay copies its original's message id, so the receiver sees
-- one id for every copy of one webhook and can drop the duplicates.
alter table netbox_outbox.delivery add column message_id bigint;

comment on column netbox_outbox.delivery.message_id is
    'The id the receiver sees (X-Netbox-Outbox-Delivery, webhook-id): null means this delivery''s '
    'own id; a replay carries the id of the first delivery it replays.';
comment on column netbox_outbox.delivery.state is
    'pending: waiting or being sent; delivered: a 2xx came back; dead: it failed for the last time; '
    'rejected: it could not be built (nothing was sent); replayed: replay() sent it again as the '
    'delivery whose replay_of is this one; skipped: an operator released its queue with skip().';

-- the chain of a replay, both ways
create index delivery_replay_of on netbox_outbox.delivery (replay_of) where replay_of is not null;

-- The length of the current automatic pause, doubled by each failed probe up to the maximum.
alter table netbox_outbox.webhook_state add column pause_ms bigint;

-- ---------------------------------------------------------------------------------------------
-- claim(): as in V9, plus the message id and a Standard Webhooks secret.
-- ---------------------------------------------------------------------------------------------
drop function netbox_outbox.claim(bigint[], bigint[], bigint, uuid);

create function netbox_outbox.claim(webhooks bigint[], quotas bigint[], lease_margin_ms bigint, sidecar uuid)
returns table (id bigint, webhook_id bigint, webhook_name text, event_id bigint, attempts integer,
               method text, url text, headers text, body bytea, timeout_ms integer,
               ssl_verification boolean, ca_file_path text, message_id bigint,
               standard_webhooks_secret text)
language plpgsql volatile
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off
as $$
begin
    return query
    with due as (
        select c.id
        from unnest(webhooks, quotas) as w(webhook_id, quota)
        cross join lateral (
            select d.id
            from netbox_outbox.queue_head h
            join netbox_outbox.delivery d on d.id = h.delivery_id
            where h.webhook_id = w.webhook_id and h.next_attempt_at <= now()
              and d.state = 'pending' and d.leased_until < now()
            order by h.next_attempt_at, h.delivery_id
            limit w.quota
            for update of d skip locked
        ) c
    )
    , leased as (
        update netbox_outbox.delivery d
           set leased_until = now() + make_interval(secs => (d.timeout_ms + lease_margin_ms) / 1000.0),
               leased_by = sidecar,
               attempts = d.attempts + 1
          from due where d.id = due.id
        returning d.id, d.webhook_id, d.webhook_name, d.event_id, d.attempts, d.timeout_ms,
                  d.ssl_verification, d.ca_file_path, coalesce(d.message_id, d.id) as message_id
    )
    select l.id, l.webhook_id, l.webhook_name, l.event_id, l.attempts, r.method, r.url,
           r.headers::text, r.body, l.timeout_ms, l.ssl_verification, l.ca_file_path, l.message_id,
           -- the secret as it is now: a rotation in NetBox applies to the next attempt
           (select w.secret::text from public.extras_webhook w
             where w.id = l.webhook_id and w.secret ~ '^\s*whsec_')
    from leased l join netbox_outbox.request r on r.delivery_id = l.id;
end
$$;

revoke all on function netbox_outbox.claim(bigint[], bigint[], bigint, uuid) from public;

comment on function netbox_outbox.claim(bigint[], bigint[], bigint, uuid) is
    'Used by the sidecar: leases due deliveries, each the head of its object''s queue, with the id '
    'the receiver sees and the webhook''s Standard Webhooks secret, if it has one.';

-- ---------------------------------------------------------------------------------------------
-- Replay: one row per delivery, the original marked replayed.
-- ---------------------------------------------------------------------------------------------
create or replace function netbox_outbox.replay_selection(
    delivery_id bigint default null,
    event_id    bigint default null,
    object_type text default null,
    object_id   bigint default null,
    webhook     text default null,
    since       timestamptz default null,
    until       timestamptz default null,
    states      text[] default '{dead}'
) returns setof bigint
language plpgsql stable
as $$
declare
    wanted_webhook bigint := case when webhook is null then null else netbox_outbox.webhook_id(webhook) end;
    wanted_type integer;
begin
    if object_type is not null then
        select ct.id into wanted_type from public.django_content_type ct
        where ct.app_label || '.' || ct.model = lower(object_type);
        if wanted_type is null then
            raise exception 'netbox_outbox: % is not a NetBox model', object_type
                using hint = 'Give the model as app_label.model, for example dcim.device.';
        end if;
    end if;
    -- 'replayed' is not selectable: a delivery is replayed once, then its copy is the one to
    -- replay (the copy keeps the message id)
    if array_length(states, 1) is null
       or not states <@ array['pending', 'delivered', 'dead', 'rejected', 'skipped'] then
        raise exception 'netbox_outbox: states must be a non-empty subset of {pending,delivered,dead,rejected,skipped}'
            using hint = 'A replayed delivery is not replayed again: replay its copy (select * from netbox_outbox.delivery where replay_of = ...).';
    end if;
    return query
    select d.id from netbox_outbox.delivery d
    where (replay_selection.delivery_id is null or d.id = replay_selection.delivery_id)
      and (replay_selection.event_id is null or d.event_id = replay_selection.event_id)
      and (wanted_type is null or d.content_type_id = wanted_type)
      and (replay_selection.object_id is null or d.object_id = replay_selection.object_id)
      and (wanted_webhook is null or d.webhook_id = wanted_webhook)
      and (since is null or d.created_at >= since)
      and (until is null or d.created_at < until)
      and d.state = any(states)
    order by d.seq, d.id;
end
$$;

drop function netbox_outbox.replay(bigint, bigint, text, bigint, text, timestamptz, timestamptz, text[], boolean);

-- Sends deliveries again. Each selected delivery is copied into a new pending delivery with the
-- same request and the same message id (the receiver sees the same X-Netbox-Outbox-Delivery /
-- webhook-id), at the end of its object's queue; the original becomes 'replayed', so it is never
-- selected again. Filters combine with AND; by default only dead deliveries are replayed.
-- Rejected deliveries have no request to copy: `netbox-outbox replay --rerender` builds them.
--   select * from netbox_outbox.replay(delivery_id => 42);
--   select * from netbox_outbox.replay(webhook => 'crm', states => '{dead,skipped}', dry_run => true);
-- One row per selected delivery: the original, its copy (null with dry_run), the message id,
-- the webhook and the object.
create function netbox_outbox.replay(
    delivery_id bigint default null,
    event_id    bigint default null,
    object_type text default null,
    object_id   bigint default null,
    webhook     text default null,
    since       timestamptz default null,
    until       timestamptz default null,
    states      text[] default '{dead}',
    dry_run     boolean default false
) returns table (original bigint, delivery bigint, message_id bigint, webhook_name text, object text)
language plpgsql
as $$
#variable_conflict use_column
begin
    create temporary table if not exists replay_chosen (id bigint) on commit drop;
    delete from replay_chosen;
    insert into replay_chosen
    select s.id
    from netbox_outbox.replay_selection(replay.delivery_id, replay.event_id, replay.object_type,
                                        replay.object_id, replay.webhook, replay.since,
                                        replay.until, replay.states) as s(id)
    join netbox_outbox.delivery d on d.id = s.id
    where d.state <> 'rejected';   -- nothing to send
    if dry_run then
        return query
        select d.id, null::bigint, coalesce(d.message_id, d.id), d.webhook_name,
               e.object_type || ':' || d.object_id
        from replay_chosen c join netbox_outbox.delivery d on d.id = c.id
        join netbox_outbox.event e on e.id = d.event_id
        order by d.seq, d.id;
        return;
    end if;

    -- the originals first (locked, and only those still in a selectable state), so two replays
    -- at once cannot both copy one delivery
    delete from replay_chosen c
    where not exists (select 1 from netbox_outbox.delivery d
                      where d.id = c.id and d.state in ('pending', 'delivered', 'dead', 'skipped'));
    perform 1 from netbox_outbox.delivery d join replay_chosen c on c.id = d.id
    order by d.id for update of d;

    return query
    with originals as (
        update netbox_outbox.delivery d
           set state = 'replayed', finished_at = coalesce(d.finished_at, now()),
               leased_until = '-infinity', leased_by = null
          from replay_chosen c
         where d.id = c.id and d.state in ('pending', 'delivered', 'dead', 'skipped')
        returning d.*
    ), copies as (
        insert into netbox_outbox.delivery
            (event_id, event_rule_id, event_rule_name, webhook_id, webhook_name, content_type_id, object_id,
             seq, timeout_ms, ssl_verification, ca_file_path, replay_of, message_id)
        select o.event_id, o.event_rule_id, o.event_rule_name, o.webhook_id, o.webhook_name,
               o.content_type_id, o.object_id, nextval('netbox_outbox.change_id_seq'),
               o.timeout_ms, o.ssl_verification, o.ca_file_path, o.id, coalesce(o.message_id, o.id)
        from (select * from originals order by seq, id) o
        returning id, replay_of, message_id, webhook_name, event_id, object_id
    ), requests as (
        insert into netbox_outbox.request (delivery_id, method, url, headers, body)
        select c.id, r.method, r.url, r.headers, r.body
        from copies c join netbox_outbox.request r on r.delivery_id = c.replay_of
    )
    select c.replay_of, c.id, c.message_id, c.webhook_name, e.object_type || ':' || c.object_id
    from copies c join netbox_outbox.event e on e.id = c.event_id
    order by c.id;
    perform pg_notify('netbox_outbox', 'deliveries');
end
$$;

revoke all on function netbox_outbox.replay(bigint, bigint, text, bigint, text, timestamptz, timestamptz, text[], boolean) from public;

comment on function netbox_outbox.replay(bigint, bigint, text, bigint, text, timestamptz, timestamptz, text[], boolean) is
    'Sends deliveries again with the same message id; the originals become replayed. One row per delivery.';

-- ---------------------------------------------------------------------------------------------
-- Blocked queues: visible, and releasable.
-- ---------------------------------------------------------------------------------------------
-- The heads of (webhook, object) queues that have failed at least once: each holds back every
-- later delivery of its object to its webhook until it is delivered, dies, or is skipped.
create view netbox_outbox.blocked_heads as
select h.webhook_id, d.webhook_name, e.object_type, h.object_id, d.id as delivery_id,
       coalesce(d.message_id, d.id) as message_id, d.attempts, d.last_status, d.last_error,
       d.next_attempt_at, f.first_failure_at as failing_since,
       now() - f.first_failure_at as blocked_for,
       (select count(*) from netbox_outbox.delivery q
         where q.webhook_id = h.webhook_id and q.content_type_id = h.content_type_id
           and q.object_id = h.object_id and q.state = 'pending' and q.id <> d.id) as waiting_behind,
       d.event_rule_name, d.event_id
from netbox_outbox.queue_head h
join netbox_outbox.delivery d on d.id = h.delivery_id
join netbox_outbox.event e on e.id = d.event_id
cross join lateral (
    select coalesce(min(a.started_at), d.created_at) as first_failure_at
    from netbox_outbox.attempt a where a.delivery_id = d.id
) f
where d.state = 'pending' and d.last_error is not null;

revoke all on netbox_outbox.blocked_heads from public;

comment on view netbox_outbox.blocked_heads is
    'Queue heads that failed at least once, and how many deliveries of the same object wait behind '
    'each; netbox_outbox.skip() releases one.';

-- Releases queues: the chosen pending delivery, or the failing head of each queue matched by
-- webhook and object, becomes 'skipped' (never sent again unless replayed), and the next
-- delivery of its object goes out. At least one filter is required.
--   select * from netbox_outbox.skip(delivery_id => 42);
--   select * from netbox_outbox.skip(webhook => 'crm', object_type => 'dcim.site', object_id => 7);
--   select * from netbox_outbox.skip(webhook => 'crm', reason => 'payload fixed by hand in the CRM');
-- One row per skipped delivery. A request in flight is not recalled: its outcome is logged,
-- the delivery stays skipped.
create function netbox_outbox.skip(
    delivery_id bigint default null,
    webhook     text default null,
    object_type text default null,
    object_id   bigint default null,
    reason      text default 'skipped by an operator'
) returns table (delivery bigint, webhook_name text, object text, attempts integer,
                 last_status integer, last_error text, waiting_behind bigint)
language plpgsql
as $$
#variable_conflict use_column
declare
    wanted_webhook bigint := case when skip.webhook is null then null else netbox_outbox.webhook_id(skip.webhook) end;
    wanted_type integer;
begin
    if skip.delivery_id is null and skip.webhook is null and skip.object_type is null then
        raise exception 'netbox_outbox: say what to skip: delivery_id, webhook, or object_type (and object_id)'
            using hint = 'select * from netbox_outbox.blocked_heads; lists the queues that are blocked.';
    end if;
    if skip.object_type is not null then
        select ct.id into wanted_type from public.django_content_type ct
        where ct.app_label || '.' || ct.model = lower(skip.object_type);
        if wanted_type is null then
            raise exception 'netbox_outbox: % is not a NetBox model', skip.object_type
                using hint = 'Give the model as app_label.model, for example dcim.device.';
        end if;
    end if;
    return query
    with chosen as (
        select d.id from netbox_outbox.delivery d
        where d.state = 'pending'
          and (skip.delivery_id is null or d.id = skip.delivery_id)
          and (wanted_webhook is null or d.webhook_id = wanted_webhook)
          and (wanted_type is null or d.content_type_id = wanted_type)
          and (skip.object_id is null or d.object_id = skip.object_id)
          -- without a delivery id, only failing heads: the rest of each queue goes on
          and (skip.delivery_id is not null or exists (
                  select 1 from netbox_outbox.queue_head h
                  where h.delivery_id = d.id and d.last_error is not null))
        order by d.id
        for update of d
    ), skipped as (
        update netbox_outbox.delivery d
           set state = 'skipped', finished_at = now(), leased_until = '-infinity', leased_by = null,
               last_error = left(skip.reason || coalesce(' (last error: ' || d.last_error || ')', ''), 4000)
          from chosen c where d.id = c.id
        returning d.id, d.webhook_id, d.webhook_name, d.content_type_id, d.object_id, d.event_id,
                  d.attempts, d.last_status, d.last_error
    )
    select s.id, s.webhook_name, e.object_type || ':' || s.object_id, s.attempts, s.last_status,
           s.last_error,
           (select count(*) from netbox_outbox.delivery q
             where q.webhook_id = s.webhook_id and q.content_type_id = s.content_type_id
               and q.object_id = s.object_id and q.state = 'pending')
    from skipped s join netbox_outbox.event e on e.id = s.event_id
    order by s.id;
    perform pg_notify('netbox_outbox', 'deliveries');
end
$$;

revoke all on function netbox_outbox.skip(bigint, text, text, bigint, text) from public;

comment on function netbox_outbox.skip(bigint, text, text, bigint, text) is
    'Releases blocked queues: the chosen pending delivery, or each matching failing head, becomes skipped. '
    'One row per skipped delivery.';

-- The delivery log, as in V3, with the chain of replays.
create or replace view netbox_outbox.delivery_log as
select a.started_at, d.webhook_name, e.object_type, d.object_id, e.event, a.delivery_id,
       a.attempt, a.status, a.duration_ms, a.error, a.response_excerpt, d.state as delivery_state,
       r.url, e.request_id, e.user_name, a.sidecar,
       coalesce(d.message_id, d.id) as message_id, d.replay_of
from netbox_outbox.attempt a
join netbox_outbox.delivery d on d.id = a.delivery_id
join netbox_outbox.event e on e.id = d.event_id
left join netbox_outbox.request r on r.delivery_id = d.id;

-- ---------------------------------------------------------------------------------------------
-- Grants (V5's list; sync() and the line below apply it).
-- ---------------------------------------------------------------------------------------------
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('table', 'netbox_outbox.blocked_heads', '{select}', 'view (operators, status, metrics)'),
    ('function', 'netbox_outbox.skip(bigint, text, text, bigint, text)', '{execute}',
     'operator function (caller''s rights): netbox-outbox skip')
on conflict do nothing;

-- claim() and replay() were dropped and made again: grant them to the recorded roles now.
select count(*) from netbox_outbox.refresh_grants();
