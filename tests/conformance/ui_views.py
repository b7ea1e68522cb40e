"""The plugin's pages and actions through NetBox's own test client, for every view and permission
(issue 16). Run inside NetBox by ui.py (`netbox nbshell`), on a clone of the template database with
netbox-outbox migrated and no sidecar running (the pages must work without one, and say so).

Deliveries are written with plain SQL as the migrations' owner (this tests the pages, not the
sidecar; ui.py's browser test runs the sidecar). Users, each with NetBox object permissions:

* admin: superuser;
* nobody: may view devices and webhooks, nothing of the plugin's;
* viewer: may view deliveries, devices, webhooks and event rules, and act on nothing;
* narrow: may view only the deliveries of the webhook `other`;
* actor: viewer plus netbox_outbox_plugin.change_delivery;
* hookadmin: viewer plus extras.change_webhook.

Prints one line per check (`ok  ...` / `FAIL ...`) and ends with `ui views: N passed, M failed`.
"""

import os
import re
import traceback

import psycopg

from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test import Client
from django.urls import reverse

from core.models import ObjectType
from dcim.models import Device, DeviceRole, DeviceType, Manufacturer, Site
from extras.models import EventRule, Webhook
from users.models import ObjectPermission, User

from netbox_outbox_plugin.models import Delivery

OWNER_URL = os.environ['NBO_UI_OWNER_URL']
SECRETS = ['s3cr3t-token', 'hunter2', 'sig-0123456789abcdef', 'webhook-secret-value']
passed, failed = [], []


def check(name, ok, detail='', limit=600):
    (passed if ok else failed).append(name)
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + str(detail)[:limit] if detail and not ok else ''}", flush=True)


def shown(body, ids):
    """Which of these deliveries a page links to (the id column)."""
    return {i for i in ids if re.search(rf'/deliveries/{i}/">{i}<', body)}


