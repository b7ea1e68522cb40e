-- Experiment for BENCH=ab (docs/benchmarks.md §1b), tried as an extra migration and not kept (it measured
-- 96 ms of PostgreSQL CPU per 1,000 deliveries against main's 85): queue heads moved once per
-- statement, not once per delivery.
--
-- V9 kept each (webhook, object) queue's head with a row trigger: every delivered, dead or
-- rescheduled delivery ran refresh_queue_head() on its own (a PL/pgSQL call, a lock, a lookup
-- of the next pending delivery and an upsert or delete), and record_batch() first locked the
-- heads a batch moves, in key order, with a join of its own. Recording a batch of 1,000
-- outcomes made 1,000 such calls. Now one statement-level trigger does the same for the whole
-- statement, set-based: the queues whose head may have moved (from the statement's transition
-- tables), their head rows locked in key order, the first pending delivery of each found, the
-- heads updated or dropped in one statement. The rule is V9's, unchanged: a queue's head is its
-- first pending delivery by (seq, id).
--
-- Transition tables cannot go with a column list (`after update of state, ...`), so the trigger
-- fires for every update of netbox_outbox.delivery, claims included; a claim changes neither
-- state nor next_attempt_at, so the trigger finds no queue to move and returns after one join of
-- the claim's own rows.

drop trigger queue_head_moved on netbox_outbox.delivery;

create function netbox_outbox.deliveries_moved() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
set enable_seqscan = off
as $$
declare
    webhooks bigint[];
    types integer[];
    objects bigint[];
begin
    -- The queues a delivery left (delivered, dead, rejected), rejoined (a replay) or moved in
    -- (a retry rescheduled), in key order.
    select array_agg(q.webhook_id order by q.webhook_id, q.content_type_id, q.object_id),
           array_agg(q.content_type_id order by q.webhook_id, q.content_type_id, q.object_id),
           array_agg(q.object_id order by q.webhook_id, q.content_type_id, q.object_id)
      into webhooks, types, objects
    from (select distinct n.webhook_id, n.content_type_id, n.object_id
          from moved_to n join moved_from o on o.id = n.id
          where (o.state = 'pending') <> (n.state = 'pending')
             or (n.state = 'pending' and o.next_attempt_at is distinct from n.next_attempt_at)) q;
    if webhooks is null then
        return null;
    end if;
    -- Lock the heads first, in key order (inserters lock in key order too, so the two never
    -- deadlock): a writer adding to one of these queues holds its head until it commits, so
    -- once the lock is ours the next statement sees every delivery it added (as V9's
    -- refresh_queue_head()).
    perform 1 from netbox_outbox.queue_head h
    join unnest(webhooks, types, objects) as q(webhook_id, content_type_id, object_id)
      on h.webhook_id = q.webhook_id and h.content_type_id = q.content_type_id
     and h.object_id = q.object_id
    order by h.webhook_id, h.content_type_id, h.object_id
    for update of h;
    with first as (
        select q.webhook_id, q.content_type_id, q.object_id, f.id, f.seq, f.next_attempt_at
        from unnest(webhooks, types, objects) as q(webhook_id, content_type_id, object_id)
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
        using first f
        where f.id is null and h.webhook_id = f.webhook_id
          and h.content_type_id = f.content_type_id and h.object_id = f.object_id
    )
    insert into netbox_outbox.queue_head as h
        (webhook_id, content_type_id, object_id, delivery_id, seq, next_attempt_at)
    select f.webhook_id, f.content_type_id, f.object_id, f.id, f.seq, f.next_attempt_at
    from first f
    where f.id is not null
    on conflict (webhook_id, content_type_id, object_id) do update
        set delivery_id = excluded.delivery_id, seq = excluded.seq,
            next_attempt_at = excluded.next_attempt_at;
    return null;
end
$$;

revoke all on function netbox_outbox.deliveries_moved() from public;

comment on function netbox_outbox.deliveries_moved() is
    'Internal: moves the heads of the queues an update of netbox_outbox.delivery touched '
    '(statement trigger queue_head_moved).';

create trigger queue_head_moved after update on netbox_outbox.delivery
    referencing old table as moved_from new table as moved_to
    for each statement execute function netbox_outbox.deliveries_moved();

-- Outcomes, as V9 records them, without locking the heads beforehand: the statement trigger
-- locks them in key order itself.
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
