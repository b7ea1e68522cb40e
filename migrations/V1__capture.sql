-- netbox-outbox V1: transactional capture of NetBox changes.
--
-- Row triggers on NetBox's tables copy every committed change into netbox_outbox.change, in the
-- same transaction as the change itself: both commit or both roll back. Nothing here touches
-- NetBox's own tables except to attach triggers to them; everything we create lives in the
-- netbox_outbox schema. docs/capture.md explains the design; sql/README.md is the DBA's guide.

do $$
begin
    if to_regclass('public.django_content_type') is null or to_regclass('public.core_objecttype') is null then
        raise exception 'netbox_outbox: this database has no NetBox tables (public.django_content_type, public.core_objecttype)'
            using hint = 'Apply the migrations to the database NetBox uses, after NetBox''s own migrations.';
    end if;
end
$$;

create schema if not exists netbox_outbox;
comment on schema netbox_outbox is
    'netbox-outbox: captured NetBox changes, webhook deliveries and their log (https://github.com/netbox-outbox)';

-- ---------------------------------------------------------------------------------------------
-- Settings a DBA may change with plain SQL.
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.setting (
    name        text primary key,
    value       text not null,
    description text not null
);

insert into netbox_outbox.setting (name, value, description) values
    ('capture_mode', 'all',
     'all: every committed change to a watched table becomes an event, whoever made it (NetBox, '
     '.update(), scripts, plain SQL). netbox: only the changes NetBox itself would send a webhook '
     'for (made inside a NetBox request or job); see docs/capture.md.'),
    ('retention_days', '7',
     'How many days of captured changes, events, deliveries and attempts are kept (1 to 14). '
     'Pending work is never pruned.'),
    ('watch_new_models', 'true',
     'When true, netbox_outbox.sync() also watches models that gained the event_rules feature '
     '(new NetBox or plugin models after an upgrade).');

-- ---------------------------------------------------------------------------------------------
-- Columns whose changes are not events.
--
-- NetBox keeps caches on its rows that it updates with QuerySet.update() and never reports:
-- counters, denormalised site/location/rack ids, cable path pointers, config context caches,
-- tree paths. An update that changes only these columns is recorded in netbox_outbox.change but
-- never becomes an event. Patterns use LIKE syntax; type_name, when set, restricts a rule to
-- columns of that type. The sidecar re-reads this table within a minute of a change.
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.ignored_column (
    table_pattern  text not null default '%',
    column_pattern text not null,
    type_name      text not null default '',
    reason         text not null,
    primary key (table_pattern, column_pattern, type_name)
);

insert into netbox_outbox.ignored_column (table_pattern, column_pattern, type_name, reason) values
    ('%', '\_%', '',
     'NetBox-internal columns (leading underscore): denormalised _site/_location/_rack ids, cable '
     '_path, _config_context_data, naturalised _name, _abs_* units, prefix _depth/_children'),
    ('%', '%\_count', '',
     'counter caches (CounterCacheField), bumped with QuerySet.update() when children change'),
    ('%', 'path', 'ltree', 'tree path maintained by NetBox''s ltree triggers'),
    ('%', 'sort_path', '', 'tree sort key maintained by NetBox''s ltree triggers'),
    ('%', 'lft', '', 'django-mptt tree bookkeeping (plugins)'),
    ('%', 'rght', '', 'django-mptt tree bookkeeping (plugins)'),
    ('%', 'tree_id', '', 'django-mptt tree bookkeeping (plugins)'),
    ('%', 'level', '', 'django-mptt tree bookkeeping (plugins)');

-- ---------------------------------------------------------------------------------------------
-- The captured changes.
--
-- Both tables are list-partitioned on a day slot (UTC day number modulo 16) and used as a ring:
-- netbox_outbox.prune() truncates a slot once every row in it is processed and older than the
-- retention. Nothing ever updates or deletes single rows, so claims never wade through dead
-- tuples however much history is kept.
-- ---------------------------------------------------------------------------------------------

-- One sequence orders everything captured. It is not cached per session, so for one object the
-- ids follow commit order: a second writer blocks on the first one's row lock, and draws its id
-- only after that commit.
create sequence netbox_outbox.change_id_seq as bigint;

