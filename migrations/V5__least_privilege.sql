-- netbox-outbox V5: least privilege.
--
-- Until V4, every function in netbox_outbox kept PostgreSQL's default EXECUTE for PUBLIC, and
-- sql/roles.sql gave the sidecar's role SELECT on every table of NetBox (tokens, sessions,
-- password hashes included) and write access to every table of ours. Anyone with USAGE on this
-- schema could attach the owner-rights capture() to a table of their own and have a cast of
-- theirs run as the migrations' owner (issue 10).
--
-- From here on:
--   * no function here is executable by PUBLIC; each role gets what it needs by name;
--   * the sidecar's role is granted exactly what netbox_outbox.sidecar_grant lists: the NetBox
--     tables the payload catalogue reads (users_user without its password), NetBox's
--     configuration tables and change log, read access to the capture, write access to its own
--     delivery state, and the functions it calls;
--   * netbox_outbox.grant_sidecar(role) records a sidecar role and grants it that list;
--     refresh_grants() re-applies it (and takes back anything beyond it) for every recorded
--     role, so tables NetBox's migrations create or recreate are covered without ALTER DEFAULT
--     PRIVILEGES, which would also cover NetBox's future token tables.
-- docs/install.md says which role runs what; docs/privileges.md explains the choices.

-- Nothing in this schema is granted by default any more: the roles.sql of before V5 set default
-- privileges here for the sidecar's role (write on every new table, EXECUTE on every new
-- function), which would hand it the tables and functions below, and with them its own grants.
do $$
declare
    d record;
begin
    for d in select distinct a.grantee,
                    case x.defaclobjtype when 'r' then 'tables' when 'S' then 'sequences'
                                         when 'f' then 'functions' when 'T' then 'types' end as kind
             from pg_default_acl x cross join lateral aclexplode(x.defaclacl) a
             where x.defaclrole = current_user::regrole
               and x.defaclnamespace = 'netbox_outbox'::regnamespace
               and x.defaclobjtype in ('r', 'S', 'f', 'T') loop
        execute format('alter default privileges in schema netbox_outbox revoke all on %s from %s',
                       d.kind, case when d.grantee = 0 then 'public' else d.grantee::regrole::text end);
    end loop;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- What the sidecar may do: one row per object. Later migrations add rows for the functions and
-- views they give the sidecar; refresh_grants() turns the list into grants.
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.sidecar_grant (
    object_kind text   not null check (object_kind in ('table', 'sequence', 'function')),
    -- schema-qualified: public.dcim_site, netbox_outbox.claim(bigint[], bigint[], bigint, uuid)
    object_name text   not null,
    privileges  text[] not null check (privileges <@ array['select', 'insert', 'update', 'delete', 'usage', 'execute']
                                       and cardinality(privileges) > 0),
    -- only these columns (tables only); null: the whole table, including columns added later
    columns     text[] check (columns is null or object_kind = 'table'),
    reason      text   not null,
    primary key (object_kind, object_name)
);

comment on table netbox_outbox.sidecar_grant is
    'Everything a sidecar role may read, write or call; netbox_outbox.refresh_grants() grants it to every '
    'role in netbox_outbox.sidecar_role and revokes anything else granted to them.';

-- The roles sidecars log in with (recorded by grant_sidecar()).
create table netbox_outbox.sidecar_role (
    role_name  name        primary key,
    granted_at timestamptz not null default now()
);

comment on table netbox_outbox.sidecar_role is
    'The sidecars'' database roles; netbox_outbox.refresh_grants() keeps their privileges equal to sidecar_grant.';

