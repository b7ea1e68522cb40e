-- V21: no index of pending deliveries by due time; recorded outcomes find their heads by key.
--
-- With statistics that lag a growing backlog, the planner read the deliveries queued behind
-- each claimed head (claim_runs()) through delivery_due, an index whose leading columns are
-- the webhook and the due time, filtering the whole webhook's pending deliveries for each head:
-- 181,248 buffers for the runs of 64 heads, 60 ms, and such claims were most of the database
-- time of a NetBox-shaped drain (67 claims of 30,000 changes with 4,268,453 buffers, seen with
-- auto_explain: docs/benchmarks.md, section 3j). No claim has read delivery_due on purpose since
-- the queue heads (V9), and a pending delivery's every version (inserted, leased, retried) paid
-- an entry in it, so it is dropped. The webhooks with work are found through
-- delivery_object_order, which leads with the webhook too; of the indexes left, it is the only
-- one of pending deliveries that a queue's deliveries can be read from. (Row comparisons that
-- only delivery_object_order could serve were tried and not kept: PostgreSQL 15 does not end an
-- index scan on a row comparison's later column, so each queue read the rest of its webhook's.)
--
-- The queue heads an outcome moves are now found from the outcome's delivery by key
-- (refresh_queue_heads(), record_batch()): with statistics from when few heads existed, the
-- planner walked every head and probed the deliveries for each, twice per call (79,224
-- buffers for 100 outcomes among 3,001 queues; now 8,066).
--
-- What the functions return and how they lock is unchanged; they keep their owners and grants.

drop index netbox_outbox.delivery_due;

create or replace function netbox_outbox.claim_runs(
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
            -- the heads in due order from their index, each delivery found by its primary key
            -- (a lateral reference: the planner cannot start from the deliveries instead)
            select d.id, d.webhook_id, d.content_type_id, d.object_id, d.seq
            from netbox_outbox.queue_head h
            cross join lateral (
                select d.id, d.webhook_id, d.content_type_id, d.object_id, d.seq
                from netbox_outbox.delivery d
                -- coalesce(): the same test, which the partial indexes on pending deliveries
                -- cannot serve, so the key probe is the only path (measured: the planner scanned
                -- delivery_object_order for the id, 1,748 buffers a probe, 17 s for one claim)
                where d.id = h.delivery_id and coalesce(d.state, '') = 'pending'
                  and d.leased_until < now()
                for update of d skip locked
            ) d
            where h.webhook_id = w.webhook_id and h.next_attempt_at <= now()
            order by h.next_attempt_at, h.delivery_id
            limit w.quota
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
            -- (coalesce(): one key probe, as for the heads)
            where d.id = b.id and coalesce(d.state, '') = 'pending' and d.next_attempt_at <= now()
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

create or replace function netbox_outbox.refresh_queue_heads(deliveries bigint[])
returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp
set enable_seqscan = off set enable_hashjoin = off set enable_mergejoin = off set jit = off
as $$
begin
    perform 1
    from (select distinct d.webhook_id, d.content_type_id, d.object_id
          from unnest(deliveries) as o(id)
          cross join lateral (
              select d.webhook_id, d.content_type_id, d.object_id
              from netbox_outbox.delivery d where d.id = o.id
          ) d) q
    cross join lateral (
        -- each queue's head by its key (a lateral reference: never a walk of every head)
        select from netbox_outbox.queue_head h
        where h.webhook_id = q.webhook_id and h.content_type_id = q.content_type_id
          and h.object_id = q.object_id
    ) h
    order by q.webhook_id, q.content_type_id, q.object_id
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
    perform 1
    from (select distinct d.webhook_id, d.content_type_id, d.object_id
          from unnest(ids) as o(id)
          cross join lateral (
              select d.webhook_id, d.content_type_id, d.object_id
              from netbox_outbox.delivery d where d.id = o.id
          ) d) q
    cross join lateral (
        -- each queue's head by its key (a lateral reference: never a walk of every head)
        select from netbox_outbox.queue_head h
        where h.webhook_id = q.webhook_id and h.content_type_id = q.content_type_id
          and h.object_id = q.object_id
    ) h
    order by q.webhook_id, q.content_type_id, q.object_id
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
            -- (coalesce(): one key probe, not a scan of a partial index: see the top of V20)
            select from netbox_outbox.delivery x
            where x.id = o.id and x.leased_by = record_batch.sidecar
              and coalesce(x.state, '') = 'pending'
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
