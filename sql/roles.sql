-- Step 2 of the sidecar's role setup: grant the sidecar's role exactly what it needs, and take
-- back anything more (what this file granted before netbox-outbox's V5 migration included every
-- NetBox table). Run by the role that applied the migrations (NetBox's table owner, or the DBA
-- who applied them), after the migrations and again after every NetBox or netbox-outbox upgrade:
--
--   psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 -v role=netbox_outbox -f sql/roles.sql
--
-- Step 1, creating the role, is sql/create-role.sql (needs CREATEROLE). What the role may do is
-- the table netbox_outbox.sidecar_grant (docs/privileges.md):
--   * read the NetBox tables the payload catalogue renders (users_user without the password
--     hash), NetBox's event rules, webhooks, custom fields, tags, config contexts, content and
--     object types and change log; never tokens, sessions or anything else;
--   * read the captured changes and the capture's settings, change them only through sync(),
--     prune() and summarize_capture() (owner rights);
--   * write its own delivery state: events, deliveries, requests, attempts, webhook pauses.
-- The sidecar's sync() re-applies this every minute for tables NetBox's migrations create.

\if :{?role}
\else
    do $$ begin raise exception 'sql/roles.sql: give the sidecar''s role name: psql -v role=netbox_outbox ...'; end $$;
\endif

select * from netbox_outbox.grant_sidecar(:'role');
