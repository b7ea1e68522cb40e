-- netbox-outbox V2: events, deliveries and the delivery log.
--
-- The sidecar turns captured changes into events (one per object per transaction, merged the way
-- NetBox merges per request), matches NetBox's event rules, and stores one delivery per matching
-- rule with the request frozen: URL, headers and body exactly as they will be sent. Every attempt
-- is logged. Operators read all of it with plain SQL (see sql/cookbook.sql).

-- ---------------------------------------------------------------------------------------------
-- Events.
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.event (
    id              bigint generated always as identity primary key,
    -- the writer's transaction, and the id of the object's first change in it: for one object,
    -- seq follows commit order
    txid            bigint      not null,
    seq             bigint      not null,
    content_type_id integer     not null,
    object_type     text        not null,
    object_id       bigint      not null,
    event           text        not null check (event in ('created', 'updated', 'deleted')),
    -- NetBox's request id and user when NetBox made the change, else a per-transaction id and
    -- the database role
    request_id      uuid        not null,
    user_name       text        not null,
    -- netbox: made in a NetBox request or job; database: anything else (plain SQL, scripts,
    -- QuerySet.update(), ...)
    origin          text        not null check (origin in ('netbox', 'database')),
    committed_at    timestamptz not null,
    created_at      timestamptz not null default now(),
    deliveries      integer     not null
);

comment on table netbox_outbox.event is
    'One row per object per transaction that changed it, as NetBox would send it (created, updated, deleted).';

create index event_object on netbox_outbox.event (content_type_id, object_id, id);
create index event_created_at on netbox_outbox.event using brin (created_at);

