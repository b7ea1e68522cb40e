-- netbox-outbox V9: claims that cost what they return.
--
-- Only the head of each (webhook, object) queue may be sent, so one object's webhooks go out in
-- commit order. Until now a claim found the heads by walking the due deliveries and asking, for
-- each, whether it was its object's first: with 400 pending updates for each of 51 devices, a
-- claim walked all 20,000 to find the 51 heads (measured: 517 deliveries/s, 76 ms between two
-- deliveries of one device). Now the heads are kept in their own table, one row per
-- (webhook, object) queue with pending deliveries, maintained by triggers on
-- netbox_outbox.delivery, so every writer (the sidecar's assembler, replay() and
-- `replay --rerender`, operators' SQL) keeps it right without knowing about it. A claim reads the
-- due heads in due order and stops after its quota: it costs what it returns, plus the heads
-- already leased (at most what is in flight).
--
-- The order rule: a queue's deliveries go out by (seq, id); the head is the first pending one,
-- and the next becomes head when it is delivered, dead, or removed. A head that is retrying keeps
-- its queue waiting (by design); dead and rejected deliveries never block. A replayed delivery
-- draws a new seq, so it joins the end of its object's queue.

create table netbox_outbox.queue_head (
    webhook_id      bigint      not null,
    content_type_id integer     not null,
    object_id       bigint      not null,
    -- the first pending delivery of the queue by (seq, id), and when it is due: a copy of its
    -- next_attempt_at, so the claim finds due heads in one index range
    delivery_id     bigint      not null,
    seq             bigint      not null,
    next_attempt_at timestamptz not null,
    primary key (webhook_id, content_type_id, object_id)
);

comment on table netbox_outbox.queue_head is
    'The head of each (webhook, object) queue with pending deliveries: the only delivery of the '
    'object that may be sent. Kept by triggers on netbox_outbox.delivery.';

create index queue_head_due on netbox_outbox.queue_head (webhook_id, next_attempt_at, delivery_id);

-- Makes the queue's head its first pending delivery again (or drops the head when none is
-- pending). Locks the head row first: a writer inserting into this queue holds that lock until
-- it commits (see delivery_added()), so once the lock is ours the next statement sees every
-- delivery that writer added, and a delivery committed meanwhile is never left without a head.
create function netbox_outbox.refresh_queue_head(queue_webhook bigint, queue_type integer, queue_object bigint)
returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
set enable_seqscan = off
as $$
declare
    first record;
begin
    perform 1 from netbox_outbox.queue_head h
    where h.webhook_id = queue_webhook and h.content_type_id = queue_type and h.object_id = queue_object
    for update;
    select d.id, d.seq, d.next_attempt_at into first
    from netbox_outbox.delivery d
    where d.webhook_id = queue_webhook and d.content_type_id = queue_type
      and d.object_id = queue_object and d.state = 'pending'
    order by d.seq, d.id
    limit 1;
    if first.id is null then
        delete from netbox_outbox.queue_head h
        where h.webhook_id = queue_webhook and h.content_type_id = queue_type and h.object_id = queue_object;
    else
        insert into netbox_outbox.queue_head as h
            (webhook_id, content_type_id, object_id, delivery_id, seq, next_attempt_at)
        values (queue_webhook, queue_type, queue_object, first.id, first.seq, first.next_attempt_at)
        on conflict (webhook_id, content_type_id, object_id) do update
            set delivery_id = excluded.delivery_id, seq = excluded.seq,
                next_attempt_at = excluded.next_attempt_at;
    end if;
end
$$;

revoke all on function netbox_outbox.refresh_queue_head(bigint, integer, bigint) from public;

comment on function netbox_outbox.refresh_queue_head(bigint, integer, bigint) is
    'Internal: makes a queue''s head its first pending delivery (called by the delivery triggers).';