-- The day slot of a timestamp: the UTC day number modulo 16. Sixteen slots allow a retention of
-- up to 14 days while today's and tomorrow's slots stay free of history. The tables' defaults
-- repeat this expression inline: a SQL function call there is not inlined and costs the writer
-- more than the rest of the capture.
create function netbox_outbox.slot_of(ts timestamptz) returns smallint
language sql stable parallel safe
as $$ select (date_part('epoch', ts)::bigint / 86400 % 16)::smallint $$;

-- A row change (insert, update, delete) to a watched table, or a tag added to or removed from a
-- watched object (extras_taggeditem), which NetBox reports as an update of that object.
--
-- Only the row *before* each change is stored: the row after a change is the row before the
-- next change to the same object, or, for the last one, the row as it stands in the snapshot the
-- sidecar reads with. Storing one image instead of two, as json text instead of jsonb, keeps the
-- capture cheap on NetBox's write path (docs/benchmarks.md).
create table netbox_outbox.change (
    id               bigint      not null default nextval('netbox_outbox.change_id_seq'),
    -- the writer's transaction id (xid8 as bigint, so a BRIN index can cover it)
    txid             bigint      not null default pg_current_xact_id()::text::bigint,
    slot             smallint    not null default (date_part('epoch', statement_timestamp())::bigint / 86400 % 16)::smallint,
    captured_at      timestamptz not null default statement_timestamp(),
    content_type_id  integer     not null,
    object_id        bigint      not null,
    -- I insert, U update, D delete, T tag added, t tag removed
    kind             "char"      not null,
    db_user          text        not null,
    application_name text        not null,
    -- what the NetBox plugin knows of the request ({"id", "path", "path_info", "method", "GET",
    -- "user"}), or null when the change was not made in a NetBox request with the plugin
    request          text,
    -- row_to_json() of the row before an update or delete; null for inserts and tags
    before           json,
    -- the tag added or removed (kinds T and t)
    tag_id           bigint
) partition by list (slot);

comment on table netbox_outbox.change is
    'Every captured change to a watched NetBox table, in the transaction that made it. Append-only; '
    'pruned by netbox_outbox.prune().';

-- A copy of each core_objectchange row NetBox writes (and of its in-place updates, which NetBox
-- does when tags change after a save). It attributes a change to NetBox's user and request, and
-- carries NetBox's own snapshot values.
create table netbox_outbox.changelog (
    id              bigint      not null default nextval('netbox_outbox.change_id_seq'),
    txid            bigint      not null default pg_current_xact_id()::text::bigint,
    slot            smallint    not null default (date_part('epoch', statement_timestamp())::bigint / 86400 % 16)::smallint,
    captured_at     timestamptz not null default statement_timestamp(),
    content_type_id integer     not null,
    object_id       bigint      not null,
    objectchange_id bigint      not null,
    request         text,
    entry           json        not null
) partition by list (slot);

comment on table netbox_outbox.changelog is
    'Copies of the core_objectchange rows NetBox wrote in the same transactions as the captured changes.';

create function netbox_outbox.create_slot_partitions(parent regclass) returns void
language plpgsql
as $$
declare
    n int;
    parent_name text := (select relname from pg_class where oid = parent);
begin
    for n in 0..15 loop
        execute format('create table netbox_outbox.%I partition of %s for values in (%s)',
                       parent_name || '_' || n, parent, n);
    end loop;
end
$$;

select netbox_outbox.create_slot_partitions('netbox_outbox.change');
select netbox_outbox.create_slot_partitions('netbox_outbox.changelog');

-- The sidecar reads one batch of committed transactions at a time, by transaction id. Rows are
-- appended in roughly transaction order, so a BRIN index finds a batch at almost no cost to the
-- writers (a b-tree on an ever-increasing key makes every writer contend for its last page).
create index change_txid on netbox_outbox.change using brin (txid) with (pages_per_range = 16, autosummarize = on);
create index changelog_txid on netbox_outbox.changelog using brin (txid) with (pages_per_range = 16, autosummarize = on);

