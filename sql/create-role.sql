-- Step 1 of the sidecar's role setup: create its login role. Once, by a superuser or a role with
-- CREATEROLE (NetBox's table owner usually has neither). Safe to run again: an existing role is
-- left as it is, except for the password when one is given.
--
--   psql "$ADMIN_DATABASE_URL" -v ON_ERROR_STOP=1 -v role=netbox_outbox -v password='a long random password' -f sql/create-role.sql
--
-- Without -v password the role gets none: set one with \password netbox_outbox, or use another
-- authentication method (pg_hba.conf). Step 2, the grants, is sql/roles.sql (docs/install.md).

\if :{?role}
\else
    do $$ begin raise exception 'sql/create-role.sql: give the role name: psql -v role=netbox_outbox ...'; end $$;
\endif

-- An ordinary login role: no superuser, no CREATEROLE, no CREATEDB, no inherited privileges.
select format('create role %I login nosuperuser nocreatedb nocreaterole noinherit noreplication nobypassrls',
              :'role')
where not exists (select 1 from pg_roles where rolname = :'role')
\gexec

\if :{?password}
select format('alter role %I password %L', :'role', :'password')
\gexec
\endif