-- Deliveries inserted (by the assembler, replay, or by hand): each queue they join gets its
-- head, or keeps it unless a new delivery comes first. Set-based, once per statement; the head
-- rows are locked in key order (writers never deadlock on each other) and stay locked until the
-- writer commits (see refresh_queue_head()).
create function netbox_outbox.delivery_added() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    insert into netbox_outbox.queue_head as h
        (webhook_id, content_type_id, object_id, delivery_id, seq, next_attempt_at)
    select distinct on (a.webhook_id, a.content_type_id, a.object_id)
           a.webhook_id, a.content_type_id, a.object_id, a.id, a.seq, a.next_attempt_at
    from added a
    where a.state = 'pending'
    order by a.webhook_id, a.content_type_id, a.object_id, a.seq, a.id
    on conflict (webhook_id, content_type_id, object_id) do update
        set delivery_id = case when (excluded.seq, excluded.delivery_id) < (h.seq, h.delivery_id)
                               then excluded.delivery_id else h.delivery_id end,
            next_attempt_at = case when (excluded.seq, excluded.delivery_id) < (h.seq, h.delivery_id)
                                   then excluded.next_attempt_at else h.next_attempt_at end,
            seq = least(excluded.seq, h.seq);
    return null;
end
$$;

revoke all on function netbox_outbox.delivery_added() from public;

create trigger queue_head_added after insert on netbox_outbox.delivery
    referencing new table as added
    for each statement execute function netbox_outbox.delivery_added();

-- A delivery that left its queue (delivered, dead, removed), came back to it, or was
-- rescheduled: its queue's head follows.
create function netbox_outbox.delivery_moved() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'UPDATE' and old.state = 'pending' and new.state = 'pending' then
        -- a retry: the head (if it is this delivery) is due when the delivery is
        update netbox_outbox.queue_head h set next_attempt_at = new.next_attempt_at
        where h.webhook_id = new.webhook_id and h.content_type_id = new.content_type_id
          and h.object_id = new.object_id and h.delivery_id = new.id;
    elsif tg_op = 'DELETE' then
        perform netbox_outbox.refresh_queue_head(old.webhook_id, old.content_type_id, old.object_id);
    else
        perform netbox_outbox.refresh_queue_head(new.webhook_id, new.content_type_id, new.object_id);
    end if;
    return null;
end
$$;

revoke all on function netbox_outbox.delivery_moved() from public;

-- Claims change only leases and attempt counts: these triggers do not fire for them.
create trigger queue_head_moved after update of state, next_attempt_at on netbox_outbox.delivery
    for each row
    when ((old.state = 'pending') <> (new.state = 'pending')
          or (new.state = 'pending' and old.next_attempt_at is distinct from new.next_attempt_at))
    execute function netbox_outbox.delivery_moved();

create trigger queue_head_removed after delete on netbox_outbox.delivery
    for each row when (old.state = 'pending')
    execute function netbox_outbox.delivery_moved();

-- The heads of what is pending now (nobody adds deliveries while this migration runs).
lock table netbox_outbox.delivery in share row exclusive mode;
insert into netbox_outbox.queue_head
    (webhook_id, content_type_id, object_id, delivery_id, seq, next_attempt_at)
select distinct on (d.webhook_id, d.content_type_id, d.object_id)
       d.webhook_id, d.content_type_id, d.object_id, d.id, d.seq, d.next_attempt_at
from netbox_outbox.delivery d
where d.state = 'pending'
order by d.webhook_id, d.content_type_id, d.object_id, d.seq, d.id;

-- Up to quotas[i] due deliveries of webhooks[i], each the head of its (webhook, object) queue,
-- oldest due first, leased for their timeout plus the margin, after which another sidecar may
-- send them again. Walks the webhook's due heads only: what it returns, plus heads leased to a
-- sidecar (in flight) or locked by another claim (skipped).
create or replace function netbox_outbox.claim(webhooks bigint[], quotas bigint[], lease_margin_ms bigint, sidecar uuid)
returns table (id bigint, webhook_id bigint, webhook_name text, event_id bigint, attempts integer,
               method text, url text, headers text, body bytea, timeout_ms integer,
               ssl_verification boolean, ca_file_path text)
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
                  d.ssl_verification, d.ca_file_path
    )
    select l.id, l.webhook_id, l.webhook_name, l.event_id, l.attempts, r.method, r.url,
           r.headers::text, r.body, l.timeout_ms, l.ssl_verification, l.ca_file_path
    from leased l join netbox_outbox.request r on r.delivery_id = l.id;
