-- V16: the links of a deleted object that NetBox does not change-log.
--
-- When NetBox deletes an object, it serializes it first, with the objects its many-to-many
-- fields link to; Django then deletes the link rows, and the object, in the same transaction.
-- For the models NetBox change-logs, the sidecar finds those links in NetBox's prechange
-- snapshot (core_objectchange). A model without change logging (users.owner in NetBox 4.7) has
-- none, so the deleted owner's `users` and `user_groups` would go out empty where NetBox sends
-- the users it held. The capture now keeps the image of each link row deleted from the
-- many-to-many tables listed in netbox_outbox.watch_link, as kind 'L' of the linked object, in
-- the deleting transaction. The sidecar reads them only to render that object's deletion: they
-- are never an event of their own (NetBox sends none for these models' updates).
--
-- Cost: one trigger on two small tables that change when an owner's members change; nothing on
-- any other NetBox write.

-- Which many-to-many table a link image is from (kind 'L'; null for every other kind).
alter table netbox_outbox.change add column link_table text;

comment on column netbox_outbox.change.link_table is
    'For kind L (a link of a model without change logging, deleted): the many-to-many table the '
    'link row was in; the row itself is in before.';

-- The many-to-many tables whose deleted rows are kept, each with the column naming the object
-- that owns the link and that object's model. Only models without change logging need one.
create table netbox_outbox.watch_link (
    table_name    text primary key,
    source_column text not null,
    model         text not null
);

comment on table netbox_outbox.watch_link is
    'Many-to-many tables of models NetBox does not change-log: their deleted rows are captured '
    '(kind L) so that a deleted object nests the links NetBox serialized. sync() installs the triggers.';

insert into netbox_outbox.watch_link (table_name, source_column, model) values
    ('users_owner_users', 'owner_id', 'users.owner'),
    ('users_owner_user_groups', 'owner_id', 'users.owner');

-- The link's trigger. tg_argv: the owning model's content type id, the column naming the owner.
-- Like every capture function it runs inside NetBox's write and must never raise: a link whose
-- owner column is missing or null is skipped (the deletion then nests what the database still
-- holds, as before V16), and any other error is a warning, never a failed NetBox write.
create function netbox_outbox.capture_link() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    link json := row_to_json(old);
    owner_id bigint;
begin
    begin
        owner_id := (link ->> tg_argv[1])::bigint;
        if owner_id is not null then
            insert into netbox_outbox.change
                (content_type_id, object_id, kind, db_user, application_name, request, before, link_table)
            values (
                tg_argv[0]::integer,
                owner_id,
                'L',
                session_user,
                current_setting('application_name'),
                nullif(current_setting('netbox_outbox.request', true), ''),
                link,
                tg_table_name
            );
        end if;
    exception when others then
        raise warning 'netbox_outbox: could not keep the deleted link of %: %', tg_table_name, sqlerrm
            using hint = 'The deleted object''s webhook may nest fewer links than NetBox''s; check select * from netbox_outbox.watch_link.';
    end;
    return null;
end
$$;
revoke all on function netbox_outbox.capture_link() from public;

-- Makes the link triggers match netbox_outbox.watch_link: installed (with the model's current
-- content type) on each listed table that exists and has its owner column. Returns one row per
-- action, like sync(), which calls it.
create function netbox_outbox.sync_links(out action text, out table_name text)
returns setof record
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    l record;
    ct integer;
    have text;
    want text;
begin
    for l in select w.table_name, w.source_column, w.model,
                    to_regclass(format('public.%I', w.table_name)) as rel
             from netbox_outbox.watch_link w order by w.table_name loop
        continue when l.rel is null;   -- not in this NetBox release (or gone for now)
        select c.id into ct from public.django_content_type c
         where c.app_label || '.' || c.model = l.model;
        select pg_get_triggerdef(t.oid) into have
          from pg_trigger t where t.tgrelid = l.rel and t.tgname = 'netbox_outbox_capture_link';
        if ct is null or not exists (select 1 from pg_attribute a where a.attrelid = l.rel
                                     and a.attname = l.source_column and not a.attisdropped) then
            if have is not null then
                execute format('drop trigger netbox_outbox_capture_link on %s', l.rel);
                action := 'removed link'; table_name := l.table_name; return next;
            end if;
            continue;
        end if;
        want := format('netbox_outbox.capture_link(%L, %L)', ct, l.source_column);
        if have is null or position(want in have) = 0 then
            execute format('drop trigger if exists netbox_outbox_capture_link on %s', l.rel);
            execute format('create trigger netbox_outbox_capture_link after delete on %s '
                           'for each row execute function netbox_outbox.capture_link(%L, %L)',
                           l.rel, ct, l.source_column);
            action := case when have is null then 'installed link' else 'refreshed link' end;
            table_name := l.table_name; return next;
        end if;
    end loop;
end
$$;
revoke all on function netbox_outbox.sync_links() from public;

-- sync() as in V7, with the link triggers as step 3b.
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

    -- 3b. the many-to-many tables of models without change logging (V16)
    return query select s.action, s.table_name from netbox_outbox.sync_links() s;

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

-- The DDL event trigger (as in V5) also repairs a link trigger when NetBox's migrations recreate
-- one of the link tables.
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
                       where w.watched and to_regclass(format('public.%I', w.table_name)) = cmd.objid)
               or exists (select 1 from netbox_outbox.watch_link l
                          where to_regclass(format('public.%I', l.table_name)) = cmd.objid) then
                perform netbox_outbox.sync();
                exit;
            end if;
        exception when others then
            raise warning 'netbox_outbox: could not re-install capture on %: %', cmd.object_identity, sqlerrm;
        end;
    end loop;
end
$$;
revoke all on function netbox_outbox.on_ddl() from public;

select * from netbox_outbox.sync_links();