def sql(query, params=()):
    """As the owner of netbox-outbox's schema (NetBox's own role may only read the ui_* views)."""
    with psycopg.connect(OWNER_URL, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else None


def add_delivery(webhook, rule, obj, state, attempts, status, excerpt):
    ct = ContentType.objects.get_for_model(obj)
    (delivery_id,) = sql(
        """with e as (
               insert into netbox_outbox.event (txid, seq, content_type_id, object_type, object_id, event,
                   request_id, user_name, origin, committed_at, deliveries)
               values (1, nextval('netbox_outbox.change_id_seq'), %(ct)s, %(type)s, %(obj)s, 'updated',
                       gen_random_uuid(), 'admin', 'netbox', now(), 1)
               returning id, seq)
           , d as (
               insert into netbox_outbox.delivery (event_id, event_rule_id, event_rule_name, webhook_id, webhook_name,
                   content_type_id, object_id, seq, state, timeout_ms, ssl_verification, attempts, last_status,
                   last_error, finished_at)
               select e.id, %(rule)s, %(rule_name)s, %(hook)s, %(hook_name)s, %(ct)s, %(obj)s, e.seq, %(state)s,
                      1000, true, %(attempts)s, %(status)s,
                      case when %(status)s not between 200 and 299 then 'HTTP ' || %(status)s end,
                      case when %(state)s <> 'pending' then now() end
               from e returning id)
           , r as (
               insert into netbox_outbox.request (delivery_id, method, url, headers, body)
               select d.id, 'POST', 'https://crm:hunter2@crm.example/hook',
                      jsonb_build_array(jsonb_build_array('Content-Type', 'application/json'),
                                        jsonb_build_array('X-Hook-Signature', 'sig-0123456789abcdef'),
                                        jsonb_build_array('Authorization', 'Token s3cr3t-token')),
                      convert_to('{"event": "updated", "data": {"name": "ui-device"}}', 'UTF8')
               from d)
           select id from d""",
        {'ct': ct.pk, 'type': f'{ct.app_label}.{ct.model}', 'obj': obj.pk, 'rule': rule.pk,
         'rule_name': rule.name, 'hook': webhook.pk, 'hook_name': webhook.name, 'state': state,
         'attempts': attempts, 'status': status})[0]
    for n in range(1, attempts + 1):
        sql("""insert into netbox_outbox.attempt (delivery_id, attempt, started_at, duration_ms, status, error,
                   response_excerpt, sidecar)
               values (%s, %s, now() - interval '1 minute', 12, %s, null, %s, gen_random_uuid())""",
            [delivery_id, n, status, excerpt])
    return delivery_id


def permission(name, user, models, actions, constraints=None):
    p = ObjectPermission.objects.create(name=name, actions=actions, constraints=constraints)
    p.object_types.set([ObjectType.objects.get_for_model(m) for m in models])
    p.users.add(user)


def client_for(user, csrf=False):
    c = Client(enforce_csrf_checks=csrf)
    c.force_login(user)
    return c


def text(response):
    return response.content.decode('utf-8', errors='replace')


def deliveries_count():
    return sql('select count(*) from netbox_outbox.delivery')[0][0]


def run():
    # --- the data: a device, two webhooks, a rule, and deliveries in every state
    site = Site.objects.create(name='ui-site', slug='ui-site')
    maker = Manufacturer.objects.create(name='ui-maker', slug='ui-maker')
    dtype = DeviceType.objects.create(manufacturer=maker, model='ui-type', slug='ui-type')
    role = DeviceRole.objects.create(name='ui-role', slug='ui-role')
    device = Device.objects.create(name='ui-device', site=site, device_type=dtype, role=role)
    quiet = Device.objects.create(name='ui-quiet', site=site, device_type=dtype, role=role)
    crm = Webhook.objects.create(name='crm', payload_url='https://crm.example/hook', secret='webhook-secret-value',
                                 additional_headers='Authorization: Token s3cr3t-token')
    other = Webhook.objects.create(name='other', payload_url='https://other.example/hook')
    rule = EventRule.objects.create(name='devices', event_types=['object_updated'],
                                    action_type='netbox_outbox.webhook',
                                    action_object_type=ObjectType.objects.get_for_model(Webhook),
                                    action_object_id=crm.pk)
    dead = add_delivery(crm, rule, device, 'dead', 2, 503, 'upstream unavailable: try later')
    delivered = add_delivery(crm, rule, device, 'delivered', 1, 200, 'ok')
    retrying = add_delivery(crm, rule, device, 'pending', 1, 500, 'boom')
    behind = add_delivery(crm, rule, device, 'pending', 0, None, None)
    other_dead = add_delivery(other, rule, device, 'dead', 1, 404, 'no such hook')

    admin = User.objects.create_superuser('ui-admin', 'ui@example.com', 'not-a-password')
    users = {n: User.objects.create_user(f'ui-{n}', f'{n}@example.com', 'not-a-password')
             for n in ('nobody', 'viewer', 'narrow', 'actor', 'hookadmin')}
    basics = [Device, Site, Webhook, EventRule]
    for n, u in users.items():
        permission(f'ui {n} basics', u, basics, ['view'])
    for n in ('viewer', 'actor', 'hookadmin'):
        permission(f'ui {n} deliveries', users[n], [Delivery], ['view'])
    permission('ui narrow deliveries', users['narrow'], [Delivery], ['view'], {'webhook_id': other.pk})
    permission('ui actor acts', users['actor'], [Delivery], ['change'])
    permission('ui hookadmin webhooks', users['hookadmin'], [Webhook], ['change'])

    tab = reverse('dcim:device_webhook_deliveries', kwargs={'pk': device.pk})
    quiet_tab = reverse('dcim:device_webhook_deliveries', kwargs={'pk': quiet.pk})
    listing = reverse('plugins:netbox_outbox_plugin:delivery_list')
    page = reverse('plugins:netbox_outbox_plugin:delivery', kwargs={'pk': dead})
    other_page = reverse('plugins:netbox_outbox_plugin:delivery', kwargs={'pk': other_dead})
    replay_selection = reverse('plugins:netbox_outbox_plugin:delivery_replay')
    pause = reverse('plugins:netbox_outbox_plugin:webhook_pause', kwargs={'pk': crm.pk})
    resume = reverse('plugins:netbox_outbox_plugin:webhook_resume', kwargs={'pk': crm.pk})
    webhook_page = crm.get_absolute_url()
    device_page = device.get_absolute_url()

    # --- NetBox's role reads the views and nothing behind them
    with connection.cursor() as cursor:
        cursor.execute('select current_user, has_table_privilege(current_user, %s, %s), '
                       'has_table_privilege(current_user, %s, %s)',
                       ['netbox_outbox.request', 'select', 'netbox_outbox.ui_request', 'select'])
        who, tables, views = cursor.fetchone()
    check(f"NetBox's role ({who}) reads the ui views, not the tables", views and not tables, (who, tables, views))

    # --- anonymous: NetBox's login page, for every page and action
    anonymous = Client()
    for url in (tab, listing, page, replay_selection):
        r = anonymous.get(url)
        check(f'anonymous GET {url} goes to the login page', r.status_code == 302 and '/login/' in r['Location'],
              r.status_code)
    for url in (page, pause, resume, replay_selection):
        r = anonymous.post(url)
        check(f'anonymous POST {url} goes to the login page', r.status_code == 302 and '/login/' in r['Location'],
              r.status_code)

    # --- admin: everything
    c = client_for(admin)
    r = c.get(device_page)
    check("the device's page has the Webhook deliveries tab", r.status_code == 200 and tab in text(r), r.status_code)
    r = c.get(tab)
    body = text(r)
    check('the tab lists the device\'s deliveries, newest first',
          r.status_code == 200 and shown(body, (dead, delivered, retrying, behind, other_dead)) == {
              dead, delivered, retrying, behind, other_dead}
          and body.index(f'/deliveries/{behind}/"') < body.index(f'/deliveries/{dead}/"'), r.status_code)
    check("the tab shows the last attempt's status and response excerpt",
          '503' in body and 'upstream unavailable: try later' in body, body[-2000:])
    check('the tab shows the states: dead, delivered, retrying, blocked',
          all(s in body for s in ('Dead', 'Delivered', 'Retrying', 'blocked')))
    check('the tab shows the rule and webhook with links',
          reverse('extras:eventrule', kwargs={'pk': rule.pk}) in body and webhook_page in body)
    check('the pages say that no sidecar is running', 'No netbox-outbox sidecar has reported' in body)
    r = c.get(quiet_tab)
    check('a device without deliveries has an empty tab', r.status_code == 200 and 'No webhook deliveries' in text(r))
    r = c.get(reverse('dcim:site_webhook_deliveries', kwargs={'pk': site.pk}))
    check('the tab exists on other event-rules models (sites)', r.status_code == 200, r.status_code)

    r = c.get(listing)
    body = text(r)
    check('the list shows every delivery', r.status_code == 200 and shown(
        body, (dead, delivered, retrying, behind, other_dead)) == {dead, delivered, retrying, behind, other_dead},
        r.status_code)
    dead_count = re.search(r'id="dead-count">(\d+)<', body)
    blocked_count = re.search(r'id="blocked-count">(\d+)<', body)
    check('the list counts dead and blocked deliveries on top',
          dead_count and dead_count.group(1) == '2' and blocked_count and blocked_count.group(1) == '1',
          (dead_count and dead_count.group(0), blocked_count and blocked_count.group(0)))
    for query, expected, name in (
        ('?state=dead', {dead, other_dead}, 'state'),
        ('?state=blocked', {behind}, 'blocked'),
        (f'?webhook_id={other.pk}', {other_dead}, 'webhook'),
        (f'?event_rule_id={rule.pk}&state=delivered', {delivered}, 'event rule and state'),
        (f'?object_type_id={ContentType.objects.get_for_model(Site).pk}', set(), 'object type'),
        (f'?object_type_id={ContentType.objects.get_for_model(Device).pk}&state=retrying', {retrying}, 'object type and state'),
        ('?user=admin&state=dead', {dead, other_dead}, 'user'),
        ('?user=someone-else', set(), 'another user'),
        ('?since=2999-01-01+00:00', set(), 'time range (future)'),
        ('?since=2000-01-01+00:00&until=2999-01-01+00:00&state=delivered', {delivered}, 'time range'),
        ('?q=other', {other_dead}, 'search'),
    ):
        body = text(c.get(listing + query))
        got = shown(body, (dead, delivered, retrying, behind, other_dead))
        check(f'the list filters by {name}', got == expected, f'{query}: shown {got}, expected {expected}')

    r = c.get(page)
    body = text(r)
    check("a delivery's page shows the request line and headers",
          r.status_code == 200 and 'POST https://********@crm.example/hook' in body and 'Content-Type' in body
          and 'application/json' in body, r.status_code)
    check("a delivery's page masks the signature and credentials",
          body.count('********') >= 3 and not any(s in body for s in SECRETS),
          [s for s in SECRETS if s in body])
    check("a delivery's page pretty-prints the body and keeps the raw one",
          '&quot;data&quot;: {\n' in body and '{&quot;event&quot;: &quot;updated&quot;, &quot;data&quot;' in body)
    check("a delivery's page lists every attempt",
          body.count('upstream unavailable: try later') >= 2 and 'id="attempts"' in body)
    check("a delivery's page links the object, the rule and the webhook",
          device_page in body and reverse('extras:eventrule', kwargs={'pk': rule.pk}) in body and webhook_page in body)
    check('an admin sees the replay button', 'id="replay-delivery"' in body)

    r = c.get(webhook_page)
    body = text(r)
    check("the Webhook page has the health panel with its chart",
          r.status_code == 200 and 'id="webhook-health"' in body and '<svg class="netbox-outbox-chart"' in body
          and 'id="pause-webhook"' in body, r.status_code)
    backlog = re.search(r'id="health-backlog">([^<]*)<', body)
    check('the health panel counts the backlog', backlog and backlog.group(1).strip() == '2 pending, 1 retrying',
          backlog and backlog.group(1))
    check('the health panel counts deliveries per hour and the success ratio',
          '0.2 attempts per hour' in body and '25.0% delivered' in body,
          re.search(r'Last 24 hours.{0,200}', body, re.S).group(0) if 'Last 24 hours' in body else body[-1500:])

    # --- nobody: may view devices and webhooks, nothing of ours
    c = client_for(users['nobody'])
    r = c.get(device_page)
    check("without view_delivery the device's page has no deliveries tab", r.status_code == 200 and tab not in text(r),
          r.status_code)
    for url in (tab, listing, page, replay_selection):
        r = c.get(url)
        check(f'without view_delivery GET {url} is refused', r.status_code == 403, r.status_code)
    r = c.get(webhook_page)
    check('without view_delivery the Webhook page has no health panel',
          r.status_code == 200 and 'webhook-health' not in text(r), r.status_code)
    check("without view_delivery the Webhook page has no sidecar banner", 'No netbox-outbox sidecar' not in text(r))
    before = deliveries_count()
    for url in (page, replay_selection, pause):
        r = c.post(url, {'state': 'dead'})
        check(f'without permissions POST {url} is refused', r.status_code == 403, r.status_code)
    check('nothing was replayed or paused by refused requests', deliveries_count() == before and not sql(
        'select 1 from netbox_outbox.webhook_state where paused_until is not null'))

    # --- viewer: sees, cannot act
    c = client_for(users['viewer'])
    r = c.get(tab)
    check('a viewer sees the tab', r.status_code == 200 and dead in shown(text(r), (dead,)), r.status_code)
    r = c.get(page)
    body = text(r)
    check('a viewer sees a delivery without any secret',
          r.status_code == 200 and not any(s in body for s in SECRETS), [s for s in SECRETS if s in body])
    check('a viewer gets no replay button', 'id="replay-delivery"' not in body)
    check('a viewer gets no pause button', 'id="pause-webhook"' not in text(c.get(webhook_page)))
    check('a viewer gets no "Replay these" button', 'id="replay-selection"' not in text(c.get(listing)))
    before = deliveries_count()
    skip_url = reverse('plugins:netbox_outbox_plugin:delivery_skip', kwargs={'pk': retrying})
    for url, data in ((page, {}), (replay_selection, {'state': 'dead'}), (pause, {}), (resume, {}), (skip_url, {})):
        r = c.post(url, data)
        check(f'a viewer cannot POST {url}', r.status_code == 403, r.status_code)
    r = c.get(replay_selection + '?state=dead')
    check("a viewer cannot open the replay confirmation", r.status_code == 403, r.status_code)
    check("a viewer's refused POSTs changed nothing", deliveries_count() == before and not sql(
        'select 1 from netbox_outbox.webhook_state where paused_until is not null'))

    # --- narrow: constraints apply
    c = client_for(users['narrow'])
    body = text(c.get(listing))
    check('a constrained viewer lists only what the constraint allows',
          shown(body, (dead, delivered, retrying, behind, other_dead)) == {other_dead})
    check("a constrained viewer cannot open another webhook's delivery", c.get(page).status_code == 404)
    check("a constrained viewer opens an allowed delivery", c.get(other_page).status_code == 200)
    check("a constrained viewer sees no health panel for a webhook outside the constraint",
          'webhook-health' not in text(c.get(webhook_page)))
    check("a constrained viewer sees the health panel of the allowed webhook",
          'id="webhook-health"' in text(c.get(other.get_absolute_url())))
    badge = re.search(r'Webhook deliveries\s*<span class="badge[^"]*">\s*(\d+)', text(c.get(device_page)))
    check("a constrained viewer's tab badge counts only allowed deliveries", badge and badge.group(1) == '1',
          badge and badge.group(0))
    body = text(c.get(tab))
    check("a constrained viewer's tab shows only allowed deliveries",
          shown(body, (dead, delivered, retrying, behind, other_dead)) == {other_dead})

    # --- actor: CSRF, replay one, replay a selection (count first)
    c = client_for(users['actor'], csrf=True)
    body = text(c.get(page))
    check('an actor sees the replay button', 'id="replay-delivery"' in body)
    before = deliveries_count()
    r = c.post(page)
    check('a POST without a CSRF token is refused', r.status_code == 403 and deliveries_count() == before,
          r.status_code)
    token = c.cookies['csrftoken'].value
    r = c.post(page, {'csrfmiddlewaretoken': token})
    copies = sql('select id, state from netbox_outbox.delivery where replay_of = %s', [dead])
    check('an actor replays a dead delivery: a new pending delivery, and the page of the copy',
          r.status_code == 302 and len(copies) == 1 and copies[0][1] == 'pending'
          and r['Location'].endswith(f'/deliveries/{copies[0][0]}/'), (r.status_code, copies))
    r = c.post(reverse('plugins:netbox_outbox_plugin:delivery', kwargs={'pk': retrying}),
               {'csrfmiddlewaretoken': token})
    check('a pending delivery is not replayed', r.status_code == 400, r.status_code)
    # skip: the failing head of a queue
    retrying_page = reverse('plugins:netbox_outbox_plugin:delivery', kwargs={'pk': retrying})
    skip_url = reverse('plugins:netbox_outbox_plugin:delivery_skip', kwargs={'pk': retrying})
    check('the skip button is shown on the failing head', 'id="skip-delivery"' in text(c.get(retrying_page)))
    check('no skip button on a finished delivery', 'id="skip-delivery"' not in text(c.get(page)))
    r = c.post(skip_url, {'csrfmiddlewaretoken': token})
    state = sql('select state from netbox_outbox.ui_delivery where id = %s', [retrying])[0][0]
    check('skipping the failing head: it is skipped', r.status_code == 302 and state == 'skipped',
          (r.status_code, state))
    # rejected: nothing to copy, so the page gives the command that renders it again instead
    rejected = add_delivery(crm, rule, device, 'rejected', 0, None, None)
    body = text(c.get(reverse('plugins:netbox_outbox_plugin:delivery', kwargs={'pk': rejected})))
    command = re.search(r'id="rerender-command">([^<]*)<', body)
    check("a rejected delivery's page gives the command that sends it again, and no replay button",
          command and command.group(1).strip() == f'netbox-outbox replay --rerender --delivery {rejected}'
          and 'id="replay-delivery"' not in body, command and command.group(0))
    check('no re-render command on a delivery that is not rejected', 'id="rerender-command"' not in text(c.get(page)))
    # (the other webhook's dead delivery: untouched so far)
    r = c.get(replay_selection + f'?state=dead&webhook_id={other.pk}')
    count = re.search(r'id="replay-count">\s*(\d+)', text(r))
    check('replaying a selection shows the count first', r.status_code == 200 and count and count.group(1) == '1',
          count and count.group(0))
    before = deliveries_count()
    r = c.post(replay_selection, {'csrfmiddlewaretoken': token, 'state': 'dead', 'webhook_id': str(other.pk)})
    check('replaying the selection sends exactly the count', r.status_code == 302 and deliveries_count() == before + 1,
          (r.status_code, deliveries_count() - before))
    check('an actor may pause a webhook (change_delivery)', c.post(pause, {'csrfmiddlewaretoken': token}).status_code == 302
          and sql('select paused_by_operator from netbox_outbox.webhook_state where webhook_id = %s', [crm.pk]) == [(True,)])
    c.post(resume, {'csrfmiddlewaretoken': token})

    # --- hookadmin: extras.change_webhook lets them pause and resume
    c = client_for(users['hookadmin'])
    body = text(c.get(webhook_page))
    check('extras.change_webhook shows the pause button', 'id="pause-webhook"' in body)
    r = c.post(pause, {'return_url': webhook_page})
    state = sql('select paused_by_operator, reason from netbox_outbox.webhook_state where webhook_id = %s', [crm.pk])
    check('pause: the webhook is paused by an operator, named in the reason',
          r.status_code == 302 and state and state[0][0] is True and 'ui-hookadmin' in state[0][1], state)
    body = text(c.get(webhook_page))
    paused = re.search(r'id="health-paused">\s*([^<]*)', body)
    check('the health panel says paused until resumed, with a resume button',
          paused and 'until resumed' in paused.group(1) and 'id="resume-webhook"' in body, paused and paused.group(1))
    body = text(c.get(tab))
    check("the paused webhook's pending deliveries show as paused", 'Paused' in body)
    r = c.post(resume, {'return_url': 'https://evil.example/'})
    check('resume: the webhook is resumed, and a foreign return_url is ignored',
          r.status_code == 302 and r['Location'] == webhook_page and sql(
              'select paused_until is null from netbox_outbox.webhook_state where webhook_id = %s', [crm.pk]) == [(True,)],
          (r.status_code, r.get('Location')))


try:
    run()
except Exception:  # noqa: BLE001 - report, do not hide
    check('the checks ran to the end', False, traceback.format_exc(), limit=20000)
print(f'ui views: {len(passed)} passed, {len(failed)} failed')
