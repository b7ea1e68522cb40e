-- netbox-outbox V6: one clock for the delivery queue, and outcome recording no receiver can stop.
--
-- * Every time the queue compares with now() is now computed by the database from a delay the
--   sidecar passes (retry delays, Retry-After, the attempt's start): a sidecar host whose clock
--   is off by an hour used to run a 5 s retry at once, since it passed its own clock's
--   "now + 5 s" and the claim compared that with the database's now().
-- * record() records what it can: if the batch fails, each outcome is recorded alone, and one
--   that still fails is recorded without the receiver's text, so one bad outcome never stops the
--   recording of the others (a receiver's answer once failed every call, for good).
--
-- The V2 record() stays for sidecars of the previous version during a rolling upgrade.

-- One batch of outcomes, set-based; raises if any row cannot be stored (record() handles that).
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

comment on function netbox_outbox.record_batch(bigint[], integer[], bigint[], integer[], integer[], text[], text[], text[], bigint[], timestamptz[], bigint, uuid) is
    'Used by record(): logs a batch of attempts and moves their deliveries on, all or nothing.';

-- Records outcomes: the whole batch at once; if that fails, each outcome alone; an outcome that
-- still fails is recorded without the receiver's text (status kept, error saying why). Returns
-- how many outcomes needed that last step; a WARNING names each one that could not be stored at
-- all (its lease expires and it is sent again: at least once).
create or replace function netbox_outbox.record(
    ids bigint[], attempt_numbers integer[], started_ago_ms bigint[], durations_ms integer[],
    statuses integer[], errors text[], excerpts text[], states text[], retry_in_ms bigint[],
    retry_after_at timestamptz[], max_retry_after_ms bigint, sidecar uuid)
returns integer
language plpgsql volatile
as $$
declare
    i integer;
    stripped integer := 0;
    problem text;
begin
    begin
        perform netbox_outbox.record_batch(ids, attempt_numbers, started_ago_ms, durations_ms,
            statuses, errors, excerpts, states, retry_in_ms, retry_after_at, max_retry_after_ms,
            sidecar);
        return 0;
    exception when others then
        -- fall through: one row at a time
    end;
    for i in 1 .. coalesce(array_length(ids, 1), 0) loop
        begin
            perform netbox_outbox.record_batch(ids[i:i], attempt_numbers[i:i],
                started_ago_ms[i:i], durations_ms[i:i], statuses[i:i], errors[i:i],
                excerpts[i:i], states[i:i], retry_in_ms[i:i], retry_after_at[i:i],
                max_retry_after_ms, sidecar);
            continue;
        exception when others then
            problem := sqlerrm;
        end;
        begin
            perform netbox_outbox.record_batch(ids[i:i], attempt_numbers[i:i],
                started_ago_ms[i:i], durations_ms[i:i], statuses[i:i],
                array['netbox-outbox could not store this attempt''s error and response as '
                      'received (' || problem || '); the outcome is kept, the text dropped'],
                array[null::text], states[i:i], retry_in_ms[i:i], array[null::timestamptz],
                max_retry_after_ms, sidecar);
            stripped := stripped + 1;
        exception when others then
            raise warning 'netbox_outbox.record: the outcome of delivery % could not be stored (%); its lease will expire and it is sent again',
                ids[i], sqlerrm;
        end;
    end loop;
    return stripped;
end
$$;

revoke all on function netbox_outbox.record(bigint[], integer[], bigint[], integer[], integer[], text[], text[], text[], bigint[], timestamptz[], bigint, uuid) from public;

comment on function netbox_outbox.record(bigint[], integer[], bigint[], integer[], integer[], text[], text[], text[], bigint[], timestamptz[], bigint, uuid) is
    'Used by the sidecar: logs attempts and moves their deliveries on (delivered, retry, dead); '
    'times are the database''s own (delays from now()); one bad outcome never blocks the others.';

-- Webhook pauses as the dispatcher needs them: how long each pause still runs, by the
-- database's clock (0: over, a probe may go; null: not paused).
create or replace function netbox_outbox.pauses(
    out webhook_id bigint, out remaining_ms bigint, out paused_by_operator boolean,
    out consecutive_failures integer)
returns setof record
language sql stable
as $$
    select s.webhook_id,
           case when s.paused_until is null then null
                when s.paused_until = 'infinity' then 100::bigint * 365 * 86400 * 1000
                else greatest(0, ceil(extract(epoch from s.paused_until - now()) * 1000))::bigint end,
           s.paused_by_operator, s.consecutive_failures
    from netbox_outbox.webhook_state s
    where s.paused_until is not null or s.consecutive_failures > 0
$$;

revoke all on function netbox_outbox.pauses() from public;

comment on function netbox_outbox.pauses() is
    'Used by the sidecar: each webhook''s pause, as the time it still runs by the database''s clock.';