-- ---------------------------------------------------------------------------------------------
-- Wake-up.
--
-- A NOTIFY from a writing transaction takes a global lock at commit, which serialises every
-- writer. So a writer notifies only while a sidecar is idle: an idle sidecar holds the session
-- advisory lock below exclusively; a writer that cannot take it shared knows the sidecar sleeps
-- and sends one NOTIFY. While a sidecar works, writers take the shared lock (until they commit)
-- and stay silent. Before going idle the sidecar waits for the exclusive lock, that is for every
-- silent writer to commit, and looks for work once more, so no change is left waiting.
-- ---------------------------------------------------------------------------------------------
create function netbox_outbox.wake_lock_key() returns bigint
language sql immutable parallel safe
as $$ select 7418734260116239617::bigint $$;

-- Called by the capture triggers (inlined in capture() for speed).
create function netbox_outbox.wake() returns void
language plpgsql
as $$
begin
    if not pg_try_advisory_xact_lock_shared(7418734260116239617)
       -- a full notification queue would make the commit fail; the sidecar polls anyway
       and pg_notification_queue_usage() < 0.5 then
        perform pg_notify('netbox_outbox', '');
    end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- The capture triggers.
--
-- They run inside NetBox's transactions, so they must never raise: an error here fails the
-- user's write. They are security definer (so NetBox's role needs no grant on our schema) and
-- immune to the caller's search_path (pinned, or every name qualified). Argument: the content type id of the table's model, fixed by
-- netbox_outbox.install_trigger().
-- ---------------------------------------------------------------------------------------------
-- The hot path: runs inside every NetBox write. It is SECURITY DEFINER (NetBox's role needs no
-- rights on our schema) but has no SET search_path: that clause alone measured about a third of
-- the trigger's cost per row. Instead every function and operator is schema-qualified, so a
-- caller's search_path cannot substitute its own (nullif and simple CASE would look "=" up
-- through it, hence the spelled-out CASEs).
create function netbox_outbox.capture() returns trigger
language plpgsql security definer
as $$
begin
    -- An insert needs no image: the row after it is read later (see netbox_outbox.change).
    -- Updates of only ignored columns (counter caches and the like) are filtered by the sidecar,
    -- which compares images; comparing here would double the cost of every NetBox save.
    insert into netbox_outbox.change
        (content_type_id, object_id, kind, db_user, application_name, request, before)
    values (
        tg_argv[0]::integer,
        case when tg_op operator(pg_catalog.=) 'INSERT' then new.id else old.id end,
        case when tg_op operator(pg_catalog.=) 'INSERT' then 'I'
             when tg_op operator(pg_catalog.=) 'UPDATE' then 'U' else 'D' end,
        session_user,
        pg_catalog.current_setting('application_name'),
        case when pg_catalog.current_setting('netbox_outbox.request', true) operator(pg_catalog.=) ''
             then null else pg_catalog.current_setting('netbox_outbox.request', true) end,
        case when tg_op operator(pg_catalog.=) 'INSERT' then null else pg_catalog.row_to_json(old) end
    );
    -- netbox_outbox.wake(), inlined
    if not pg_catalog.pg_try_advisory_xact_lock_shared(7418734260116239617)
       and pg_catalog.pg_notification_queue_usage() operator(pg_catalog.<) 0.5::double precision then
        perform pg_catalog.pg_notify('netbox_outbox', '');
    end if;
    return null;
end
$$;

-- extras_taggeditem: a tag added to or removed from an object is an update of that object.
create function netbox_outbox.capture_tag() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    item record;
begin
    if tg_op = 'INSERT' then
        item := new;
    else
        item := old;
    end if;
    insert into netbox_outbox.change
        (content_type_id, object_id, kind, db_user, application_name, request, tag_id)
    values (
        item.content_type_id,
        item.object_id,
        case tg_op when 'INSERT' then 'T' else 't' end,
        session_user,
        current_setting('application_name'),
        nullif(current_setting('netbox_outbox.request', true), ''),
        item.tag_id
    );
    perform netbox_outbox.wake();
    return null;