-- NetBox: the tables of every model and many-to-many table in the payload catalogue
-- (src/netbox/catalogue/netbox-4.7.3.json, made by tools/catalogue; the test
-- the_sidecar_reads_exactly_the_catalogue keeps this list equal to it), read only.
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason)
select 'table', 'public.' || name, '{select}', 'a model or many-to-many table of the payload catalogue'
from (values
    ('circuits_circuit'), ('circuits_circuitgroup'), ('circuits_circuitgroupassignment'),
    ('circuits_circuittermination'), ('circuits_circuittype'), ('circuits_provider'),
    ('circuits_provider_asns'), ('circuits_provideraccount'), ('circuits_providernetwork'),
    ('circuits_virtualcircuit'), ('circuits_virtualcircuittermination'),
    ('circuits_virtualcircuittype'), ('core_datafile'), ('core_datasource'), ('core_job'),
    ('core_managedfile'), ('dcim_cable'), ('dcim_cablebundle'), ('dcim_cabletermination'),
    ('dcim_consoleport'), ('dcim_consoleporttemplate'), ('dcim_consoleserverport'),
    ('dcim_consoleserverporttemplate'), ('dcim_coolingfeed'), ('dcim_coolingintake'),
    ('dcim_coolingintaketemplate'), ('dcim_coolingoutflow'), ('dcim_coolingoutflowtemplate'),
    ('dcim_coolingsource'), ('dcim_device'), ('dcim_devicebay'), ('dcim_devicebaytemplate'),
    ('dcim_devicerole'), ('dcim_devicetype'), ('dcim_frontport'), ('dcim_frontporttemplate'),
    ('dcim_interface'), ('dcim_interface_tagged_vlans'), ('dcim_interface_vdcs'),
    ('dcim_interface_wireless_lans'), ('dcim_interfacetemplate'), ('dcim_inventoryitem'),
    ('dcim_inventoryitemrole'), ('dcim_inventoryitemtemplate'), ('dcim_location'),
    ('dcim_macaddress'), ('dcim_manufacturer'), ('dcim_module'), ('dcim_modulebay'),
    ('dcim_modulebay_module_bay_types'), ('dcim_modulebaytemplate'),
    ('dcim_modulebaytemplate_module_bay_types'), ('dcim_modulebaytype'), ('dcim_moduletype'),
    ('dcim_moduletype_module_bay_types'), ('dcim_moduletypeprofile'), ('dcim_platform'),
    ('dcim_powerfeed'), ('dcim_poweroutlet'), ('dcim_poweroutlettemplate'), ('dcim_powerpanel'),
    ('dcim_powerport'), ('dcim_powerporttemplate'), ('dcim_rack'), ('dcim_rackgroup'),
    ('dcim_rackreservation'), ('dcim_rackrole'), ('dcim_racktype'), ('dcim_rearport'),
    ('dcim_rearporttemplate'), ('dcim_region'), ('dcim_site'), ('dcim_site_asns'),
    ('dcim_sitegroup'), ('dcim_virtualchassis'), ('dcim_virtualdevicecontext'),
    ('django_content_type'), ('extras_configcontext'), ('extras_configcontext_cluster_groups'),
    ('extras_configcontext_cluster_types'), ('extras_configcontext_clusters'),
    ('extras_configcontext_device_types'), ('extras_configcontext_locations'),
    ('extras_configcontext_platforms'), ('extras_configcontext_regions'),
    ('extras_configcontext_roles'), ('extras_configcontext_site_groups'),
    ('extras_configcontext_sites'), ('extras_configcontext_tags'),
    ('extras_configcontext_tenant_groups'), ('extras_configcontext_tenants'),
    ('extras_configcontextprofile'), ('extras_configtemplate'), ('extras_customfield'),
    ('extras_customfield_object_types'), ('extras_customfieldchoiceset'), ('extras_customlink'),
    ('extras_customlink_object_types'), ('extras_eventrule'), ('extras_eventrule_object_types'),
    ('extras_exporttemplate'), ('extras_exporttemplate_object_types'), ('extras_imageattachment'),
    ('extras_journalentry'), ('extras_notificationgroup'), ('extras_notificationgroup_groups'),
    ('extras_notificationgroup_users'), ('extras_savedfilter'), ('extras_savedfilter_object_types'),
    ('extras_script'), ('extras_tableconfig'), ('extras_tag'), ('extras_tag_object_types'),
    ('extras_taggeditem'), ('extras_webhook'), ('ipam_aggregate'), ('ipam_asn'), ('ipam_asnrange'),
    ('ipam_fhrpgroup'), ('ipam_fhrpgroupassignment'), ('ipam_ipaddress'), ('ipam_iprange'),
    ('ipam_prefix'), ('ipam_rir'), ('ipam_role'), ('ipam_routetarget'), ('ipam_service'),
    ('ipam_service_ipaddresses'), ('ipam_servicetemplate'), ('ipam_vlan'), ('ipam_vlangroup'),
    ('ipam_vlantranslationpolicy'), ('ipam_vlantranslationrule'), ('ipam_vrf'),
    ('ipam_vrf_export_targets'), ('ipam_vrf_import_targets'), ('tenancy_contact'),
    ('tenancy_contact_groups'), ('tenancy_contactassignment'), ('tenancy_contactgroup'),
    ('tenancy_contactrole'), ('tenancy_tenant'), ('tenancy_tenantgroup'), ('users_group'),
    ('users_group_object_permissions'), ('users_group_permissions'), ('users_objectpermission'),
    ('users_objectpermission_object_types'), ('users_owner'), ('users_owner_user_groups'),
    ('users_owner_users'), ('users_ownergroup'), ('users_user'), ('users_user_groups'),
    ('users_user_object_permissions'), ('users_user_user_permissions'), ('virtualization_cluster'),
    ('virtualization_clustergroup'), ('virtualization_clustertype'), ('virtualization_virtualdisk'),
    ('virtualization_virtualmachine'), ('virtualization_virtualmachinetype'),
    ('virtualization_vminterface'), ('virtualization_vminterface_tagged_vlans'), ('vpn_ikepolicy'),
    ('vpn_ikepolicy_proposals'), ('vpn_ikeproposal'), ('vpn_ipsecpolicy'),
    ('vpn_ipsecpolicy_proposals'), ('vpn_ipsecprofile'), ('vpn_ipsecproposal'), ('vpn_l2vpn'),
    ('vpn_l2vpn_export_targets'), ('vpn_l2vpn_import_targets'), ('vpn_l2vpntermination'),
    ('vpn_tunnel'), ('vpn_tunnelgroup'), ('vpn_tunneltermination'), ('wireless_wirelesslan'),
    ('wireless_wirelesslangroup'), ('wireless_wirelesslink')
) as catalogue (name)
where name <> 'users_user';

