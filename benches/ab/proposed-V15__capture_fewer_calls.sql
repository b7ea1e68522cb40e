-- PROPOSED, not applied: a migration the lead may take as V15 once a quieter sitting confirms it
-- against benches/ab/capture-control.sql (docs/benchmarks.md §4b). Same as
-- capture-fewer-calls.sql, written as a migration.
--
-- netbox-outbox V15: the row capture with fewer calls per row.
--   * txid: txid_current() returns the transaction id as a bigint (the same 64-bit,
--     epoch-extended value); pg_current_xact_id()::text::bigint made it through text twice.
--   * the request setting is read once per row instead of twice;
--   * one INSERT per operation instead of three CASEs on tg_op.
-- Unchanged: the rows written, the uncached sequence (per-object order by id), the wake-up,
-- nothing that can raise, SECURITY DEFINER without SET search_path (every name qualified;
-- operators spelled with OPERATOR(pg_catalog.x)). No new object, so no sidecar_grant row.
alter table netbox_outbox.change alter column txid set default txid_current();
alter table netbox_outbox.changelog alter column txid set default txid_current();

create or replace function netbox_outbox.capture() returns trigger
language plpgsql security definer
as $$
declare
    req text := pg_catalog.current_setting('netbox_outbox.request', true);
begin
    if req operator(pg_catalog.=) '' then
        req := null;
    end if;
    -- An insert needs no image: the row after it is read later (see netbox_outbox.change).
    if tg_op operator(pg_catalog.=) 'INSERT' then
        insert into netbox_outbox.change
            (content_type_id, object_id, kind, db_user, application_name, request)
        values (tg_argv[0]::integer, new.id, 'I', session_user,
                pg_catalog.current_setting('application_name'), req);
    else
        insert into netbox_outbox.change
            (content_type_id, object_id, kind, db_user, application_name, request, before)
        values (tg_argv[0]::integer, old.id,
                case when tg_op operator(pg_catalog.=) 'UPDATE' then 'U' else 'D' end,
                session_user, pg_catalog.current_setting('application_name'), req,
                pg_catalog.row_to_json(old));
    end if;
    -- netbox_outbox.wake(), inlined
    if not pg_catalog.pg_try_advisory_xact_lock_shared(7418734260116239617)
       and pg_catalog.pg_notification_queue_usage() operator(pg_catalog.<) 0.5::double precision then
        perform pg_catalog.pg_notify('netbox_outbox', '');
    end if;
    return null;
end
$$;

revoke all on function netbox_outbox.capture() from public;