end
$$;

-- core_objectchange: NetBox's change log row, written in the same transaction as the change.
create function netbox_outbox.capture_changelog() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
begin
    insert into netbox_outbox.changelog
        (content_type_id, object_id, objectchange_id, request, entry)
    values (
        new.changed_object_type_id,
        new.changed_object_id,
        new.id,
        nullif(current_setting('netbox_outbox.request', true), ''),
        row_to_json(new)
    );
    return null;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Which tables are watched.
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.watch (
    table_name      text primary key,
    content_type_id integer not null,
    watched         boolean not null,
    changed_at      timestamptz not null default now()
);

comment on table netbox_outbox.watch is
    'The NetBox tables netbox-outbox captures (watched) or was told to leave alone (not watched). '
    'Change it with netbox_outbox.watch(), unwatch(), watch_all(); read it through netbox_outbox.watched_tables.';

-- The NetBox models whose changes NetBox can send webhooks for, with their tables.
create view netbox_outbox.event_model as
select ct.id as content_type_id,
       ct.app_label || '.' || ct.model as model,
       ct.app_label || '_' || ct.model as table_name
from django_content_type ct
join core_objecttype ot on ot.contenttype_ptr_id = ct.id
where ot.features @> array['event_rules']::varchar[];

-- The ignored columns of one table (see ignored_column).
create function netbox_outbox.ignored_columns(tbl regclass) returns text[]
language sql stable
as $$
    select coalesce(array_agg(a.attname::text order by a.attnum), '{}')
    from pg_attribute a
    where a.attrelid = tbl and a.attnum > 0 and not a.attisdropped
      and exists (
          select 1 from netbox_outbox.ignored_column i
          where (select relname from pg_class where oid = tbl) like i.table_pattern
            and a.attname like i.column_pattern
            and (i.type_name = '' or i.type_name = (select typname from pg_type where oid = a.atttypid))
      )
$$;

-- Installs (or refreshes) the capture trigger on one table. Internal: use watch().
create function netbox_outbox.install_trigger(tbl text, content_type_id integer) returns void
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
end
$$;

create function netbox_outbox.remove_trigger(tbl text) returns void
language plpgsql
as $$
declare
    rel regclass := to_regclass(format('public.%I', tbl));
begin
    if rel is not null then
        execute format('drop trigger if exists netbox_outbox_capture on %s', rel);
    end if;
end
$$;

-- Resolves 'dcim_device', 'dcim.device' or 'public.dcim_device' to a NetBox table and its
-- content type.
create function netbox_outbox.resolve_model(name text, out table_name text, out content_type_id integer)
language plpgsql stable
as $$
declare
    wanted text := regexp_replace(lower(name), '^public\.', '');
begin
    select ct.app_label || '_' || ct.model, ct.id
      into table_name, content_type_id
      from django_content_type ct
     where ct.app_label || '_' || ct.model = wanted
        or ct.app_label || '.' || ct.model = wanted;
    if not found then
        raise exception 'netbox_outbox: % is not a NetBox model', name
            using hint = 'Use the table name (dcim_device) or the model (dcim.device); '
                         'select * from netbox_outbox.event_model lists the models NetBox sends events for.';
    end if;
end
$$;

-- Starts capturing changes to one table: select netbox_outbox.watch('dcim.device');
create function netbox_outbox.watch(name text) returns text
language plpgsql
as $$
declare
    m record;
begin
    select * into m from netbox_outbox.resolve_model(name);
    perform netbox_outbox.install_trigger(m.table_name, m.content_type_id);
    insert into netbox_outbox.watch (table_name, content_type_id, watched)
    values (m.table_name, m.content_type_id, true)
    on conflict (table_name) do update
        set content_type_id = excluded.content_type_id, watched = true, changed_at = now();
    return m.table_name;
end
$$;

-- Stops capturing changes to one table; sync() and watch_all() leave it unwatched until
-- watch() or watch_all() is called for it.
create function netbox_outbox.unwatch(name text) returns text
language plpgsql
as $$
declare
    m record;