end
$$;

revoke all on function netbox_outbox.claim(bigint[], bigint[], bigint, uuid) from public;

comment on function netbox_outbox.claim(bigint[], bigint[], bigint, uuid) is
    'Used by the sidecar: leases due deliveries, each the head of its object''s queue '
    '(netbox_outbox.queue_head); costs what it returns, whatever the depth of the queues.';

-- Outcomes, as V6 records them, but first locking the queue heads they move, in key order.
create or replace function netbox_outbox.record_batch(
    ids bigint[], attempt_numbers integer[], started_ago_ms bigint[], durations_ms integer[],
    statuses integer[], errors text[], excerpts text[], states text[], retry_in_ms bigint[],
    retry_after_at timestamptz[], max_retry_after_ms bigint, sidecar uuid)
returns void
language plpgsql volatile
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off
as $$
begin
    -- Every attempt is logged, even one whose lease another sidecar took over meanwhile. It
    -- started started_ago_ms before now, as measured by the sidecar's monotonic clock.
    insert into netbox_outbox.attempt
        (delivery_id, attempt, started_at, duration_ms, status, error, response_excerpt, sidecar)
    select o.id, o.attempt, now() - make_interval(secs => greatest(o.ago, 0) / 1000.0),
           o.duration, o.status, left(o.error, 4000), left(o.excerpt, 65536), record_batch.sidecar
    from unnest(ids, attempt_numbers, started_ago_ms, durations_ms, statuses, errors, excerpts)
         as o(id, attempt, ago, duration, status, error, excerpt);
    -- The queue heads these outcomes move, locked in key order before the delivery triggers
    -- lock them in whatever order the update visits its rows: inserters lock in key order too,
    -- so the two never deadlock.
    perform 1 from netbox_outbox.queue_head h
    join netbox_outbox.delivery d on d.webhook_id = h.webhook_id
        and d.content_type_id = h.content_type_id and d.object_id = h.object_id
    where d.id = any(ids)
    order by h.webhook_id, h.content_type_id, h.object_id
    for update of h;
    -- The delivery moves on only where this sidecar still holds it. The retry comes after the
    -- schedule's delay, and no sooner than a Retry-After date the receiver gave (capped).
    update netbox_outbox.delivery d
       set state = o.state,
           next_attempt_at = case when o.retry_in is null then d.next_attempt_at
               else now() + make_interval(secs => greatest(
                   o.retry_in,
                   least(coalesce(extract(epoch from o.retry_after_at - now()) * 1000, 0),
                         max_retry_after_ms)) / 1000.0) end,
           leased_until = '-infinity',
           leased_by = null,
           last_status = o.status,
           last_error = left(o.error, 4000),
           finished_at = case when o.state = 'pending' then null else now() end
      from unnest(ids, states, retry_in_ms, retry_after_at, statuses, errors)
           as o(id, state, retry_in, retry_after_at, status, error)
     where d.id = o.id and d.leased_by = record_batch.sidecar and d.state = 'pending';
end
$$;

revoke all on function netbox_outbox.record_batch(bigint[], integer[], bigint[], integer[], integer[], text[], text[], text[], bigint[], timestamptz[], bigint, uuid) from public;


-- claim() and record_batch() read and lock the heads with the caller's rights (V5's list; sync() applies it).
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('table', 'netbox_outbox.queue_head', '{select,update}', 'claim() reads the due heads; record_batch() locks those it moves (FOR UPDATE needs UPDATE)')
on conflict do nothing;