-- ---------------------------------------------------------------------------------------------
-- Deliveries: one per event and matching rule, holding the request exactly as it is sent.
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.delivery (
    id               bigint generated always as identity primary key,
    event_id         bigint      not null,
    event_rule_id    bigint      not null,
    event_rule_name  text        not null,
    webhook_id       bigint      not null,
    webhook_name     text        not null,
    content_type_id  integer     not null,
    object_id        bigint      not null,
    -- order among the deliveries of one webhook and object (the event's seq; replays draw anew)
    seq              bigint      not null,
    -- pending: waiting or being sent; delivered: a 2xx came back; dead: every attempt failed;
    -- rejected: a template or condition error prevented building it (nothing was sent)
    state            text        not null default 'pending'
                     check (state in ('pending', 'delivered', 'dead', 'rejected')),
    -- the frozen request (null when rejected)
    method           text,
    url              text,
    headers          jsonb,      -- [[name, value], ...] in the order they are sent
    body             bytea       compression lz4,
    timeout_ms       integer     not null,
    ssl_verification boolean     not null,
    ca_file_path     text,
    -- progress
    attempts         integer     not null default 0,
    next_attempt_at  timestamptz not null default now(),
    leased_until     timestamptz not null default '-infinity',
    leased_by        uuid,
    last_status      integer,
    last_error       text,
    created_at       timestamptz not null default now(),
    finished_at      timestamptz,
    replay_of        bigint
) with (fillfactor = 80);

comment on table netbox_outbox.delivery is
    'One webhook request per event and matching event rule, frozen when the event was processed; '
    'retried until a 2xx or the end of the retry schedule. See netbox_outbox.attempt for each try.';

-- due work, per webhook (the sidecar claims a share of each webhook's due deliveries)
create index delivery_due on netbox_outbox.delivery (webhook_id, next_attempt_at, id)
    where state = 'pending';
-- the head of each (webhook, object) queue: a delivery waits for earlier ones of its object
create index delivery_object_order on netbox_outbox.delivery (webhook_id, content_type_id, object_id, seq, id)
    where state = 'pending';
create index delivery_event on netbox_outbox.delivery (event_id);
create index delivery_object on netbox_outbox.delivery (content_type_id, object_id, id);
create index delivery_finished on netbox_outbox.delivery (finished_at) where state <> 'pending';

-- ---------------------------------------------------------------------------------------------
-- The delivery log: every attempt.
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.attempt (
    id               bigint generated always as identity primary key,
    delivery_id      bigint      not null,
    attempt          integer     not null,
    started_at       timestamptz not null,
    duration_ms      integer     not null,
    -- the HTTP status, or null when no response came (error says why)
    status           integer,
    error            text,
    -- the first KiB of the response body (lossy UTF-8), never the request
    response_excerpt text,
    sidecar          uuid        not null
);

comment on table netbox_outbox.attempt is
    'Every attempt to send a delivery: when, how long, the status or error, and the start of the response.';

create index attempt_delivery on netbox_outbox.attempt (delivery_id, attempt);
create index attempt_started_at on netbox_outbox.attempt using brin (started_at);

-- ---------------------------------------------------------------------------------------------
-- Webhook health: automatic pauses after repeated failures, and operator pauses.
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.webhook_state (
    webhook_id           bigint primary key,
    -- while in the future, no delivery to this webhook is attempted; when it passes, one
    -- delivery probes the receiver and its outcome resumes or extends the pause
    paused_until         timestamptz,
    -- set by netbox_outbox.pause_webhook(): paused until resume_webhook()
    paused_by_operator   boolean     not null default false,
    consecutive_failures integer     not null default 0,
    last_failure_at      timestamptz,
    last_success_at      timestamptz,
    reason               text
);

comment on table netbox_outbox.webhook_state is
    'Per-webhook failure streaks and pauses (automatic, or by an operator with pause_webhook()).';

-- ---------------------------------------------------------------------------------------------
-- The sidecars that are running or ran recently (for status and scale-out).
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.sidecar (
    id           uuid primary key,
    hostname     text        not null,
    pid          integer     not null,
    version      text        not null,
    started_at   timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    stopped_at   timestamptz
);

-- ---------------------------------------------------------------------------------------------
-- Operator functions.
-- ---------------------------------------------------------------------------------------------

-- A webhook id from an id or a name (NetBox's extras_webhook, or our own history).
create function netbox_outbox.webhook_id(webhook text) returns bigint
language plpgsql stable
as $$
declare
    found_id bigint;
begin
    if webhook ~ '^[0-9]+$' then
        return webhook::bigint;
    end if;
    select id into found_id from public.extras_webhook where name = webhook;
    if found_id is null then
        select d.webhook_id into found_id from netbox_outbox.delivery d where d.webhook_name = webhook
        order by d.id desc limit 1;
    end if;
    if found_id is null then
        raise exception 'netbox_outbox: no webhook named %', webhook
            using hint = 'Give the name or id of a NetBox webhook: select id, name from extras_webhook;';
    end if;
    return found_id;
end
$$;

-- Stops deliveries to a webhook until resume_webhook(): select netbox_outbox.pause_webhook('crm');
create function netbox_outbox.pause_webhook(webhook text, reason text default 'paused by an operator')
returns bigint
language sql
as $$
    insert into netbox_outbox.webhook_state (webhook_id, paused_until, paused_by_operator, reason)
    values (netbox_outbox.webhook_id(webhook), 'infinity', true, reason)
    on conflict (webhook_id) do update
        set paused_until = 'infinity', paused_by_operator = true, reason = excluded.reason
    returning webhook_id
$$;

-- Resumes a webhook paused by an operator or by failures; its due deliveries go out at once.
create function netbox_outbox.resume_webhook(webhook text) returns bigint
language sql
as $$
    insert into netbox_outbox.webhook_state (webhook_id, paused_until, paused_by_operator, consecutive_failures, reason)
    values (netbox_outbox.webhook_id(webhook), null, false, 0, 'resumed by an operator')
    on conflict (webhook_id) do update
        set paused_until = null, paused_by_operator = false, consecutive_failures = 0,
            reason = 'resumed by an operator'
    returning webhook_id
$$;

-- Sends deliveries again: each selected delivery is copied into a new pending delivery with the
-- same request (body, headers, signature), which goes out after anything already queued for its
-- object. Filters combine with AND; by default only dead deliveries are replayed.
--   select netbox_outbox.replay(delivery_id => 42);
--   select netbox_outbox.replay(event_id => 7, states => '{delivered,dead}');
--   select netbox_outbox.replay(object_type => 'dcim.device', object_id => 12);
--   select netbox_outbox.replay(webhook => 'crm', since => now() - interval '1 day');
--   select netbox_outbox.replay(since => '2026-11-24 10:00', until => '2026-11-24 11:00', dry_run => true);
-- Returns how many deliveries were (or, with dry_run, would be) replayed.
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
) returns bigint
language plpgsql
as $$
declare
    wanted_webhook bigint := case when webhook is null then null else netbox_outbox.webhook_id(webhook) end;
    wanted_type integer;
    n bigint;
begin
    if object_type is not null then
        select ct.id into wanted_type from public.django_content_type ct
        where ct.app_label || '.' || ct.model = lower(object_type);
        if wanted_type is null then
            raise exception 'netbox_outbox: % is not a NetBox model', object_type
                using hint = 'Give the model as app_label.model, for example dcim.device.';
        end if;
    end if;
    if array_length(states, 1) is null or not states <@ array['pending', 'delivered', 'dead', 'rejected'] then
        raise exception 'netbox_outbox: states must be a non-empty subset of {pending,delivered,dead,rejected}';
    end if;

    create temporary table if not exists replay_selection (id bigint) on commit drop;
    delete from replay_selection;
    insert into replay_selection
    select d.id from netbox_outbox.delivery d
    where (replay.delivery_id is null or d.id = replay.delivery_id)
      and (replay.event_id is null or d.event_id = replay.event_id)
      and (wanted_type is null or d.content_type_id = wanted_type)
      and (replay.object_id is null or d.object_id = replay.object_id)
      and (wanted_webhook is null or d.webhook_id = wanted_webhook)
      and (since is null or d.created_at >= since)
      and (until is null or d.created_at < until)
      and d.state = any(states)
      and d.state <> 'rejected';   -- nothing to send
    get diagnostics n = row_count;
    if dry_run then
        return n;
    end if;

    insert into netbox_outbox.delivery
        (event_id, event_rule_id, event_rule_name, webhook_id, webhook_name, content_type_id, object_id,
         seq, method, url, headers, body, timeout_ms, ssl_verification, ca_file_path, replay_of)
    select d.event_id, d.event_rule_id, d.event_rule_name, d.webhook_id, d.webhook_name,
           d.content_type_id, d.object_id, nextval('netbox_outbox.change_id_seq'),
           d.method, d.url, d.headers, d.body, d.timeout_ms, d.ssl_verification, d.ca_file_path, d.id
    from netbox_outbox.delivery d join replay_selection s on s.id = d.id
    order by d.seq, d.id;
    perform pg_notify('netbox_outbox', 'deliveries');
    return n;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Retention, extended to events, deliveries and attempts (finished ones only).
-- ---------------------------------------------------------------------------------------------
create or replace function netbox_outbox.prune(out table_name text, out slot smallint, out truncated boolean)
returns setof record
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    s smallint;
    part regclass;
    k pg_snapshot := (select c.snapshot from netbox_outbox.cursor c where c.name = 'changes');
    busy boolean;
    keep interval := make_interval(days => least(greatest(coalesce(
        (select value::int from netbox_outbox.setting where name = 'retention_days'), 7), 1), 14));
    n bigint;
begin
    -- captured changes: truncate whole day slots
    for s in select * from netbox_outbox.expired_slots() loop
        foreach table_name in array array['change', 'changelog'] loop
            part := format('netbox_outbox.%I', table_name || '_' || s)::regclass;
            execute format('select exists (select 1 from %s where not pg_visible_in_snapshot(txid::text::xid8, $1))', part)
               into busy using k;
            continue when busy;
            execute format('select exists (select 1 from %s)', part) into busy;
            continue when not busy;
            slot := s;
            truncated := netbox_outbox.truncate_slot(part);
            return next;
        end loop;
    end loop;

    -- finished deliveries and their attempts, events: delete in bounded batches
    slot := null;
    truncated := true;
    loop
        with old as (
            select id from netbox_outbox.delivery
            where state <> 'pending' and finished_at < now() - keep
            order by finished_at limit 10000
        ), gone as (
            delete from netbox_outbox.delivery d using old where d.id = old.id returning d.id
        ), their_attempts as (
            delete from netbox_outbox.attempt a using gone where a.delivery_id = gone.id
        )
        select count(*) into n from gone;
        exit when n = 0;
    end loop;
    table_name := 'delivery'; return next;
    delete from netbox_outbox.attempt a
    where a.started_at < now() - keep
      and not exists (select 1 from netbox_outbox.delivery d where d.id = a.delivery_id);
    delete from netbox_outbox.event e
    where e.created_at < now() - keep
      and not exists (select 1 from netbox_outbox.delivery d where d.event_id = e.id);
    table_name := 'event'; return next;
    delete from netbox_outbox.sidecar where last_seen_at < now() - keep;
end
$$;
