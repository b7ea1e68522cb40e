-- netbox-outbox V7: what used to pass silently is recorded.
--
-- * TRUNCATE of a watched table: NetBox sends no webhook for it (it bypasses Django's signals),
--   and neither does netbox-outbox, but a statement trigger records it in
--   netbox_outbox.truncation; the sidecar turns each row into a warning and a counter
--   (netbox_outbox.report_truncations()). sync() installs that trigger beside the row trigger,
--   on existing installs too.
-- * The sidecars' output-shaping configuration (netbox_outbox.sidecar.fingerprint): a sidecar
--   whose configuration differs from a live one's refuses to start.
-- * The read lag (netbox_outbox.read_lag()): unread changes and the age of the oldest, for
--   /metrics and /readyz.

-- ---------------------------------------------------------------------------------------------
-- Truncations of watched tables.
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.truncation (
    id               bigint generated always as identity primary key,
    table_name       text        not null,
    content_type_id  integer,
    txid             bigint      not null default pg_current_xact_id()::text::bigint,
    truncated_at     timestamptz not null default statement_timestamp(),
    db_user          text        not null,
    application_name text        not null,
    -- set by the sidecar that logged it; reported rows are kept 14 days
    reported_at      timestamptz
);

comment on table netbox_outbox.truncation is
    'Every TRUNCATE of a watched table. NetBox sends no webhook for it, and neither does netbox-outbox; '
    'the sidecar logs each one as a warning and counts it (netbox_outbox_truncations_total).';

create index truncation_unreported on netbox_outbox.truncation (id) where reported_at is null;

-- The statement trigger. Runs inside the truncating transaction, so it never raises: losing the
-- record is better than failing the TRUNCATE (a warning says so). Argument: the content type id.
create function netbox_outbox.capture_truncate() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    begin
        insert into netbox_outbox.truncation (table_name, content_type_id, db_user, application_name)
        values (tg_table_name, nullif(tg_argv[0], '')::integer, session_user,
                current_setting('application_name'));
        perform netbox_outbox.wake();
    exception when others then
        raise warning 'netbox_outbox: could not record the TRUNCATE of %: %', tg_table_name, sqlerrm;
    end;
    return null;
end
$$;
revoke all on function netbox_outbox.capture_truncate() from public;

-- Hands the unreported truncations to one sidecar (rows locked by another sidecar's call are
-- left to it), and forgets reported ones after 14 days.
create function netbox_outbox.report_truncations(
    out table_name text, out truncated_at timestamptz, out db_user text, out application_name text)
returns setof record
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    delete from netbox_outbox.truncation t where t.reported_at < now() - interval '14 days';
    return query
    update netbox_outbox.truncation t set reported_at = now()
    where t.id in (select u.id from netbox_outbox.truncation u where u.reported_at is null
                   order by u.id limit 1000 for update skip locked)
    returning t.table_name, t.truncated_at, t.db_user, t.application_name;
end
$$;
revoke all on function netbox_outbox.report_truncations() from public;

-- ---------------------------------------------------------------------------------------------
-- Capture triggers: the row trigger and the TRUNCATE trigger, installed and removed together.
-- ---------------------------------------------------------------------------------------------
create or replace function netbox_outbox.install_trigger(tbl text, content_type_id integer) returns void
language plpgsql
as $$
declare
    rel regclass := to_regclass(format('public.%I', tbl));
begin
    if rel is null then
        raise exception 'netbox_outbox: table public.% does not exist', tbl
            using hint = 'Check the name: tables are named <app_label>_<model>, for example dcim_device.';
    end if;
    if not exists (select 1 from pg_attribute
                   where attrelid = rel and attname = 'id' and not attisdropped
                     and atttypid in ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)) then
        raise exception 'netbox_outbox: table % has no integer id column and cannot be watched', rel;
    end if;
    execute format('drop trigger if exists netbox_outbox_capture on %s', rel);
    execute format(
        'create trigger netbox_outbox_capture after insert or update or delete on %s '
        'for each row execute function netbox_outbox.capture(%L)',
        rel, content_type_id);
    execute format('drop trigger if exists netbox_outbox_capture_truncate on %s', rel);
    execute format(
        'create trigger netbox_outbox_capture_truncate after truncate on %s '
        'for each statement execute function netbox_outbox.capture_truncate(%L)',
        rel, content_type_id);
end
$$;
revoke all on function netbox_outbox.install_trigger(text, integer) from public;

create or replace function netbox_outbox.remove_trigger(tbl text) returns void
language plpgsql
as $$
declare
    rel regclass := to_regclass(format('public.%I', tbl));
begin
    if rel is not null then
        execute format('drop trigger if exists netbox_outbox_capture on %s', rel);
        execute format('drop trigger if exists netbox_outbox_capture_truncate on %s', rel);
    end if;
end
$$;
revoke all on function netbox_outbox.remove_trigger(text) from public;

-- Makes the triggers match the intent recorded in netbox_outbox.watch (see V1): a watched table
-- has both capture triggers, with its content type; an unwatched one has neither. One step per
-- block, each returning a row per action taken; a new step goes at the end.
create or replace function netbox_outbox.sync(out action text, out table_name text)
returns setof record
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    w record;
    want_args text;
    have_row text;
    have_truncate text;
