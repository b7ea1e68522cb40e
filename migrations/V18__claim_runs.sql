-- V18: claims that lease a run of each object's queue, not only its head.
--
-- Only the head of a (webhook, object) queue may be sent, and the next delivery of the object
-- becomes the head when the outcome of the last is committed. With 400 pending for each of 50
-- objects, every delivery then waited for two commits (the outcome's and the next claim's):
-- 995 deliveries/s, 45 ms between two deliveries of one object (docs/benchmarks.md, section 7).
--
-- claim_runs() leases each due head together with up to run_length - 1 deliveries queued right
-- behind it, no more than claim_limit deliveries in all (shared among the heads it found). The sidecar sends a run strictly one after another, each only after the one before
-- it was delivered, so one object's webhooks still arrive in commit order: a failure or shutdown
-- ends the run, and the rest are released unsent (release in the sidecar, attempts given back).
-- A run is contiguous: it stops before the first delivery of the queue that is not due, is
-- leased, or is locked by someone else. claim() (V11) stays for sidecars of before V18.
--
-- Recording moves queue heads once per queue, not once per delivery: until now each recorded
-- outcome fired a row trigger that locked its queue's head and looked for the next pending
-- delivery, walking past every delivery of the queue finished since the last vacuum. With runs,
-- a batch of outcomes holds many deliveries of each queue: recording 1,000 outcomes of 50
-- queues took 408 ms, and the recorder bounded the drain. record_batch() now tells the row
-- trigger to leave the heads to it (a transaction-local setting) and refreshes each queue it
-- touched once, set-based (refresh_queue_heads()). Every other writer keeps the row trigger.
--
-- No JIT for the delivery functions: once the outbox's statistics describe a large backlog, the
-- planner's estimate for a claim passes jit_above_cost and every claim compiled itself first
-- (seen: 92 functions, 36 ms of code emission in a claim that ran 4 ms, each of 315 claims; the
-- deep-queue drain fell from 11,370 to 1,527 deliveries/s). These are short statements that
-- read what they return: compiling them never pays.

create function netbox_outbox.claim_runs(
    webhooks bigint[], quotas bigint[], run_lengths bigint[], claim_limit bigint,
    lease_margin_ms bigint, sidecar uuid)
returns table (id bigint, webhook_id bigint, webhook_name text, event_id bigint, attempts integer,
               method text, url text, headers text, body bytea, timeout_ms integer,
               ssl_verification boolean, ca_file_path text, message_id bigint,
               standard_webhooks_secret text, head_id bigint, run_position bigint)
