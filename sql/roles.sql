-- A least-privilege role for the netbox-outbox sidecar, separate from the role that applies the
-- migrations (NetBox's database owner, or a DBA).
--
-- Run as the owner of NetBox's tables, after the migrations, with a role name and a password:
--   psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 -v role=netbox_outbox -v password="'change-me'" -f sql/roles.sql
-- Then run the sidecar with DATABASE_URL=postgres://netbox_outbox:change-me@host/netbox
--
-- What the sidecar may do with it:
--   * read NetBox's tables (event rules, webhooks, custom fields, and the objects it renders);
--     never write them;
--   * read and write its own schema, netbox_outbox;
--   * call netbox_outbox.sync() and prune(), which run with their owner's rights to re-install
--     capture triggers and truncate old day slots.

create role :"role" login password :password;

-- NetBox: read only.
grant usage on schema public to :"role";
grant select on all tables in schema public to :"role";
-- Tables NetBox's future migrations create (run as the role that owns NetBox's tables).
alter default privileges in schema public grant select on tables to :"role";

-- netbox-outbox's own schema.
grant usage on schema netbox_outbox to :"role";
grant select, insert, update, delete on all tables in schema netbox_outbox to :"role";
grant usage, select on all sequences in schema netbox_outbox to :"role";
grant execute on all functions in schema netbox_outbox to :"role";
alter default privileges in schema netbox_outbox grant select, insert, update, delete on tables to :"role";
alter default privileges in schema netbox_outbox grant usage, select on sequences to :"role";
alter default privileges in schema netbox_outbox grant execute on functions to :"role";