begin
    -- 1. models that gained the event_rules feature
    if (select value from netbox_outbox.setting where name = 'watch_new_models') = 'true' then
        for w in select e.table_name, e.content_type_id from netbox_outbox.event_model e
                 where not exists (select 1 from netbox_outbox.watch x where x.table_name = e.table_name)
                   and to_regclass(format('public.%I', e.table_name)) is not null loop
            insert into netbox_outbox.watch (table_name, content_type_id, watched)
            values (w.table_name, w.content_type_id, true);
            action := 'added'; table_name := w.table_name; return next;
        end loop;
    end if;

    -- 2. the capture triggers of each watched (or unwatched) table
    for w in select x.table_name, x.content_type_id, x.watched,
                    to_regclass(format('public.%I', x.table_name)) as rel
             from netbox_outbox.watch x order by x.table_name loop
        continue when w.rel is null;   -- the table is gone (for now); nothing to attach to
        select pg_get_triggerdef(t.oid) into have_row
          from pg_trigger t where t.tgrelid = w.rel and t.tgname = 'netbox_outbox_capture';
        select pg_get_triggerdef(t.oid) into have_truncate
          from pg_trigger t where t.tgrelid = w.rel and t.tgname = 'netbox_outbox_capture_truncate';
        if w.watched then
            want_args := format('(%L)', w.content_type_id);
            if have_row is null or position('netbox_outbox.capture' || want_args in have_row) = 0
               or have_truncate is null
               or position('netbox_outbox.capture_truncate' || want_args in have_truncate) = 0 then
                perform netbox_outbox.install_trigger(w.table_name, w.content_type_id);
                -- 'installed' when the row trigger was missing (changes went uncaptured)
                action := case when have_row is null then 'installed' else 'refreshed' end;
                table_name := w.table_name; return next;
            end if;
        elsif have_row is not null or have_truncate is not null then
            perform netbox_outbox.remove_trigger(w.table_name);
            action := 'removed'; table_name := w.table_name; return next;
        end if;
    end loop;

    -- 3. the two NetBox tables that are read for every watched model
    if to_regclass('public.extras_taggeditem') is not null and not exists (
        select 1 from pg_trigger where tgrelid = 'public.extras_taggeditem'::regclass
                                   and tgname = 'netbox_outbox_capture_tag') then
        create trigger netbox_outbox_capture_tag after insert or delete on public.extras_taggeditem
            for each row execute function netbox_outbox.capture_tag();
        action := 'installed'; table_name := 'extras_taggeditem'; return next;
    end if;
    if to_regclass('public.core_objectchange') is not null and not exists (
        select 1 from pg_trigger where tgrelid = 'public.core_objectchange'::regclass
                                   and tgname = 'netbox_outbox_capture_changelog') then
        create trigger netbox_outbox_capture_changelog after insert or update on public.core_objectchange
            for each row execute function netbox_outbox.capture_changelog();
        action := 'installed'; table_name := 'core_objectchange'; return next;
    end if;

    -- 4. the sidecars' privileges (V5): tables NetBox's migrations created or recreated get
    -- their grants back. A failure here (a table owned by another role) must not stop the
    -- triggers' repair above, so it is a warning.
    begin
        return query select 'grant: ' || g.action, g.object from netbox_outbox.refresh_grants() g;
    exception when others then
        raise warning 'netbox_outbox: could not refresh the sidecar''s grants: %', sqlerrm
            using hint = 'Run sql/roles.sql as the role that applied the migrations.';
    end;
end
$$;
revoke all on function netbox_outbox.sync() from public;

-- ---------------------------------------------------------------------------------------------
-- The read lag: committed changes no sidecar has read, and how old the oldest is.
--
-- Like netbox_outbox.unread_change, but bounded below by the cursor's xmin, so the BRIN index
-- on txid skips everything read long ago: cheap enough for every scrape of /metrics.
-- ---------------------------------------------------------------------------------------------
create function netbox_outbox.read_lag(out unread bigint, out oldest_unread_seconds double precision)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    select count(*),
           coalesce(extract(epoch from now() - min(c.captured_at))::float8, 0)
    from netbox_outbox.cursor k, netbox_outbox.change c
    where k.name = 'changes'
      and c.txid >= pg_snapshot_xmin(k.snapshot)::text::bigint
      and not pg_visible_in_snapshot(c.txid::text::xid8, k.snapshot)
      and pg_visible_in_snapshot(c.txid::text::xid8, pg_current_snapshot())
$$;
revoke all on function netbox_outbox.read_lag() from public;

-- ---------------------------------------------------------------------------------------------
-- One configuration per database: each sidecar records the settings that shape what it sends
-- (payload format, which rules it delivers, template environment, base path), as
-- {"key": "value"}. A starting sidecar compares its own with every live sidecar's (a fresh
-- heartbeat, not stopped) and refuses to start on a difference.
-- ---------------------------------------------------------------------------------------------
alter table netbox_outbox.sidecar add column fingerprint jsonb;

comment on column netbox_outbox.sidecar.fingerprint is
    'The settings that shape what this sidecar sends, {"key": "value"}; live sidecars must agree.';

-- Existing installs: TRUNCATE triggers on every watched table now.
select count(*) from netbox_outbox.sync();

-- What the sidecar's role may call from this migration (V5's list; sync() applies it).
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('function', 'netbox_outbox.read_lag()', '{execute}', 'unread changes for /metrics and /readyz'),
    ('function', 'netbox_outbox.report_truncations()', '{execute}', 'truncations of watched tables, logged and counted')
on conflict do nothing;