language plpgsql volatile
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off set jit = off
as $$
begin
    return query
    with heads as materialized (
        select c.id, c.webhook_id, c.content_type_id, c.object_id, c.seq, w.run_length
        from unnest(webhooks, quotas, run_lengths) as w(webhook_id, quota, run_length)
        cross join lateral (
            select d.id, d.webhook_id, d.content_type_id, d.object_id, d.seq
            from netbox_outbox.queue_head h
            join netbox_outbox.delivery d on d.id = h.delivery_id
            where h.webhook_id = w.webhook_id and h.next_attempt_at <= now()
              and d.state = 'pending' and d.leased_until < now()
            order by h.next_attempt_at, h.delivery_id
            limit w.quota
            for update of d skip locked
        ) c
    )
    -- the deliveries queued right behind each head, in queue order
    , behind as materialized (
        select f.id, h.id as head_id, f.n
        from heads h
        cross join lateral (
            select d.id, row_number() over (order by d.seq, d.id) as n
            from netbox_outbox.delivery d
            where d.webhook_id = h.webhook_id and d.content_type_id = h.content_type_id
              and d.object_id = h.object_id and d.state = 'pending'
              and (d.seq, d.id) > (h.seq, h.id)
            order by d.seq, d.id
            -- the claim's limit shared among the heads it found
            limit greatest(least(h.run_length, claim_limit / (select count(*) from heads)) - 1, 0)
        ) f
    )
    -- Each one locked if it can be (one primary-key probe each, never a scan of the table);
    -- a run ends before the first that is not due, is leased, or was locked by someone else.
    -- (Running aggregates, not joins between these sets: with hash and merge joins off, a join
    -- of two CTEs pairs every row with every other.)
    , checked as materialized (
        select b.id, b.head_id, b.n,
               bool_and(l.id is not null) over (partition by b.head_id order by b.n) as in_run
        from behind b
        left join lateral (
            -- checked again on the row as locked, should another claim have leased it since
            select d.id
            from netbox_outbox.delivery d
            where d.id = b.id and d.state = 'pending' and d.next_attempt_at <= now()
              and d.leased_until < now()
            for update of d skip locked
        ) l on true
    )
    , members as (
        select h.id, h.id as head_id, 0::bigint as n from heads h
        union all
        select c.id, c.head_id, c.n from checked c where c.in_run
    )
    , leased as (
        update netbox_outbox.delivery d
           set leased_until = now() + make_interval(secs => (d.timeout_ms + lease_margin_ms) / 1000.0),
               leased_by = sidecar,
               attempts = d.attempts + 1
          from members m where d.id = m.id
        returning d.id, d.webhook_id, d.webhook_name, d.event_id, d.attempts, d.timeout_ms,
                  d.ssl_verification, d.ca_file_path, coalesce(d.message_id, d.id) as message_id,
                  m.head_id, m.n
    )
    select l.id, l.webhook_id, l.webhook_name, l.event_id, l.attempts, r.method, r.url,
           r.headers::text, r.body, l.timeout_ms, l.ssl_verification, l.ca_file_path, l.message_id,
           -- the secret as it is now: a rotation in NetBox applies to the next attempt
           (select w.secret::text from public.extras_webhook w
             where w.id = l.webhook_id and w.secret ~ '^\s*whsec_'),
           l.head_id, l.n
    from leased l join netbox_outbox.request r on r.delivery_id = l.id
    order by l.head_id, l.n;
end
$$;

revoke all on function netbox_outbox.claim_runs(bigint[], bigint[], bigint[], bigint, bigint, uuid) from public;

comment on function netbox_outbox.claim_runs(bigint[], bigint[], bigint[], bigint, bigint, uuid) is
    'Used by the sidecar: leases due queue heads, each with up to run_lengths[i] - 1 deliveries '
    'queued right behind it (claim_limit deliveries in all), to be sent one after another in '
    'queue order.';

alter function netbox_outbox.claim(bigint[], bigint[], bigint, uuid) set jit = off;
alter function netbox_outbox.record(bigint[], integer[], bigint[], integer[], integer[], text[], text[], text[], bigint[], timestamptz[], bigint, uuid) set jit = off;

insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('function', 'netbox_outbox.claim_runs(bigint[], bigint[], bigint[], bigint, bigint, uuid)', '{execute}',
     'lease due deliveries, a run of each object''s queue at a time')
on conflict do nothing;


-- ---------------------------------------------------------------------------------------------
-- Queue heads refreshed once per queue by record_batch().
-- ---------------------------------------------------------------------------------------------

-- Makes the head of each queue these deliveries belong to its first pending delivery again (or
-- drops it), locking the heads in key order first, as inserters do (see refresh_queue_head()).
create function netbox_outbox.refresh_queue_heads(deliveries bigint[])
returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off set jit = off
as $$
begin
    perform 1 from netbox_outbox.queue_head h
    join netbox_outbox.delivery d on d.webhook_id = h.webhook_id
        and d.content_type_id = h.content_type_id and d.object_id = h.object_id
    where d.id = any(deliveries)
    order by h.webhook_id, h.content_type_id, h.object_id
    for update of h;
    with queues as (
        select distinct d.webhook_id, d.content_type_id, d.object_id
        from netbox_outbox.delivery d
        where d.id = any(deliveries)
    ), firsts as materialized (
        select q.webhook_id, q.content_type_id, q.object_id, f.id, f.seq, f.next_attempt_at
        from queues q
        left join lateral (
            select d.id, d.seq, d.next_attempt_at
            from netbox_outbox.delivery d
            where d.webhook_id = q.webhook_id and d.content_type_id = q.content_type_id
              and d.object_id = q.object_id and d.state = 'pending'
            order by d.seq, d.id
            limit 1
        ) f on true
    ), emptied as (
        delete from netbox_outbox.queue_head h
        using firsts f
        where f.id is null and h.webhook_id = f.webhook_id
          and h.content_type_id = f.content_type_id and h.object_id = f.object_id
    )
    insert into netbox_outbox.queue_head as h
        (webhook_id, content_type_id, object_id, delivery_id, seq, next_attempt_at)
    select f.webhook_id, f.content_type_id, f.object_id, f.id, f.seq, f.next_attempt_at
    from firsts f
    where f.id is not null
    order by f.webhook_id, f.content_type_id, f.object_id
    on conflict (webhook_id, content_type_id, object_id) do update
        set delivery_id = excluded.delivery_id, seq = excluded.seq,
            next_attempt_at = excluded.next_attempt_at
        where (h.delivery_id, h.seq, h.next_attempt_at)
              is distinct from (excluded.delivery_id, excluded.seq, excluded.next_attempt_at);
