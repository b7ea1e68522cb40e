-- V19: a queue head deleted under a REPEATABLE READ insert no longer fails the insert.
--
-- The assembler inserts deliveries in the REPEATABLE READ transaction that read their changes,
-- and the insert trigger (delivery_added(), V9) gives each queue its head with an upsert, which
-- locks the head row. The recorder empties a queue by locking its head and then deleting it
-- (refresh_queue_head(), refresh_queue_heads()). An upsert that found the head while the
-- recorder held that lock waits for it, and when the recorder commits the row it waited for is
-- gone: READ COMMITTED would simply insert a new head, but REPEATABLE READ raises "could not
-- serialize access due to concurrent delete", and the whole batch was rolled back and tried
-- again after a backoff (seen four times in a 1,000,000-change drain, each an ERROR in the
-- sidecar's log: docs/benchmarks.md section 3g).
--
-- Now the trigger tries the upsert once more after a serialization failure. The deleted head's
-- row is dead by then, so the second try inserts a fresh head for the queue, which is what the
-- queue needs: the recorder found it empty, and the new deliveries are its first. A head
-- updated rather than deleted under the insert ("concurrent update") cannot be read by a
-- snapshot taken before the update, so the second try fails as the first did, and the batch is
-- the sidecar's to retry (at once, without a backoff). The error's text is not looked at: it is
-- translated under another lc_messages.

create or replace function netbox_outbox.delivery_added() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    tries integer := 0;
begin
    loop
        tries := tries + 1;
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
        exception when serialization_failure then
            if tries > 1 then
                raise;
            end if;
        end;
    end loop;
end
$$;