begin
    select * into m from netbox_outbox.resolve_model(name);
    perform netbox_outbox.remove_trigger(m.table_name);
    insert into netbox_outbox.watch (table_name, content_type_id, watched)
    values (m.table_name, m.content_type_id, false)
    on conflict (table_name) do update set watched = false, changed_at = now();
    return m.table_name;
end
$$;

-- Watches the table of every model NetBox can send events for, including ones unwatched before.
create function netbox_outbox.watch_all() returns setof text
language plpgsql
as $$
declare
    m record;
begin
    for m in select e.table_name from netbox_outbox.event_model e
             where to_regclass(format('public.%I', e.table_name)) is not null
             order by e.table_name loop
        return next netbox_outbox.watch(m.table_name);
    end loop;
end
$$;

create function netbox_outbox.unwatch_all() returns setof text
language plpgsql
as $$
declare
    m record;
begin
    for m in select table_name from netbox_outbox.watch where watched order by table_name loop
        return next netbox_outbox.unwatch(m.table_name);
    end loop;
end
$$;

-- Makes the triggers match the intent recorded in netbox_outbox.watch: after a NetBox upgrade
-- dropped or recreated a table, or when new models gained the event_rules feature. Safe to call at any time; the sidecar calls it at start and periodically.
-- Returns one row per action taken.
create function netbox_outbox.sync(out action text, out table_name text)
returns setof record
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    w record;
    want_args text;
    have_args text;
begin
    -- models that gained the event_rules feature
    if (select value from netbox_outbox.setting where name = 'watch_new_models') = 'true' then
        for w in select e.table_name, e.content_type_id from netbox_outbox.event_model e
                 where not exists (select 1 from netbox_outbox.watch x where x.table_name = e.table_name)
                   and to_regclass(format('public.%I', e.table_name)) is not null loop
            insert into netbox_outbox.watch (table_name, content_type_id, watched)
            values (w.table_name, w.content_type_id, true);
            action := 'added'; table_name := w.table_name; return next;
        end loop;
    end if;

    for w in select x.table_name, x.content_type_id, x.watched,
                    to_regclass(format('public.%I', x.table_name)) as rel
             from netbox_outbox.watch x order by x.table_name loop
        continue when w.rel is null;   -- the table is gone (for now); nothing to attach to
        select pg_get_triggerdef(t.oid) into have_args
          from pg_trigger t where t.tgrelid = w.rel and t.tgname = 'netbox_outbox_capture';
        if w.watched then
            want_args := format('netbox_outbox.capture(%L)', w.content_type_id);
            if have_args is null or position(want_args in have_args) = 0 then
                perform netbox_outbox.install_trigger(w.table_name, w.content_type_id);
                action := case when have_args is null then 'installed' else 'refreshed' end;
                table_name := w.table_name; return next;
            end if;
        elsif have_args is not null then
            perform netbox_outbox.remove_trigger(w.table_name);
            action := 'removed'; table_name := w.table_name; return next;
        end if;
    end loop;

    -- the two NetBox tables that are read for every watched model
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
end
$$;

-- What is watched, and whether its trigger is in place.
create view netbox_outbox.watched_tables as
select w.table_name,
       e.model,
       w.content_type_id,
       w.watched,
       exists (select 1 from pg_trigger t
               where t.tgrelid = to_regclass(format('public.%I', w.table_name))
                 and t.tgname = 'netbox_outbox_capture') as trigger_installed,
       netbox_outbox.ignored_columns(to_regclass(format('public.%I', w.table_name))) as ignored_columns,
       w.changed_at
from netbox_outbox.watch w
left join netbox_outbox.event_model e on e.table_name = w.table_name;

-- ---------------------------------------------------------------------------------------------
-- Self-healing after NetBox migrations.
--
-- When a migration creates or alters a watched table, re-install its trigger in the same
-- transaction. Creating an event trigger needs superuser; without it the sidecar's periodic
-- netbox_outbox.sync() restores the triggers instead. Never raises: NetBox's migration must
-- not fail because of us.
-- ---------------------------------------------------------------------------------------------
create function netbox_outbox.on_ddl() returns event_trigger
language plpgsql
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

