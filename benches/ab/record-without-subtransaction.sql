-- experiment: record() without its subtransaction (the batch alone, as before V6)
create or replace function netbox_outbox.record(
    ids bigint[], attempt_numbers integer[], started_ago_ms bigint[], durations_ms integer[],
    statuses integer[], errors text[], excerpts text[], states text[], retry_in_ms bigint[],
    retry_after_at timestamptz[], max_retry_after_ms bigint, sidecar uuid)
returns integer language plpgsql volatile as $$
begin
    perform netbox_outbox.record_batch(ids, attempt_numbers, started_ago_ms, durations_ms,
        statuses, errors, excerpts, states, retry_in_ms, retry_after_at, max_retry_after_ms, sidecar);
    return 0;
end $$;
