-- netbox-outbox V10: one definition of which deliveries a replay selects.
--
-- SQL replay() and `netbox-outbox replay` (plain, and --rerender for rejected deliveries) each
-- had their own filter; both now call replay_selection(), so a DBA in psql and an operator at
-- the command line select the same deliveries for the same words.

-- The deliveries a replay selects, in queue order (seq, id). Filters combine with AND.
--   select * from netbox_outbox.replay_selection(webhook => 'crm', states => '{dead}');
create function netbox_outbox.replay_selection(
    delivery_id bigint default null,
    event_id    bigint default null,
    object_type text default null,
    object_id   bigint default null,
    webhook     text default null,
    since       timestamptz default null,
    until       timestamptz default null,
    states      text[] default '{dead}'
) returns setof bigint
language plpgsql stable
as $$
declare
    wanted_webhook bigint := case when webhook is null then null else netbox_outbox.webhook_id(webhook) end;
    wanted_type integer;
begin
    if object_type is not null then
        select ct.id into wanted_type from public.django_content_type ct
        where ct.app_label || '.' || ct.model = lower(object_type);
        if wanted_type is null then
            raise exception 'netbox_outbox: % is not a NetBox model', object_type
                using hint = 'Give the model as app_label.model, for example dcim.device.';
        end if;
    end if;
    if array_length(states, 1) is null or not states <@ array['pending', 'delivered', 'dead', 'rejected'] then
        raise exception 'netbox_outbox: states must be a non-empty subset of {pending,delivered,dead,rejected}';
    end if;
    return query
    select d.id from netbox_outbox.delivery d
    where (replay_selection.delivery_id is null or d.id = replay_selection.delivery_id)
      and (replay_selection.event_id is null or d.event_id = replay_selection.event_id)
      and (wanted_type is null or d.content_type_id = wanted_type)
      and (replay_selection.object_id is null or d.object_id = replay_selection.object_id)
      and (wanted_webhook is null or d.webhook_id = wanted_webhook)
      and (since is null or d.created_at >= since)
      and (until is null or d.created_at < until)
      and d.state = any(states)
    order by d.seq, d.id;
end
$$;

revoke all on function netbox_outbox.replay_selection(bigint, bigint, text, bigint, text, timestamptz, timestamptz, text[]) from public;

comment on function netbox_outbox.replay_selection(bigint, bigint, text, bigint, text, timestamptz, timestamptz, text[]) is
    'The deliveries a replay selects (used by replay() and netbox-outbox replay), in queue order.';

-- replay(), as in V2, selecting through replay_selection(). A rejected delivery has no frozen
-- request to copy: it is never replayed here (netbox-outbox replay --rerender renders it).
create or replace function netbox_outbox.replay(
    delivery_id bigint default null,
    event_id    bigint default null,
    object_type text default null,
    object_id   bigint default null,
    webhook     text default null,
    since       timestamptz default null,
    until       timestamptz default null,
    states      text[] default '{dead}',
    dry_run     boolean default false
) returns bigint
language plpgsql
as $$
declare
    n bigint;
begin
    create temporary table if not exists replay_chosen (id bigint) on commit drop;
    delete from replay_chosen;
    insert into replay_chosen
    select s.id
    from netbox_outbox.replay_selection(replay.delivery_id, replay.event_id, replay.object_type,
                                        replay.object_id, replay.webhook, replay.since,
                                        replay.until, replay.states) as s(id)
    join netbox_outbox.delivery d on d.id = s.id
    where d.state <> 'rejected';   -- nothing to send
    get diagnostics n = row_count;
    if dry_run then
        return n;
    end if;

    with copies as (
        insert into netbox_outbox.delivery
            (event_id, event_rule_id, event_rule_name, webhook_id, webhook_name, content_type_id, object_id,
             seq, timeout_ms, ssl_verification, ca_file_path, replay_of)
        select d.event_id, d.event_rule_id, d.event_rule_name, d.webhook_id, d.webhook_name,
               d.content_type_id, d.object_id, nextval('netbox_outbox.change_id_seq'),
               d.timeout_ms, d.ssl_verification, d.ca_file_path, d.id
        from (select d.* from netbox_outbox.delivery d join replay_chosen s on s.id = d.id
              order by d.seq, d.id) d
        returning id, replay_of
    )
    insert into netbox_outbox.request (delivery_id, method, url, headers, body)
    select c.id, r.method, r.url, r.headers, r.body
    from copies c join netbox_outbox.request r on r.delivery_id = c.replay_of;
    perform pg_notify('netbox_outbox', 'deliveries');
    return n;
end
$$;

revoke all on function netbox_outbox.replay(bigint, bigint, text, bigint, text, timestamptz, timestamptz, text[], boolean) from public;

-- Callable by the sidecar's role like replay() (V5's list; sync() applies it).
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('function', 'netbox_outbox.replay_selection(bigint, bigint, text, bigint, text, timestamp with time zone, timestamp with time zone, text[])',
     '{execute}', 'which deliveries netbox-outbox replay selects (operator command)')
on conflict do nothing;
