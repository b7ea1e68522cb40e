-- netbox-outbox V4: keep the capture's BRIN indexes summarized up to the last full range.
--
-- The sidecar finds a batch of changes with the BRIN index on txid. Block ranges that are not
-- summarized yet always match, so every batch reads them all; autovacuum summarizes a full
-- range only on its next round (up to autovacuum_naptime, a minute by default), and at a few
-- hundred changes per second that tail is thousands of rows read again for every batch
-- (measured: 4.3 ms per batch at 500 changes/s, 0.2 ms once summarized). The sidecar calls
-- this function about once a second while changes arrive.
--
-- Only full ranges are summarized: a summarized range must be widened by every insert that
-- falls outside it, which would add work (and a page lock) to NetBox's writes; a full range
-- gets no more inserts. Security definer: summarizing needs the index's owner.

create function netbox_outbox.summarize_capture(out summarized integer)
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    per_range constant integer := 16;  -- pages_per_range of change_txid and changelog_txid (V1)
    recent constant integer := 64;     -- ranges looked at, back from the last full one
    today smallint := netbox_outbox.slot_of(now());
    part record;
    blocks bigint;
    last_full bigint;
    r bigint;
begin
    summarized := 0;
    -- Today's partitions, and yesterday's (a batch just after midnight reads both).
    for part in
        select i.indexrelid::regclass as index, i.indrelid::regclass as heap
        from unnest(array['change', 'changelog']) as parent
        cross join unnest(array[today, (today + 15) % 16]) as slot
        join pg_index i on i.indrelid = to_regclass(format('netbox_outbox.%I', parent || '_' || slot))
        join pg_class c on c.oid = i.indexrelid
        join pg_am am on am.oid = c.relam and am.amname = 'brin'
    loop
        blocks := pg_relation_size(part.heap) / current_setting('block_size')::integer;
        last_full := (blocks / per_range - 1) * per_range;
        r := greatest(0, last_full - (recent - 1) * per_range);
        while r <= last_full loop
            -- a no-op for a range that is already summarized
            summarized := summarized + brin_summarize_range(part.index, r);
            r := r + per_range;
        end loop;
    end loop;
end
$$;

comment on function netbox_outbox.summarize_capture() is
    'Summarizes the full BRIN ranges of today''s and yesterday''s capture partitions (the sidecar calls it while changes arrive).';
