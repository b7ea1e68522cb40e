-- netbox-outbox V13: what the NetBox plugin's pages read and do (issue 16).
--
-- The plugin shows deliveries inside NetBox: a "Webhook deliveries" tab on every object, a list
-- of deliveries, a delivery's page, a health panel on each Webhook, and buttons to replay a
-- delivery and pause or resume a webhook. It reads only the views below, which never carry a
-- secret (header values that look like credentials are masked, a URL's user:password too), and
-- acts only through the owner-rights ui_* functions below, which call the same replay(), skip()
-- and pause/resume functions the CLI and psql use. It never writes an outbox table itself.
--
-- NetBox's role usually applied the migrations and owns all of this. When a DBA owns the
-- netbox_outbox schema instead, grant NetBox's role exactly what the pages need:
--   select * from netbox_outbox.grant_netbox('netbox');
-- (docs/privileges.md, plugin/README.md).

-- ---------------------------------------------------------------------------------------------
-- Views (the owner's rights: a role granted a view reads it without rights on the tables).
-- ---------------------------------------------------------------------------------------------

-- Every delivery with its event, as the pages list it. state is the delivery's state made
-- precise for a reader: pending deliveries are 'retrying' after a failed attempt and 'paused'
-- while their webhook is paused; blocked says a pending delivery waits behind a head of its
-- object's queue that has failed (as netbox_outbox.blocked_heads of issue 13 counts them). Later
-- states (replayed, skipped) pass through as they are.
create view netbox_outbox.ui_delivery as
select d.id, d.event_id, e.event, e.committed_at, e.user_name, e.request_id, e.origin,
       d.content_type_id, e.object_type, d.object_id, d.event_rule_id, d.event_rule_name,
       d.webhook_id, d.webhook_name,
       case when d.state <> 'pending' then d.state
            when s.paused_until > now() then 'paused'
            when d.attempts > 0 then 'retrying'
            else 'pending' end as state,
       d.state = 'pending' and exists (
           select 1 from netbox_outbox.queue_head h
           join netbox_outbox.delivery hd on hd.id = h.delivery_id
           where h.webhook_id = d.webhook_id and h.content_type_id = d.content_type_id
             and h.object_id = d.object_id and h.delivery_id <> d.id and hd.last_error is not null) as blocked,
       d.attempts, d.last_status, d.last_error,
       -- the start of the last attempt's response, for the tables
       (select left(a.response_excerpt, 200) from netbox_outbox.attempt a
        where a.delivery_id = d.id order by a.attempt desc, a.id desc limit 1) as last_excerpt,
       d.next_attempt_at, d.created_at, d.finished_at, d.replay_of
from netbox_outbox.delivery d
join netbox_outbox.event e on e.id = d.event_id
left join netbox_outbox.webhook_state s on s.webhook_id = d.webhook_id;

comment on view netbox_outbox.ui_delivery is
    'For the NetBox plugin: every delivery with its event and a reader''s state (pending, retrying, paused, delivered, dead, rejected).';

-- The frozen request of each delivery, with credentials masked: the value of every header whose
-- name looks like a credential (NetBox's X-Hook-Signature, an HMAC of the body with the webhook's
-- secret; an operator's Authorization, X-Api-Key, ...), and a URL's user:password@. Inline, not
-- in a function: a view's caller needs EXECUTE on the functions it calls.
create view netbox_outbox.ui_request as
select r.delivery_id, r.method,
       regexp_replace(r.url, '^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@?#]*@', '\1********@') as url,
       coalesce((select jsonb_agg(jsonb_build_array(h ->> 0,
                                      case when h ->> 0 ~* '(auth|token|secret|key|passw|cookie|signature|credential|session)'
                                           then '********' else h ->> 1 end)
                                  order by n)
                 from jsonb_array_elements(r.headers) with ordinality as x(h, n)), '[]'::jsonb) as headers,
       r.body
from netbox_outbox.request r;

comment on view netbox_outbox.ui_request is
    'For the NetBox plugin: each delivery''s request (method, URL, headers, body) with credentials masked.';

-- Every attempt, with the first KiB of the response.
create view netbox_outbox.ui_attempt as
select a.id, a.delivery_id, a.attempt, a.started_at, a.duration_ms, a.status, a.error,
       left(a.response_excerpt, 1024) as response_excerpt, a.sidecar
from netbox_outbox.attempt a;

comment on view netbox_outbox.ui_attempt is 'For the NetBox plugin: every attempt of every delivery.';

-- Each webhook's health: backlog, oldest pending, dead, blocked heads, pause, failure streak.
create view netbox_outbox.ui_webhook_health as
select w.webhook_id,
       (select count(*) from netbox_outbox.delivery d where d.webhook_id = w.webhook_id and d.state = 'pending') as pending,
       (select count(*) from netbox_outbox.delivery d where d.webhook_id = w.webhook_id and d.state = 'pending' and d.attempts > 0) as retrying,
       (select count(*) from netbox_outbox.delivery d where d.webhook_id = w.webhook_id and d.state = 'dead') as dead,
       (select count(*) from netbox_outbox.delivery d where d.webhook_id = w.webhook_id and d.state = 'rejected') as rejected,
       (select min(d.created_at) from netbox_outbox.delivery d where d.webhook_id = w.webhook_id and d.state = 'pending') as oldest_pending,
       (select count(*) from netbox_outbox.queue_head h join netbox_outbox.delivery hd on hd.id = h.delivery_id
        where h.webhook_id = w.webhook_id and hd.last_error is not null) as blocked_heads,
       -- an operator's pause lasts until resumed ('infinity', which drivers cannot represent)
       coalesce(s.paused_until > now(), false) as paused,
       case when s.paused_until = 'infinity' then null else s.paused_until end as paused_until,
       coalesce(s.paused_by_operator, false) as paused_by_operator, s.reason as pause_reason,
       coalesce(s.consecutive_failures, 0) as consecutive_failures, s.last_success_at, s.last_failure_at
from (select id as webhook_id from public.extras_webhook
      union select webhook_id from netbox_outbox.webhook_state) w
left join netbox_outbox.webhook_state s on s.webhook_id = w.webhook_id;

comment on view netbox_outbox.ui_webhook_health is 'For the NetBox plugin: each webhook''s backlog, failures and pause.';

-- Attempts per hour over the last 24 hours, per webhook: succeeded (2xx) and failed.
create view netbox_outbox.ui_webhook_hourly as
select d.webhook_id, date_trunc('hour', a.started_at) as hour,
       count(*) filter (where a.status between 200 and 299) as succeeded,
       count(*) filter (where a.status is null or a.status not between 200 and 299) as failed
from netbox_outbox.attempt a
join netbox_outbox.delivery d on d.id = a.delivery_id
where a.started_at > now() - interval '24 hours'
group by 1, 2;

comment on view netbox_outbox.ui_webhook_hourly is 'For the NetBox plugin: attempts per hour in the last 24 hours, per webhook.';

-- The sidecars that ran in the last day, and whether each is live (a heartbeat in the last 30
-- seconds: three of the sidecar's 10-second heartbeats).
create view netbox_outbox.ui_sidecar as
select s.id, s.hostname, s.version, s.started_at, s.last_seen_at, s.stopped_at,
       s.stopped_at is null and s.last_seen_at > now() - interval '30 seconds' as live
from netbox_outbox.sidecar s
where s.last_seen_at > now() - interval '1 day';

comment on view netbox_outbox.ui_sidecar is 'For the NetBox plugin: recent sidecars and whether each is live.';

revoke all on netbox_outbox.ui_delivery, netbox_outbox.ui_request, netbox_outbox.ui_attempt,
    netbox_outbox.ui_webhook_health, netbox_outbox.ui_webhook_hourly, netbox_outbox.ui_sidecar from public;

-- ---------------------------------------------------------------------------------------------
-- Actions: owner-rights wrappers of the operator functions, so NetBox's role needs EXECUTE on
-- these and nothing on the tables they write. NetBox checks its own permissions first.
-- ---------------------------------------------------------------------------------------------

-- Replays the listed deliveries that are in a state replay() copies (dead, delivered, skipped);
-- returns how many were (or, with dry_run, would be) replayed. Each is replayed in its own state
-- with V11's replay() (one row per delivery; the copy keeps the message id the receiver saw).
create function netbox_outbox.ui_replay(delivery_ids bigint[], dry_run boolean default false) returns bigint
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    d record;
    n bigint := 0;
    one bigint;
begin
    for d in select x.id, x.state from netbox_outbox.delivery x
             where x.id = any(delivery_ids) and x.state in ('dead', 'delivered', 'skipped')
             order by x.seq, x.id loop
        select count(*) into one
        from netbox_outbox.replay(delivery_id => d.id, states => array[d.state], dry_run => ui_replay.dry_run);
        n := n + one;
    end loop;
    return n;
end
$$;

-- Releases a blocked queue: the delivery (a pending one, usually its failing head) becomes
-- skipped, and the next delivery of its object goes out (V11's skip()). Returns how many
-- deliveries were skipped (0 or 1).
create function netbox_outbox.ui_skip(delivery_id bigint, reason text) returns bigint
language sql security definer set search_path = pg_catalog, pg_temp
as $$
    select count(*) from netbox_outbox.skip(delivery_id => ui_skip.delivery_id, reason => ui_skip.reason)
$$;

create function netbox_outbox.ui_pause_webhook(webhook_id bigint, reason text) returns bigint
language sql security definer set search_path = pg_catalog, pg_temp
as $$
    select netbox_outbox.pause_webhook(ui_pause_webhook.webhook_id::text, ui_pause_webhook.reason)
$$;

create function netbox_outbox.ui_resume_webhook(webhook_id bigint) returns bigint
language sql security definer set search_path = pg_catalog, pg_temp
as $$
    select netbox_outbox.resume_webhook(ui_resume_webhook.webhook_id::text)
$$;

revoke all on function netbox_outbox.ui_replay(bigint[], boolean) from public;
revoke all on function netbox_outbox.ui_skip(bigint, text) from public;
revoke all on function netbox_outbox.ui_pause_webhook(bigint, text) from public;
revoke all on function netbox_outbox.ui_resume_webhook(bigint) from public;

-- ---------------------------------------------------------------------------------------------
-- Granting NetBox's role what the pages need (when it does not own the schema). Caller's rights:
-- only a role that may grant on these objects (their owner) can run it. Safe to run again.
-- ---------------------------------------------------------------------------------------------
create function netbox_outbox.grant_netbox(netbox text, out object text, out action text)
returns setof record
language plpgsql set search_path = pg_catalog, pg_temp
as $$
declare
    target regrole := to_regrole(quote_ident(netbox));
begin
    if target is null then
        raise exception 'netbox_outbox: role % does not exist', netbox
            using hint = 'Give the role NetBox connects to PostgreSQL as (DATABASES in configuration.py).';
    end if;
    if not has_schema_privilege(target, 'netbox_outbox', 'usage') then
        execute format('grant usage on schema netbox_outbox to %I', netbox);
        object := 'schema netbox_outbox'; action := 'granted usage'; return next;
    end if;
    foreach object in array array['netbox_outbox.ui_delivery', 'netbox_outbox.ui_request',
                                  'netbox_outbox.ui_attempt', 'netbox_outbox.ui_webhook_health',
                                  'netbox_outbox.ui_webhook_hourly', 'netbox_outbox.ui_sidecar'] loop
        if not has_table_privilege(target, object, 'select') then
            execute format('grant select on %s to %I', object, netbox);
            action := 'granted select'; return next;
        end if;
    end loop;
    foreach object in array array[
        'netbox_outbox.ui_replay(bigint[], boolean)', 'netbox_outbox.ui_skip(bigint, text)',
        'netbox_outbox.ui_pause_webhook(bigint, text)', 'netbox_outbox.ui_resume_webhook(bigint)'] loop
        if not has_function_privilege(target, object, 'execute') then
            execute format('grant execute on function %s to %I', object, netbox);
            action := 'granted execute'; return next;
        end if;
    end loop;
end
$$;

revoke all on function netbox_outbox.grant_netbox(text) from public;

comment on function netbox_outbox.grant_netbox(text) is
    'Grants NetBox''s database role what the plugin''s pages need: the ui_* views and functions, nothing else.';
