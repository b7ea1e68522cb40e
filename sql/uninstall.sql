-- Removes everything netbox-outbox created in NetBox's database: the capture triggers on
-- NetBox's tables, the DDL event trigger, and the netbox_outbox schema with the outbox, the
-- deliveries and their log. NetBox's own tables and data are left exactly as they are.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/uninstall.sql
--
-- Stop every sidecar first. Then, if you created the sidecar's role (sql/create-role.sql), as a
-- superuser or CREATEROLE role, in this database:
--   drop owned by netbox_outbox; drop role netbox_outbox;
-- (drop owned also takes back its grants on NetBox's tables; the schema's removal takes the rest.)

-- The schema's removal lists every object it cascades to as a NOTICE: only warnings here.
set client_min_messages = warning;

begin;

drop event trigger if exists netbox_outbox_ddl;

do $$
declare
    t record;
begin
    for t in select tgrelid::regclass as tbl, tgname from pg_trigger
             where tgname in ('netbox_outbox_capture', 'netbox_outbox_capture_truncate', 'netbox_outbox_capture_tag',
                             'netbox_outbox_capture_changelog', 'netbox_outbox_capture_link')
               and not tgisinternal loop
        execute format('drop trigger %I on %s', t.tgname, t.tbl);
    end loop;
end
$$;

drop schema if exists netbox_outbox cascade;

commit;
