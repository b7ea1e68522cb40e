"""The plugin's NetBox pages in a real NetBox 4.7.3 (issue 16).

Run it with `tests/conformance/run --ui [--binary PATH] [--no-browser] [--keep]` (tests/run does).
On a clone of the migrated NetBox template database, with netbox-outbox migrated and the plugin
enabled:

NetBox connects as a role of its own that does not own netbox-outbox's schema and was given only
what `netbox_outbox.grant_netbox()` grants (the DBA's case in docs/install.md).

1. **Views and permissions** (`ui_views.py`, inside NetBox through its test client, no sidecar
   running): every page and action for anonymous, unprivileged, viewing, constrained and acting
   users; no secret on any page; CSRF enforced; filters and counts.
2. **A real browser** (Debian's `chromium` and `chromium-driver`, driven by Selenium): NetBox
   served by `netbox runserver`, the sidecar running against the database and a receiver that
   answers 503 first. It logs in, opens a device whose webhook failed, sees the attempt's status
   and excerpt on its "Webhook deliveries" tab, opens the delivery, replays it and sees the copy
   delivered (the receiver answers 200 by then), pauses and resumes the webhook from its page,
   and saves screenshots into plugin/docs/ (plugin/README.md shows them).

Exit status: 0 when every check passes, 1 when one fails, 2 when the set-up failed. The last line
is `ui: N passed, M failed`.
"""

import argparse
import json
import os
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg

import environment as env

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# (overridable for a run outside the shared lock, with its own template and Redis databases)
DBNAME = os.environ.get('NBO_UI_DBNAME', 'nbo_conformance_ui')
# NetBox's database role: not the owner of netbox-outbox's schema (see prepare())
NETBOX_ROLE = os.environ.get('NBO_UI_NETBOX_ROLE', 'nbo_conformance_ui_netbox')
PLUGIN = 'netbox_outbox_plugin'
ADMIN = ('admin', 'admin-password-not-a-secret')

# One quick retry, then dead; no automatic pause: the browser test needs a dead delivery fast.
SIDECAR_CONFIG = """# Written by tests/conformance/ui.py.
database_url = "{url}"

[rules]
refresh_interval = "200ms"

[delivery]
poll_interval = "200ms"
retry_schedule = ["300ms"]
retry_jitter = 0.0
pause_after_failures = 0

[assembly]
poll_interval = "200ms"

[metrics]
listen = ""
"""

EXCERPT = 'upstream unavailable: try later'