-- users_user is rendered (as the brief user of journal entries, saved filters, ...) but its
-- password hash is never read.
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, columns, reason) values
    ('table', 'public.users_user', '{select}',
     '{id,username,first_name,last_name,email,is_active,is_superuser,date_joined,last_login}',
     'the catalogue''s users.user, without the password hash');

-- NetBox tables the sidecar reads beyond the catalogue's models.
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('table', 'public.core_objecttype', '{select}', 'which models support event rules (netbox_outbox.event_model)'),
    ('table', 'public.core_objectchange', '{select}', 'NetBox''s change log: netbox-outbox check compares its columns'),
    ('table', 'public.dcim_cablepath', '{select}', 'cable paths of interfaces and ports (src/netbox/cabling.rs)');

-- netbox_outbox: the capture and its settings are read only: the sidecar changes them only
-- through the owner-rights functions below (sync, prune, summarize_capture), so it cannot forge
-- the captured history, switch the capture off or change what is watched. Its own delivery state
-- it writes directly (see docs/privileges.md).
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('table', 'netbox_outbox.setting', '{select}', 'capture mode and retention'),
    ('table', 'netbox_outbox.ignored_column', '{select}', 'which column changes are not events'),
    ('table', 'netbox_outbox.watch', '{select}', 'which tables are captured'),
    ('table', 'netbox_outbox.change', '{select}', 'the captured changes'),
    ('table', 'netbox_outbox.changelog', '{select}', 'the captured change log rows'),
    ('table', 'netbox_outbox.refinery_schema_history', '{select}', 'netbox-outbox check: are the migrations applied'),
    ('table', 'netbox_outbox.cursor', '{select,update}', 'how far the sidecar has read (locked and advanced per batch)'),
    ('table', 'netbox_outbox.event', '{select,insert}', 'events the sidecar makes of the changes'),
    ('table', 'netbox_outbox.delivery', '{select,insert,update}', 'deliveries: created, claimed, finished'),
    ('table', 'netbox_outbox.request', '{select,insert}', 'the frozen request of each delivery'),
    ('table', 'netbox_outbox.attempt', '{select,insert}', 'the delivery log'),
    ('table', 'netbox_outbox.webhook_state', '{select,insert,update}', 'failure streaks and pauses'),
    ('table', 'netbox_outbox.sidecar', '{select,insert,update}', 'the running sidecars'),
    ('table', 'netbox_outbox.event_model', '{select}', 'view: models NetBox sends events for'),
    ('table', 'netbox_outbox.watched_tables', '{select}', 'view: what is watched (status, check)'),
    ('table', 'netbox_outbox.unread_change', '{select}', 'view: changes not read yet'),
    ('table', 'netbox_outbox.pending', '{select}', 'view (operators, status)'),
    ('table', 'netbox_outbox.failed', '{select}', 'view (operators, status)'),
    ('table', 'netbox_outbox.delivery_log', '{select}', 'view (operators)'),
    ('table', 'netbox_outbox.webhook_health', '{select}', 'view (operators, status)'),
    ('table', 'netbox_outbox.throughput', '{select}', 'view (operators)'),
    ('sequence', 'netbox_outbox.event_id_seq', '{usage}', 'event ids are drawn before inserting'),
    ('sequence', 'netbox_outbox.change_id_seq', '{usage}', 'replays draw a new place in their object''s queue'),
    ('function', 'netbox_outbox.claim(bigint[], bigint[], bigint, uuid)', '{execute}', 'lease due deliveries'),
    ('function', 'netbox_outbox.record(bigint[], integer[], timestamp with time zone[], integer[], integer[], text[], text[], text[], timestamp with time zone[], uuid)',
     '{execute}', 'log attempts and finish deliveries'),
    -- V6's (already on main when this was written; a row waits harmlessly until its function exists)
    ('function', 'netbox_outbox.record(bigint[], integer[], bigint[], integer[], integer[], text[], text[], text[], bigint[], timestamp with time zone[], bigint, uuid)',
     '{execute}', 'log attempts and finish deliveries, by the database''s clock (V6)'),
    ('function', 'netbox_outbox.record_batch(bigint[], integer[], bigint[], integer[], integer[], text[], text[], text[], bigint[], timestamp with time zone[], bigint, uuid)',
     '{execute}', 'called by record() with the caller''s rights (V6)'),
    ('function', 'netbox_outbox.pauses()', '{execute}', 'webhook pauses by the database''s clock (V6)'),
    ('function', 'netbox_outbox.sync()', '{execute}', 're-install capture triggers (owner rights)'),
    ('function', 'netbox_outbox.prune()', '{execute}', 'retention (owner rights)'),
    ('function', 'netbox_outbox.prune_deliveries(integer)', '{execute}', 'retention of deliveries (owner rights)'),
    ('function', 'netbox_outbox.summarize_capture()', '{execute}', 'keep the capture''s BRIN indexes summarized (owner rights)'),
    ('function', 'netbox_outbox.ignored_columns(regclass)', '{execute}', 'read with the watch list, and by watched_tables'),
    -- Operator functions with the caller's rights: they do nothing the sidecar's table rights do
    -- not allow anyway, and let `netbox-outbox replay` and `status` run with the sidecar's URL.
    ('function', 'netbox_outbox.webhook_id(text)', '{execute}', 'operator function (caller''s rights)'),
    ('function', 'netbox_outbox.pause_webhook(text, text)', '{execute}', 'operator function (caller''s rights)'),
    ('function', 'netbox_outbox.resume_webhook(text)', '{execute}', 'operator function (caller''s rights)'),
    ('function', 'netbox_outbox.replay(bigint, bigint, text, bigint, text, timestamp with time zone, timestamp with time zone, text[], boolean)',
     '{execute}', 'operator function (caller''s rights): netbox-outbox replay'),
    ('function', 'netbox_outbox.object_history(text, bigint)', '{execute}', 'operator function (caller''s rights)');

