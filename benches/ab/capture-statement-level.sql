-- Experiment, not a migration: the capture of dcim_device (the benchmark's table) by statement
-- triggers over transition tables instead of a row trigger: one INSERT ... SELECT and one
-- wake-up check per statement, whatever the number of rows. Ids are still drawn from the
-- uncached sequence, at the end of the statement, after its row locks are held, so one object's
-- ids still follow commit order. A real migration would install these in install_trigger() and
-- teach sync() to recognise them.
create or replace function netbox_outbox.capture_rows_new() returns trigger
language plpgsql security definer
as $$
begin
    insert into netbox_outbox.change
        (content_type_id, object_id, kind, db_user, application_name, request)
    select tg_argv[0]::integer, n.id, 'I', session_user, pg_catalog.current_setting('application_name'),
           case when pg_catalog.current_setting('netbox_outbox.request', true) operator(pg_catalog.=) ''
                then null else pg_catalog.current_setting('netbox_outbox.request', true) end
    from new_rows n;
    if not pg_catalog.pg_try_advisory_xact_lock_shared(7418734260116239617)
       and pg_catalog.pg_notification_queue_usage() operator(pg_catalog.<) 0.5::double precision then
        perform pg_catalog.pg_notify('netbox_outbox', '');
    end if;
    return null;
end
$$;

create or replace function netbox_outbox.capture_rows_old() returns trigger
language plpgsql security definer
as $$
begin
    insert into netbox_outbox.change
        (content_type_id, object_id, kind, db_user, application_name, request, before)
    select tg_argv[0]::integer, o.id,
           case when tg_op operator(pg_catalog.=) 'UPDATE' then 'U' else 'D' end,
           session_user, pg_catalog.current_setting('application_name'),
           case when pg_catalog.current_setting('netbox_outbox.request', true) operator(pg_catalog.=) ''
                then null else pg_catalog.current_setting('netbox_outbox.request', true) end,
           pg_catalog.row_to_json(o)
    from old_rows o;
    if not pg_catalog.pg_try_advisory_xact_lock_shared(7418734260116239617)
       and pg_catalog.pg_notification_queue_usage() operator(pg_catalog.<) 0.5::double precision then
        perform pg_catalog.pg_notify('netbox_outbox', '');
    end if;
    return null;
end
$$;

revoke all on function netbox_outbox.capture_rows_new() from public;
revoke all on function netbox_outbox.capture_rows_old() from public;

do $$
declare
    ct text := (select content_type_id::text from netbox_outbox.watch where table_name = 'dcim_device');
begin
    execute 'drop trigger if exists netbox_outbox_capture on public.dcim_device';
    execute format('create trigger netbox_outbox_capture_i after insert on public.dcim_device
                    referencing new table as new_rows for each statement
                    execute function netbox_outbox.capture_rows_new(%L)', ct);
    execute format('create trigger netbox_outbox_capture_u after update on public.dcim_device
                    referencing old table as old_rows for each statement
                    execute function netbox_outbox.capture_rows_old(%L)', ct);
    execute format('create trigger netbox_outbox_capture_d after delete on public.dcim_device
                    referencing old table as old_rows for each statement
                    execute function netbox_outbox.capture_rows_old(%L)', ct);
end
$$;