class FlakyReceiver:
    """Answers 503 with EXCERPT while `failing`, then 200; records what it got."""

    def __init__(self):
        self.failing = True
        self.received = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                failing = receiver.failing
                receiver.received.append({'path': self.path, 'failing': failing,
                                          'headers': {k.lower(): v for k, v in self.headers.items()}, 'body': body})
                answer = EXCERPT.encode() if failing else b'ok'
                self.send_response(503 if failing else 200)
                self.send_header('Content-Length', str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()

    def url(self, path):
        return f'http://127.0.0.1:{self.server.server_address[1]}{path}'


class Checks:
    def __init__(self):
        self.passed, self.failed = [], []

    def __call__(self, name, ok, detail=''):
        (self.passed if ok else self.failed).append(name)
        env.log(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + str(detail)[:800] if detail and not ok else ''}")
        return ok


def wait_for(what, condition, timeout=90, interval=0.3, processes=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in processes:
            p.check()
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise env.SetupError(f'timed out after {timeout}s waiting for {what}')


def query(sql, params=()):
    with env.pg_connect(DBNAME) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


def prepare(netbox, binary, workdir):
    """A fresh clone of the template, netbox-outbox migrated by the DBA (the superuser), NetBox's Redis
    databases emptied (only if empty or this suite's: env.claim_redis_databases()), and NetBox connecting as a role of its own that does not own netbox-outbox's
    schema and has only what grant_netbox() gives it there: the pages must work with exactly that."""
    env.clone_template(DBNAME)
    env.claim_redis_databases()
    env.run([str(binary), 'migrate', '--database-url', env.database_url(DBNAME)], log_path=workdir / 'migrate.log')
    with env.pg_connect() as conn:
        if conn.execute('select 1 from pg_roles where rolname = %s', [NETBOX_ROLE]).fetchone():
            conn.execute(f'drop role "{NETBOX_ROLE}"')
        conn.execute(f'create role "{NETBOX_ROLE}" login nosuperuser')
    with env.pg_connect(DBNAME) as conn:
        # what NetBox needs on its own tables (in production it owns them)
        conn.execute(f'grant usage, create on schema public to "{NETBOX_ROLE}"')
        conn.execute(f'grant select, insert, update, delete on all tables in schema public to "{NETBOX_ROLE}"')
        conn.execute(f'grant usage, select, update on all sequences in schema public to "{NETBOX_ROLE}"')
        granted = conn.execute('select * from netbox_outbox.grant_netbox(%s)', [NETBOX_ROLE]).fetchall()
    (workdir / 'grant_netbox.log').write_text('\n'.join(map(str, granted)))
    root = netbox.write_instance(workdir / 'instance', DBNAME, [PLUGIN])
    conf = root / 'conf' / 'configuration.py'
    conf.write_text(conf.read_text().replace(f"'USER': {env.PG_USER!r}", f"'USER': {NETBOX_ROLE!r}"))
    # ui_views.py writes its deliveries and reads the outcome as the owner
    os.environ['NBO_UI_OWNER_URL'] = env.database_url(DBNAME)
    return root


def drop_role():
    with env.pg_connect() as conn:
        if conn.execute('select 1 from pg_roles where rolname = %s', [NETBOX_ROLE]).fetchone():
            conn.execute(f'drop role "{NETBOX_ROLE}"')


def views_and_permissions(netbox, root, check, workdir):
    output = netbox.shell(root, f"exec(open({str(HERE / 'ui_views.py')!r}).read())", log_path=None) or ''
    (workdir / 'ui_views.log').write_text(output)
    lines = [line for line in output.splitlines() if line.startswith(('ok  ', 'FAIL'))]
    for line in lines:
        check(f'views: {line[5:]}', line.startswith('ok  '), 'see ' + str(workdir / 'ui_views.log'))
    check('views: the test-client checks ran and reported', 'ui views:' in output and lines, output[-3000:])


def browser(netbox, root, binary, check, workdir, screenshots):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    chromium, driver_path = shutil.which('chromium'), shutil.which('chromedriver')
    if not chromium or not driver_path:
        raise env.SetupError('the browser test needs Debian\'s chromium and chromium-driver: '
                             'apt-get install -y chromium chromium-driver')

    receiver = FlakyReceiver().start()
    port = env.free_port()
    base = f'http://127.0.0.1:{port}'
    nb_env = netbox.env(root)
    processes = [env.Process('netbox', [str(netbox.command), 'runserver', '--insecure', '--noreload',
                                        f'127.0.0.1:{port}'], workdir / 'runserver.log', env=nb_env, cwd=workdir)]
    config = workdir / 'netbox-outbox.toml'
    config.write_text(SIDECAR_CONFIG.format(url=env.database_url(DBNAME)))
    sidecar_env = {k: v for k, v in os.environ.items() if not k.startswith('NETBOX_OUTBOX_') and k != 'DATABASE_URL'}
    processes.append(env.Process('sidecar', [str(binary), 'run', '--config', str(config)], workdir / 'sidecar.log',
                                 env=sidecar_env, cwd=workdir))
    driver = None
    try:
        netbox.shell(root, '\n'.join([
            'from core.models import ObjectType',
            'from dcim.models import Device, DeviceRole, DeviceType, Manufacturer, Site',
            'from extras.models import EventRule, Webhook',
            'from users.models import User',
            f'User.objects.create_superuser({ADMIN[0]!r}, "admin@example.com", {ADMIN[1]!r})',
            "site = Site.objects.create(name='Amsterdam 1', slug='ams1')",
            "maker = Manufacturer.objects.create(name='Juniper', slug='juniper')",
            "dtype = DeviceType.objects.create(manufacturer=maker, model='MX204', slug='mx204')",
            "role = DeviceRole.objects.create(name='Edge router', slug='edge-router')",
            f"w = Webhook.objects.create(name='crm', payload_url={receiver.url('/hook/crm')!r}, "
            "secret='example-secret', additional_headers='Authorization: Token example-token')",
            "r = EventRule.objects.create(name='devices to crm', event_types=['object_created', 'object_updated'], "
            "action_type='netbox_outbox.webhook', action_object_type=ObjectType.objects.get_for_model(Webhook), "
            "action_object_id=w.id)",
            'r.object_types.set([ObjectType.objects.get_for_model(Device)])',
        ]), log_path=workdir / 'nbshell.log')
        # the sidecar has read the rule once the change that created it is read; then the device
        wait_for('the sidecar to read the rule', lambda: query(
            'select count(*) = 0 from netbox_outbox.unread_change')[0][0], processes=processes)
        netbox.shell(root, '\n'.join([
            'from dcim.models import Device, DeviceRole, DeviceType, Site',
            "Device.objects.create(name='edge-router-1', site=Site.objects.get(slug='ams1'), "
            "device_type=DeviceType.objects.get(slug='mx204'), role=DeviceRole.objects.get(slug='edge-router'))",
        ]), log_path=workdir / 'nbshell.log')
        device_id = query("select id from dcim_device where name = 'edge-router-1'")[0][0]
        webhook_id = query("select id from extras_webhook where name = 'crm'")[0][0]
        dead = wait_for('the device\'s delivery to die (503, 503)', lambda: query(
            "select id from netbox_outbox.delivery where object_id = %s and state = 'dead'", [device_id]),
            processes=processes)[0][0]
        check('browser set-up: the failing webhook left a dead delivery after two 503s', True)
        receiver.failing = False

        options = Options()
        options.binary_location = chromium
        for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1440,1100',
                    '--disable-gpu', '--lang=en-US'):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        driver.implicitly_wait(5)
        wait_for('NetBox to answer', lambda: _answers(base + '/login/'), timeout=120, processes=processes)

        driver.get(base + '/login/')
        driver.find_element(By.ID, 'id_username').send_keys(ADMIN[0])
        driver.find_element(By.ID, 'id_password').send_keys(ADMIN[1])
        driver.find_element(By.CSS_SELECTOR, 'button[type=submit]').click()
        wait_for('the login', lambda: '/login/' not in driver.current_url)

        driver.get(f'{base}/dcim/devices/{device_id}/')
        driver.find_element(By.PARTIAL_LINK_TEXT, 'Webhook deliveries').click()
        wait_for('the tab', lambda: '/webhook-deliveries/' in driver.current_url)
        table = driver.find_element(By.CSS_SELECTOR, '.netbox-outbox-object-deliveries').text
        check("browser: the device's tab shows the failed attempt's status and excerpt",
              '503' in table and EXCERPT in table and 'Dead' in table, table)
        driver.save_screenshot(str(screenshots / 'object-tab.png'))

        driver.find_element(By.LINK_TEXT, str(dead)).click()
        wait_for("the delivery's page", lambda: f'/deliveries/{dead}/' in driver.current_url)
        page = driver.find_element(By.TAG_NAME, 'body').text
        check("browser: the delivery's page shows the request (secrets masked) and both attempts",
              'POST ' + receiver.url('/hook/crm') in page and '********' in page
              and 'example-token' not in driver.page_source and 'example-secret' not in driver.page_source
              and page.count(EXCERPT) >= 2, page[:3000])
        driver.save_screenshot(str(screenshots / 'delivery.png'))

        driver.find_element(By.ID, 'replay-delivery').click()
        wait_for('the replay', lambda: f'/deliveries/{dead}/' not in driver.current_url)
        copy = int(driver.current_url.rstrip('/').rsplit('/', 1)[1])

        def delivered():
            driver.refresh()
            return driver.find_element(By.ID, 'delivery-state').text == 'Delivered'
        check('browser: the replayed delivery is delivered, seen on its page', _try(
            lambda: wait_for('the replay to be delivered', delivered, timeout=60, interval=1, processes=processes)),
            driver.find_element(By.TAG_NAME, 'body').text[:2000])
        got = [r for r in receiver.received if not r['failing']]
        # a replay keeps the id the receiver saw (V11), so it can tell the copy from a new event
        first = [r for r in receiver.received if r['failing']]
        check("browser: the receiver got the replay, with the original's delivery id",
              len(got) == 1 and first
              and got[0]['headers'].get('x-netbox-outbox-delivery') == first[0]['headers'].get('x-netbox-outbox-delivery')
              == str(dead)
              and json.loads(got[0]['body']).get('data', {}).get('name') == 'edge-router-1',
              [(r['path'], r['failing'], r['headers'].get('x-netbox-outbox-delivery')) for r in receiver.received])
        driver.save_screenshot(str(screenshots / 'delivery-replayed.png'))
        check('browser: the copy is the replay of the dead delivery, and the original is replayed',
              query('select replay_of from netbox_outbox.delivery where id = %s', [copy]) == [(dead,)]
              and query('select state from netbox_outbox.delivery where id = %s', [dead]) == [('replayed',)],
              query('select id, state, replay_of from netbox_outbox.delivery order by id'))

        driver.get(f'{base}/extras/webhooks/{webhook_id}/')
        panel = driver.find_element(By.ID, 'webhook-health')
        check("browser: the Webhook page has the health panel and its chart",
              'Failure streak' in panel.text and panel.find_elements(By.CSS_SELECTOR, 'svg rect'), panel.text)
        driver.execute_script('arguments[0].scrollIntoView()', panel)
        driver.save_screenshot(str(screenshots / 'webhook-health.png'))
        driver.find_element(By.ID, 'pause-webhook').click()
        wait_for('the pause', lambda: driver.find_elements(By.ID, 'resume-webhook'))
        check('browser: pausing shows "until resumed", and the database has the pause',
              'until resumed' in driver.find_element(By.ID, 'health-paused').text and query(
                  'select paused_by_operator from netbox_outbox.webhook_state where webhook_id = %s',
                  [webhook_id]) == [(True,)], driver.find_element(By.ID, 'health-paused').text)
        driver.find_element(By.ID, 'resume-webhook').click()
        wait_for('the resume', lambda: driver.find_elements(By.ID, 'pause-webhook'))
        check('browser: resuming clears the pause', driver.find_element(By.ID, 'health-paused').text.strip() == 'no'
              and query('select paused_until is null from netbox_outbox.webhook_state where webhook_id = %s',
                        [webhook_id]) == [(True,)], driver.find_element(By.ID, 'health-paused').text)

        driver.get(f'{base}/plugins/netbox-outbox/deliveries/')
        dead_now = query("select count(*) from netbox_outbox.delivery where state = 'dead'")[0][0]
        check('browser: the Deliveries list is in the navigation and counts the dead',
              driver.find_elements(By.PARTIAL_LINK_TEXT, 'Webhook deliveries')
              and driver.find_element(By.ID, 'dead-count').text == str(dead_now),
              (dead_now, driver.find_element(By.TAG_NAME, 'body').text[:2000]))
        driver.save_screenshot(str(screenshots / 'deliveries.png'))
    finally:
        if driver:
            driver.quit()
        for p in reversed(processes):
            p.stop()
        receiver.stop()


def _answers(url):
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _try(fn):
    try:
        return fn() or True
    except env.SetupError as error:
        env.log(str(error))
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--binary', help='use this netbox-outbox binary instead of cargo build --release')
    parser.add_argument('--cache', required=True, help='the cache directory (set by run)')
    parser.add_argument('--started', type=float, default=time.time(), help='when run started (set by run)')
    parser.add_argument('--keep', action='store_true', help='keep the database')
    parser.add_argument('--no-browser', action='store_true', help='only the test-client checks')
    parser.add_argument('--screenshots', default=str(REPO / 'plugin' / 'docs'), help='where screenshots go')
    args = parser.parse_args()
    workdir = HERE / 'out' / 'ui'
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    screenshots = Path(args.screenshots)
    screenshots.mkdir(parents=True, exist_ok=True)
    check = Checks()
    try:
        env.ensure_postgres()
        env.ensure_redis()
        binary = Path(args.binary) if args.binary else env.cargo_build(REPO, workdir / 'cargo.log')
        netbox = env.NetBox(sys.prefix)
        env.ensure_template(netbox, args.cache)
        root = prepare(netbox, binary, workdir)
        views_and_permissions(netbox, root, check, workdir)
        if not args.no_browser:
            # a fresh database: the browser's story starts from nothing
            root = prepare(netbox, binary, workdir)
            browser(netbox, root, binary, check, workdir, screenshots)
    except (env.SetupError, psycopg.Error, OSError) as error:
        env.log(f'set-up failed: {error}')
        print(f'ui: {len(check.passed)} passed, {len(check.failed) + 1} failed')
        return 2
    finally:
        if not args.keep:
            env.drop_database(DBNAME)
            drop_role()
    print(f'ui: {len(check.passed)} passed, {len(check.failed)} failed')
    return 1 if check.failed else 0


if __name__ == '__main__':
    sys.exit(main())