end
$$;

revoke all on function netbox_outbox.refresh_queue_heads(bigint[]) from public;

comment on function netbox_outbox.refresh_queue_heads(bigint[]) is
    'Internal: makes the heads of these deliveries'' queues their first pending deliveries (called by record_batch()).';

-- The row trigger, as in V9, unless the writer refreshes the heads itself in this transaction.
drop trigger queue_head_moved on netbox_outbox.delivery;
create trigger queue_head_moved after update of state, next_attempt_at on netbox_outbox.delivery
    for each row
    when (((old.state = 'pending') <> (new.state = 'pending')
           or (new.state = 'pending' and old.next_attempt_at is distinct from new.next_attempt_at))
          and current_setting('netbox_outbox.queue_heads', true) is distinct from 'by_writer')
    execute function netbox_outbox.delivery_moved();

-- Outcomes, as V9 records them, with the heads refreshed once per queue after the update.
create or replace function netbox_outbox.record_batch(
    ids bigint[], attempt_numbers integer[], started_ago_ms bigint[], durations_ms integer[],
    statuses integer[], errors text[], excerpts text[], states text[], retry_in_ms bigint[],
    retry_after_at timestamptz[], max_retry_after_ms bigint, sidecar uuid)
returns void
language plpgsql volatile
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off set jit = off
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
    -- The queue heads these outcomes move, locked in key order: inserters lock in key order
    -- too, so the two never deadlock.
    perform 1 from netbox_outbox.queue_head h
    join netbox_outbox.delivery d on d.webhook_id = h.webhook_id
        and d.content_type_id = h.content_type_id and d.object_id = h.object_id
    where d.id = any(ids)
    order by h.webhook_id, h.content_type_id, h.object_id
    for update of h;
    -- The heads are refreshed below, once per queue: the row trigger leaves them alone for the
    -- rest of this statement's transaction (undone with it if anything fails).
    perform set_config('netbox_outbox.queue_heads', 'by_writer', true);
    -- The delivery moves on only where this sidecar still holds it: those rows are found and
    -- locked one by one through the primary key first. (Filtering the update itself on
    -- leased_by let the planner, which estimates one row for any one sidecar's leases, scan
    -- every pending delivery and pair each with every outcome: 331 ms for 981 outcomes.) The
    -- retry comes after the schedule's delay, and no sooner than a Retry-After date the receiver
    -- gave (capped).
    with mine as materialized (
        select o.*
        from unnest(ids, states, retry_in_ms, retry_after_at, statuses, errors)
             as o(id, state, retry_in, retry_after_at, status, error)
        cross join lateral (
            select from netbox_outbox.delivery x
            where x.id = o.id and x.leased_by = record_batch.sidecar and x.state = 'pending'
            for update
        ) held
    )
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
      from mine o
     where d.id = o.id;
    perform set_config('netbox_outbox.queue_heads', '', true);
    perform netbox_outbox.refresh_queue_heads(ids);
end
$$;

revoke all on function netbox_outbox.record_batch(bigint[], integer[], bigint[], integer[], integer[], text[], text[], text[], bigint[], timestamptz[], bigint, uuid) from public;

-- record_batch() runs with the sidecar's rights and calls refresh_queue_heads().
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('function', 'netbox_outbox.refresh_queue_heads(bigint[])', '{execute}',
     'record_batch() refreshes the queue heads its outcomes moved, once per queue')
on conflict do nothing;

select count(*) from netbox_outbox.refresh_grants();