-- ---------------------------------------------------------------------------------------------
-- Granting.
-- ---------------------------------------------------------------------------------------------

-- Makes each recorded sidecar role's privileges equal to sidecar_grant: grants what is missing
-- (a table NetBox's migrations created or recreated, a function a later migration added) and
-- revokes what is beyond it (what the sql/roles.sql of before V5 granted: every NetBox table,
-- every table and function of ours, default privileges). Grants only what is missing, so calling
-- it often (sync() does, every minute) rewrites no catalog row and invalidates no NetBox plan.
-- Owner rights, because granting on NetBox's tables needs their owner (or a superuser); callable
-- by the owner only (and by sync(), which runs as the owner). Returns what it changed.
create function netbox_outbox.refresh_grants(out role_name name, out action text, out object text)
returns setof record
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    r record;
    g record;
    x record;
    rel regclass;
    wanted text[];
    missing text[];
begin
    for r in select s.role_name as name, to_regrole(quote_ident(s.role_name)) as oid
             from netbox_outbox.sidecar_role s order by s.role_name loop
        continue when r.oid is null;   -- dropped since; nothing to do
        role_name := r.name;

        foreach object in array array['public', 'netbox_outbox'] loop
            if not has_schema_privilege(r.oid, object, 'usage') then
                execute format('grant usage on schema %I to %I', object, r.name);
                action := 'granted usage'; return next;
            end if;
        end loop;

        -- What is missing.
        for g in select * from netbox_outbox.sidecar_grant order by object_kind, object_name loop
            object := g.object_name;
            if g.object_kind = 'function' then
                continue when to_regprocedure(g.object_name) is null;
                if not has_function_privilege(r.oid, to_regprocedure(g.object_name), 'execute') then
                    execute format('grant execute on function %s to %I', to_regprocedure(g.object_name), r.name);
                    action := 'granted execute'; return next;
                end if;
                continue;
            end if;
            rel := to_regclass(g.object_name);
            continue when rel is null;    -- not in this NetBox version, or gone for now
            if g.object_kind = 'sequence' then
                if not has_sequence_privilege(r.oid, rel, 'usage') then
                    execute format('grant usage on sequence %s to %I', rel, r.name);
                    action := 'granted usage'; return next;
                end if;
            elsif g.columns is null then
                select array_agg(p) into missing from unnest(g.privileges) p
                where not has_table_privilege(r.oid, rel, p);
                if missing is not null then
                    execute format('grant %s on table %s to %I', array_to_string(missing, ', '), rel, r.name);
                    action := 'granted ' || array_to_string(missing, ', '); return next;
                end if;
            else
                -- a table-wide SELECT would cover the columns left out: take it back first
                if exists (select 1 from pg_class c cross join lateral aclexplode(c.relacl) a
                           where c.oid = rel and a.grantee = r.oid and a.privilege_type = 'SELECT') then
                    execute format('revoke select on table %s from %I', rel, r.name);
                    action := 'revoked select'; return next;
                end if;
                select array_agg(quote_ident(a.attname::text) order by a.attnum) into missing
                from pg_attribute a
                where a.attrelid = rel and a.attnum > 0 and not a.attisdropped
                  and a.attname::text = any(g.columns)
                  and not has_column_privilege(r.oid, rel, a.attnum, 'select');
                if missing is not null then
                    execute format('grant select (%s) on table %s to %I', array_to_string(missing, ', '), rel, r.name);
                    action := 'granted select (' || array_to_string(missing, ', ') || ')'; return next;
                end if;
            end if;
        end loop;

        -- What is beyond the list: table, view and sequence privileges granted to the role
        -- directly, in NetBox's schema and ours.
        for x in
            select c.oid::regclass as rel, c.relkind, lower(a.privilege_type) as privilege
            from pg_class c cross join lateral aclexplode(c.relacl) a
            where c.relnamespace in ('public'::regnamespace, 'netbox_outbox'::regnamespace)
              and a.grantee = r.oid
              and not exists (select 1 from netbox_outbox.sidecar_grant w
                              where w.object_kind in ('table', 'sequence')
                                and to_regclass(w.object_name) = c.oid
                                and w.columns is null
                                and lower(a.privilege_type) = any(w.privileges))
            order by 1, 3
        loop
            execute format('revoke %s on %s %s from %I', x.privilege,
                           case when x.relkind = 'S' then 'sequence' else 'table' end, x.rel, r.name);
            action := 'revoked ' || x.privilege; object := x.rel::text; return next;
        end loop;
        -- column privileges beyond the list (users_user's password, say)
        for x in
            select a.attrelid::regclass as rel, a.attname, lower(p.privilege_type) as privilege
            from pg_attribute a cross join lateral aclexplode(a.attacl) p
            join pg_class c on c.oid = a.attrelid
            where c.relnamespace in ('public'::regnamespace, 'netbox_outbox'::regnamespace)
              and p.grantee = r.oid
              and not exists (select 1 from netbox_outbox.sidecar_grant w
                              where w.object_kind = 'table' and to_regclass(w.object_name) = a.attrelid
                                and (w.columns is null or a.attname::text = any(w.columns))
                                and lower(p.privilege_type) = any(w.privileges))
            order by 1, 2
        loop
            execute format('revoke %s (%I) on table %s from %I', x.privilege, x.attname, x.rel, r.name);
            action := 'revoked ' || x.privilege; object := x.rel::text || '.' || x.attname; return next;
        end loop;
        -- functions of ours
        for x in
            select p.oid::regprocedure as fn
            from pg_proc p cross join lateral aclexplode(p.proacl) a
            where p.pronamespace = 'netbox_outbox'::regnamespace and a.grantee = r.oid
              and not exists (select 1 from netbox_outbox.sidecar_grant w
                              where w.object_kind = 'function' and to_regprocedure(w.object_name) = p.oid)
            order by 1
        loop
            execute format('revoke execute on function %s from %I', x.fn, r.name);
            action := 'revoked execute'; object := x.fn::text; return next;
        end loop;
        -- default privileges (the old roles.sql set them for the role that ran it); only their
        -- definer or a superuser may take them back
        for x in
            select d.defaclrole::regrole as definer, d.defaclnamespace::regnamespace as schema,
                   case d.defaclobjtype when 'r' then 'tables' when 'S' then 'sequences'
                                        when 'f' then 'functions' when 'T' then 'types' else 'schemas' end as kind
            from pg_default_acl d cross join lateral aclexplode(d.defaclacl) a
            where a.grantee = r.oid
            group by 1, 2, 3
        loop
            begin
                if x.schema = 0 then
                    execute format('alter default privileges for role %s revoke all on %s from %I',
                                   x.definer, x.kind, r.name);
                else
                    execute format('alter default privileges for role %s in schema %s revoke all on %s from %I',
                                   x.definer, x.schema, x.kind, r.name);
                end if;
                action := 'revoked default privileges'; object := x.kind || ' of ' || x.definer::text; return next;
            exception when insufficient_privilege then
                raise warning 'netbox_outbox: % still gets default privileges on new % of %',
                              r.name, x.kind, x.definer
                    using hint = format('Run as %s or a superuser: alter default privileges for role %s revoke all on %s from %I;',
                                        x.definer, x.definer, x.kind, r.name);
            end;
        end loop;
    end loop;
end
$$;

comment on function netbox_outbox.refresh_grants() is
    'Makes every recorded sidecar role''s privileges equal to netbox_outbox.sidecar_grant (owner rights; '
    'meant to be called by sync(), and by grant_sidecar()).';

-- The role setup's second step, run by the role that applied the migrations after they are
-- applied and again after every NetBox upgrade:  select * from netbox_outbox.grant_sidecar('netbox_outbox');
-- Caller's rights: only a role that may change sidecar_role (the owner) can record a role.
create function netbox_outbox.grant_sidecar(sidecar text, out role_name name, out action text, out object text)
returns setof record
language plpgsql set search_path = pg_catalog, pg_temp
as $$
declare
    target regrole := to_regrole(quote_ident(sidecar));
begin
    if target is null then
        raise exception 'netbox_outbox: role % does not exist', sidecar
            using hint = 'A superuser or a role with CREATEROLE creates it once: '
                         'psql -v role=' || sidecar || ' -f sql/create-role.sql';
    end if;
    if (select rolsuper or rolbypassrls from pg_roles where oid = target) then
        raise exception 'netbox_outbox: role % is a superuser (or bypasses row security); '
                        'a sidecar role must be an ordinary role', sidecar
            using hint = 'Create a separate login role for the sidecar with sql/create-role.sql.';
    end if;
    if exists (select 1 from pg_class c where c.relowner = target
               and c.relnamespace in ('public'::regnamespace, 'netbox_outbox'::regnamespace)) then
        raise exception 'netbox_outbox: role % owns tables of NetBox or netbox-outbox; '
                        'a sidecar role must own nothing', sidecar
            using hint = 'Use the role that owns NetBox''s tables to apply the migrations, and a separate role for the sidecar.';
    end if;
    insert into netbox_outbox.sidecar_role (role_name) values (sidecar) on conflict do nothing;
    return query select * from netbox_outbox.refresh_grants() g where g.role_name = sidecar;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- The DDL event trigger's function runs as whoever runs the DDL (NetBox's role during NetBox's
-- migrations), who no longer may call sync(): it now runs as its owner, with a pinned search
-- path. An event trigger function cannot be called directly, so this gives nobody a way in.
-- ---------------------------------------------------------------------------------------------
create or replace function netbox_outbox.on_ddl() returns event_trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    cmd record;
begin
    for cmd in select * from pg_event_trigger_ddl_commands()
               where object_type = 'table' and schema_name = 'public' loop
        begin
            if exists (select 1 from netbox_outbox.watch w
                       where w.watched and to_regclass(format('public.%I', w.table_name)) = cmd.objid) then
                perform netbox_outbox.sync();
                exit;
            end if;
        exception when others then
            raise warning 'netbox_outbox: could not re-install capture on %: %', cmd.object_identity, sqlerrm;
        end;
    end loop;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- No function here is executable by PUBLIC. The capture triggers' functions matter most: EXECUTE
-- is checked when a trigger is created (not when it fires, so NetBox's writes need no grant),
-- and without it nobody can attach the owner-rights capture() to a table of their own.
-- ---------------------------------------------------------------------------------------------
revoke all on function netbox_outbox.slot_of(timestamptz) from public;
revoke all on function netbox_outbox.create_slot_partitions(regclass) from public;
revoke all on function netbox_outbox.wake_lock_key() from public;
revoke all on function netbox_outbox.wake() from public;
revoke all on function netbox_outbox.capture() from public;
revoke all on function netbox_outbox.capture_tag() from public;
revoke all on function netbox_outbox.capture_changelog() from public;
revoke all on function netbox_outbox.ignored_columns(regclass) from public;
revoke all on function netbox_outbox.install_trigger(text, integer) from public;
revoke all on function netbox_outbox.remove_trigger(text) from public;
revoke all on function netbox_outbox.resolve_model(text) from public;
revoke all on function netbox_outbox.watch(text) from public;
revoke all on function netbox_outbox.unwatch(text) from public;
revoke all on function netbox_outbox.watch_all() from public;
revoke all on function netbox_outbox.unwatch_all() from public;
revoke all on function netbox_outbox.sync() from public;
revoke all on function netbox_outbox.on_ddl() from public;
revoke all on function netbox_outbox.expired_slots() from public;
revoke all on function netbox_outbox.truncate_slot(regclass) from public;
revoke all on function netbox_outbox.prune() from public;
revoke all on function netbox_outbox.claim(bigint[], bigint[], bigint, uuid) from public;
revoke all on function netbox_outbox.record(bigint[], integer[], timestamptz[], integer[], integer[], text[], text[], text[], timestamptz[], uuid) from public;
revoke all on function netbox_outbox.webhook_id(text) from public;
revoke all on function netbox_outbox.pause_webhook(text, text) from public;
revoke all on function netbox_outbox.resume_webhook(text) from public;
revoke all on function netbox_outbox.replay(bigint, bigint, text, bigint, text, timestamptz, timestamptz, text[], boolean) from public;
revoke all on function netbox_outbox.prune_deliveries(integer) from public;
revoke all on function netbox_outbox.object_history(text, bigint) from public;
revoke all on function netbox_outbox.summarize_capture() from public;
revoke all on function netbox_outbox.refresh_grants() from public;
revoke all on function netbox_outbox.grant_sidecar(text) from public;

-- A sidecar role set up with the roles.sql of before V5 (recognisable by what it was given: the
-- right to call claim() and to insert deliveries, granted to it by name) is recorded now and cut
-- down to the list at once, rather than keeping write access to the capture until someone
-- re-runs roles.sql.
insert into netbox_outbox.sidecar_role (role_name)
select r.rolname
from pg_roles r
where not r.rolsuper
  and r.oid <> current_user::regrole
  and exists (select 1 from pg_proc p cross join lateral aclexplode(p.proacl) a
              where p.oid = 'netbox_outbox.claim(bigint[], bigint[], bigint, uuid)'::regprocedure
                and a.grantee = r.oid)
  and exists (select 1 from pg_class c cross join lateral aclexplode(c.relacl) a
              where c.oid = 'netbox_outbox.delivery'::regclass and a.grantee = r.oid
                and a.privilege_type = 'INSERT')
on conflict do nothing;

select count(*) from netbox_outbox.refresh_grants();