do $$
begin
    if (select rolsuper from pg_roles where rolname = current_user) then
        create event trigger netbox_outbox_ddl on ddl_command_end
            when tag in ('CREATE TABLE', 'ALTER TABLE')
            execute function netbox_outbox.on_ddl();
    else
        raise notice 'netbox_outbox: not a superuser, so no DDL event trigger; the sidecar re-installs '
                     'capture triggers after NetBox migrations instead (netbox_outbox.sync())';
    end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- How far the sidecar has read.
--
-- Rows are read by transaction, not by id: ids are drawn before commit, so a long transaction
-- can commit rows with ids below ones already read. The sidecar instead remembers the snapshot
-- it last read up to; the next batch is every transaction visible in a fresh snapshot that was
-- not visible in this one (the technique of PgQ). Only committed rows are ever read, each once.
-- ---------------------------------------------------------------------------------------------
create table netbox_outbox.cursor (
    name        text primary key,
    snapshot    pg_snapshot not null,
    advanced_at timestamptz not null default now()
);

comment on table netbox_outbox.cursor is
    'Every transaction visible in snapshot has been turned into events. One row, locked by the sidecar '
    'that is reading (the others skip it).';

insert into netbox_outbox.cursor (name, snapshot) values ('changes', pg_current_snapshot());

-- Committed changes that no sidecar has read yet.
create view netbox_outbox.unread_change as
select c.*
from netbox_outbox.change c, netbox_outbox.cursor k
where k.name = 'changes'
  and not pg_visible_in_snapshot(c.txid::text::xid8, k.snapshot)
  and pg_visible_in_snapshot(c.txid::text::xid8, pg_current_snapshot());

-- ---------------------------------------------------------------------------------------------
-- Retention.
--
-- Truncates the day slots that are older than retention_days and hold nothing unprocessed.
-- Cheap and bloat-free: no row-by-row deletes. Run by the sidecar every few minutes; a DBA may
-- run it too: select * from netbox_outbox.prune();
-- ---------------------------------------------------------------------------------------------
create function netbox_outbox.expired_slots() returns setof smallint
language sql stable
as $$
    -- Days older than the retention, up to the one sharing its slot with tomorrow. Tomorrow's slot
    -- is only emptied before 23:00 UTC, well before anyone writes into it.
    with today as (select date_part('epoch', now())::bigint / 86400 as day,
                          extract(hour from now() at time zone 'utc') as hour),
         retention as (select least(greatest(coalesce((select value::int from netbox_outbox.setting
                                                         where name = 'retention_days'), 7), 1), 14) as days)
    select distinct (d % 16)::smallint
    from today, retention, generate_series(today.day - 15, today.day - retention.days - 1) as d
    where d > today.day - 15 or today.hour < 23
$$;

create function netbox_outbox.truncate_slot(part regclass, out truncated boolean)
language plpgsql
as $$
begin
    -- Never make writers (NetBox) wait behind us: give up at once if the slot is in use.
    perform set_config('lock_timeout', '200ms', true);
    execute format('truncate %s', part);
    truncated := true;
exception when lock_not_available then
    truncated := false;
end
$$;

create function netbox_outbox.prune(out table_name text, out slot smallint, out truncated boolean)
returns setof record
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    s smallint;
    part regclass;
    k pg_snapshot := (select c.snapshot from netbox_outbox.cursor c where c.name = 'changes');
    busy boolean;
begin
    for s in select * from netbox_outbox.expired_slots() loop
        foreach table_name in array array['change', 'changelog'] loop
            part := format('netbox_outbox.%I', table_name || '_' || s)::regclass;
            execute format('select exists (select 1 from %s where not pg_visible_in_snapshot(txid::text::xid8, $1))', part)
               into busy using k;
            continue when busy;
            execute format('select exists (select 1 from %s)', part) into busy;
            continue when not busy;
            slot := s;
            truncated := netbox_outbox.truncate_slot(part);
            return next;
        end loop;
    end loop;
end
$$;

-- Watch everything NetBox sends events for, so nothing is missed from the start.
select count(*) from netbox_outbox.sync();
