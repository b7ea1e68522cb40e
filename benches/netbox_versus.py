"""netbox-outbox against NetBox's own webhook pipeline, side by side, in one run (issue 6, item 6).

Run it with `benches/netbox-versus`, which finds the conformance suite's virtualenv (NetBox 4.7.3)
and then runs this file with it.

One NetBox 4.7.3 (gunicorn with 3 sync workers, `netbox rqworker high default low`) and one
netbox-outbox sidecar (`run`, with `[rules] deliver_netbox_webhook_rules = true`) share one database,
a clone of the conformance suite's template. One Webhook and one EventRule (`webhook` action,
dcim.device, `object_updated`) are created through the REST API, so that both NetBox's RQ worker and
the sidecar deliver the same rule to the same local receiver; the receiver tells the sides apart by
the `X-Netbox-Outbox-Delivery` header that only netbox-outbox sends (as the conformance suite does).

Then 50 devices are created, and `description` is PATCHed N times (default 300), round robin over
them, through the REST API: sequentially, or from K concurrent clients (--clients). Each PATCH sets
a distinct description, so every webhook names the PATCH that caused it. After the PATCHes, the
bench waits (up to --deadline seconds) until both sides have delivered all N.

Per side it prints: webhooks delivered (missing, duplicated), webhooks/s from the first PATCH to
that side's last webhook, and end-to-end latency p50/p95/p99/max, where e2e = the receiver's arrival
time - the moment the PATCH's HTTP response was back at the client. Both instants are read from one
monotonic clock in this process (the receiver is a thread here), and both sides are measured from
the same instant, so the comparison is fair whatever NetBox's request itself cost. netbox-outbox's
e2e is usually negative: the sidecar hears of the change at NetBox's commit, while NetBox serialises
and enqueues its own webhook after the commit, inside the request, before it answers. So the bench
also prints latency from the moment the PATCH was sent (positive for both sides). Then the ratios
netbox-outbox / NetBox of webhooks/s and of p50 latency (the e2e ratio only when both p50s are
positive, else the difference in ms), the API's own figures, the CPU each
component used per PATCH, the core count and the load average. The figures also go to
benches/out/netbox-versus.json, the logs to benches/out/netbox-versus/.

Then, on the same instance, a second phase that always runs (skip it with --rounds 0) measures
what the capture costs NetBox's write path (issue 6): PATCHes of `description`, round robin over
the 50 devices, in blocks with the capture on (the triggers `netbox-outbox migrate` installs) and
blocks with it off. A round is one block of each (--round-patches, default 40 PATCHes), the order
alternating (on-off, off-on, ...) so that slow drift in background load cancels out; --rounds
(default 6) rounds, so 240 PATCHes per condition, first from 1 client, then from 4 concurrent
ones (--write-cost-clients). Off = netbox_outbox.unwatch_all(), which calls netbox_outbox.unwatch()
for every watched table (it drops its netbox_outbox_capture trigger and records watched = false,
so the sidecar's periodic netbox_outbox.sync() leaves it off), plus ALTER TABLE ... DISABLE TRIGGER
of the two triggers unwatch() does not cover (netbox_outbox_capture_tag on extras_taggeditem,
netbox_outbox_capture_changelog on core_objectchange; disabled rather than dropped because sync()
would re-create a missing one within a minute). On = netbox_outbox.watch_all() and ENABLE TRIGGER.
After each toggle, --block-warmup (default 6) unmeasured PATCHes from as many clients as gunicorn has
workers (their times are reported apart: the first requests after a toggle can be slow, a cost the
bench's toggling adds and a deployment pays once). Before and after every block, pg_trigger is checked (every trigger there, or none, enabled) and the
capture sequence is read (rows captured per PATCH: 0 when off). NetBox's rule, its RQ worker and the
sidecar run in both conditions; the sidecar is idle when nothing is captured. Between blocks the
bench waits until NetBox's queues and the sidecar are idle, and the CPU of each block is read after
that wait, so it includes the work each PATCH caused later (webhook jobs, the sidecar's delivery).
Per condition: PATCH latency p50/p95/p99, PATCHes/s (PATCHes / the sum of the blocks' durations),
CPU ms per PATCH of each component, PostgreSQL included (the whole cluster: the postmaster and
all its children, so another database's load on the same cluster would count too), and the
ratios with/without of throughput and without/with of p50 latency.

It uses its own database (nbo_versus) and its own Redis databases (10 and 11), so it never collides
with a conformance run (nbo_conformance_*, Redis 12 and 13). A benchmark, not a test: it exits 0
even when a side misses webhooks (they are reported), 2 when the set-up fails.
"""

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / 'tests' / 'conformance'))

import requests  # noqa: E402  (NetBox's virtualenv has it)

import environment as env  # noqa: E402
from netbox_api import Api, ApiError  # noqa: E402
from receiver import Receiver  # noqa: E402  (the conformance suite's, one receiver for both)

DBNAME = 'nbo_versus'
# Our own Redis databases: the conformance suite uses 12 and 13. write_instance() reads these
# module globals when it writes configuration.py, so setting them here is enough.
env.REDIS_TASKS_DB = 10
env.REDIS_CACHING_DB = 11

OUT = HERE / 'out'
DEVICES = 50

STARTED = time.monotonic()


def log(message):
    print(f'[versus {time.monotonic() - STARTED:7.1f}s] {message}', file=sys.stderr, flush=True)


# environment.py's helpers log through env.log; make them speak as this bench.
env.log = log

SIDECAR_CONFIG = """# Written by benches/netbox-versus. Defaults everywhere (as deployed), except:
database_url = "{url}"

[rules]
# deliver NetBox's own `webhook` rules too, so that both sides deliver the same rule
deliver_netbox_webhook_rules = true

[metrics]
# no fixed port to collide with
listen = ""
"""


# ------------------------------------------------------------------------------------------------
# The receiver
# ------------------------------------------------------------------------------------------------

def arrival(r):
    """What the figures need of one received request (a tests/conformance/receiver.py Received):
    when it arrived, which side sent it, and what in the body names the PATCH (data.description)
    and NetBox's request id."""
    payload = r.json()
    if not isinstance(payload, dict):
        payload = {}
    data = payload.get('data') if isinstance(payload.get('data'), dict) else {}
    request = payload.get('request') if isinstance(payload.get('request'), dict) else {}
    return {'mono': r.mono, 'wall': r.at, 'side': r.side, 'event': payload.get('event'),
            'description': data.get('description'), 'request_id': request.get('id')}


def arrivals_of(receiver):
    return [arrival(r) for r in receiver.snapshot() if r.method == 'POST']


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------

def percentile(values, p):
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def proc_stats():
    """(pid, the fields of /proc/<pid>/stat after the command name) of every process."""
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f'/proc/{entry}/stat').read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after the last ')'
        yield int(entry), stat[stat.rindex(')') + 2:].split()


def process_ticks(fields):
    return sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime


def cpu_ticks_of_group(pgid):
    """CPU time (in clock ticks) of every process in a process group, including the children they
    have reaped: NetBox's RQ worker forks a child per job, and a reaped child's time moves to its
    parent's cutime/cstime, so nothing is counted twice."""
    # fields[2] is pgrp (the 5th field of stat)
    return sum(process_ticks(fields) for _, fields in proc_stats() if int(fields[2]) == pgid)


def machine_ticks():
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path('/proc/stat').read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def pg_cluster_ticks(postmaster):
    """CPU time (clock ticks) of a PostgreSQL cluster: the postmaster and every process it forked
    (backends, background workers, autovacuum). PostgreSQL's children each lead a process group of
    their own, so cpu_ticks_of_group() cannot find them; a backend that exited moved its time to the
    postmaster's cutime/cstime when reaped, so nothing is lost or counted twice."""
    # fields[1] is ppid
    return sum(process_ticks(fields) for pid, fields in proc_stats()
               if pid == postmaster or int(fields[1]) == postmaster)


def postmaster_pid(dbname):
    """The pid of the postmaster serving dbname: the parent of a backend of ours."""
    with env.pg_connect(dbname) as conn:
        backend = conn.execute('select pg_backend_pid()').fetchone()[0]
    stat = Path(f'/proc/{backend}/stat').read_text()
    return int(stat[stat.rindex(')') + 2:].split()[1])


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def wait_idle(dbname, rq_redis, processes, timeout):
    """Until NetBox's RQ queues are empty and the sidecar has nothing unread or pending."""
    from rq import Queue
    from rq.registry import StartedJobRegistry
    deadline = time.monotonic() + timeout
    while True:
        for p in processes:
            p.check()
        busy = sum(Queue(q, connection=rq_redis).count + StartedJobRegistry(q, connection=rq_redis).count
                   for q in ('high', 'default', 'low'))
        with env.pg_connect(dbname) as conn:
            unread = conn.execute('select count(*) from netbox_outbox.unread_change').fetchone()[0]
            pending = conn.execute("select count(*) from netbox_outbox.delivery where state = 'pending'").fetchone()[0]
        if busy == 0 and unread == 0 and pending == 0:
            return
        if time.monotonic() > deadline:
            raise env.SetupError(f'not idle after {timeout}s (NetBox jobs: {busy}, unread changes: {unread}, '
                                 f'pending deliveries: {pending})')
        time.sleep(0.5)


def patch_all(base_url, device_ids, labels, clients):
    """PATCHes device i % 50 with description labels[i], for every i, from `clients` threads
    (client k takes i = k, k + clients, ...). Returns, per label: when its request started and when
    its response was back (monotonic), the response time, the status and NetBox's request id."""
    results = {}
    lock = threading.Lock()
    errors = []

    def client(k):
        session = requests.Session()
        session.headers.update({'Authorization': f'Token {env.API_TOKEN}', 'Accept': 'application/json'})
        try:
            for i in range(k, len(labels), clients):
                url = f'{base_url}/api/dcim/devices/{device_ids[i % len(device_ids)]}/'
                started = time.monotonic()
                response = session.patch(url, json={'description': labels[i]}, timeout=300)
                # requests has read the whole body here: this is "the response returned to the client"
                done_mono, done_wall = time.monotonic(), time.time()
                with lock:
                    results[labels[i]] = {'start': started, 'done': done_mono, 'done_wall': done_wall,
                                          'status': response.status_code,
                                          'request_id': response.headers.get('X-Request-ID')}
                if response.status_code != 200:
                    errors.append(f'PATCH {url} answered {response.status_code}: {response.text[:300]}')
        except requests.RequestException as e:
            errors.append(f'client {k}: {e}')
        finally:
            session.close()

    threads = [threading.Thread(target=client, args=(k,), name=f'client-{k}') for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def wait_both(receiver, labels, deadline_s, processes):
    """Until both sides delivered a webhook for every label, or the deadline passes."""
    wanted = set(labels)
    deadline = time.monotonic() + deadline_s
    while True:
        got = {'netbox': set(), 'outbox': set()}
        for a in arrivals_of(receiver):
            if a['description'] in wanted:
                got[a['side']].add(a['description'])
        if all(len(s) == len(wanted) for s in got.values()):
            return True
        if time.monotonic() > deadline:
            return False
        for p in processes:
            if not p.alive():
                log(f'warning: {p.name} exited with {p.popen.returncode} (log: {p.log_path})')
        time.sleep(0.2)


def side_figures(side, arrivals, patches, first_start):
    """The figures of one side, for the measured PATCHes only (warm-up and other webhooks ignored)."""
    mine = [a for a in arrivals if a['side'] == side and a['description'] in patches]
    seen, latencies, from_request, duplicates, id_mismatch = set(), [], [], 0, 0
    for a in mine:
        if a['description'] in seen:
            duplicates += 1  # at-least-once: a second copy is counted, not measured again
            continue
        seen.add(a['description'])
        p = patches[a['description']]
        latencies.append(a['mono'] - p['done'])
        from_request.append(a['mono'] - p['start'])
        if a['request_id'] and p['request_id'] and a['request_id'] != p['request_id']:
            id_mismatch += 1
    delivered = len(seen)
    last = max((a['mono'] for a in mine), default=None)
    span = (last - first_start) if last is not None else None
    return {
        'delivered': delivered,
        'missing': len(patches) - delivered,
        'duplicates': duplicates,
        'request_id_mismatches': id_mismatch,
        'first_patch_to_last_webhook_s': None if span is None else round(span, 3),
        'webhooks_per_s': round(delivered / span, 3) if span else None,
        # arrival - PATCH response back at the client. Negative when the webhook arrives before
        # the response: the sidecar starts at NetBox's commit, while NetBox itself enqueues its
        # webhook job after the commit, in the same request, before it answers.
        'e2e_ms': summary(latencies),
        'before_response': sum(1 for x in latencies if x < 0),
        # arrival - PATCH request sent: never negative, so its ratio means something either way
        'from_request_ms': summary(from_request),
    }


def summary(values):
    return {'p50': ms(percentile(values, 50)), 'p95': ms(percentile(values, 95)),
            'p99': ms(percentile(values, 99)), 'max': ms(max(values, default=None)),
            'min': ms(min(values, default=None))}


def ratio(a, b):
    """a / b, or None when either is missing or not positive (a ratio of negative latencies
    says nothing)."""
    return round(a / b, 4) if a is not None and b is not None and a > 0 and b > 0 else None


def run(args, netbox, binary, workdir):
    for db in (env.REDIS_TASKS_DB, env.REDIS_CACHING_DB):
        env.redis_client(db).flushdb()
    clone_template()
    root = netbox.write_instance(workdir / 'instance', DBNAME)
    env.run([str(binary), 'migrate', '--database-url', env.database_url(DBNAME)], log_path=workdir / 'migrate.log')
    log('netbox-outbox migrate done; creating the API user (nbshell)')
    netbox.shell(root, '\n'.join([
        'from users.models import Token, User',
        f"u = User.objects.create_superuser({env.API_USER!r}, 'versus@example.com', 'not-a-password')",
        f"Token(user=u, version=1, token={env.API_TOKEN!r}, write_enabled=True).save()",
    ]), log_path=workdir / 'nbshell.log')

    receiver = Receiver().start()
    port = env.free_port()
    base_url = f'http://127.0.0.1:{port}'
    processes = []
    api = None
    try:
        nb_env = netbox.env(root)
        processes.append(env.Process(
            'gunicorn', [str(netbox.gunicorn), '--bind', f'127.0.0.1:{port}', '--workers', str(args.gunicorn_workers),
                         '--timeout', '300', 'netbox.wsgi'], workdir / 'gunicorn.log', env=nb_env, cwd=workdir))
        for n in range(args.rq_workers):
            processes.append(env.Process(
                f'rqworker-{n + 1}', [str(netbox.command), 'rqworker', 'high', 'default', 'low'],
                workdir / f'rqworker-{n + 1}.log', env=nb_env, cwd=workdir))
        config = workdir / 'netbox-outbox.toml'
        config.write_text(SIDECAR_CONFIG.format(url=env.database_url(DBNAME)))
        # only the configuration file speaks: no NETBOX_OUTBOX_* or DATABASE_URL from the caller
        sidecar_env = {k: v for k, v in os.environ.items() if not k.startswith('NETBOX_OUTBOX_') and k != 'DATABASE_URL'}
        processes.append(env.Process('sidecar', [str(binary), 'run', '--config', str(config)],
                                     workdir / 'sidecar.log', env=sidecar_env, cwd=workdir))

        api = Api(base_url, env.API_TOKEN, workdir / 'steps.jsonl')
        status = api.wait_ready([p.check for p in processes])
        log(f"NetBox {status.get('netbox-version')} up on port {port}")

        # one webhook, one rule: NetBox's RQ worker and the sidecar both deliver it
        hook = api.post('webhook', '/api/extras/webhooks/', {
            'name': 'versus', 'payload_url': receiver.url('/hook/versus'), 'http_method': 'POST',
            'http_content_type': 'application/json'})
        api.post('event rule', '/api/extras/event-rules/', {
            'name': 'versus', 'object_types': ['dcim.device'], 'event_types': ['object_updated'], 'enabled': True,
            'action_type': 'webhook', 'action_object_type': 'extras.webhook', 'action_object_id': hook['id']})

        site = api.post('site', '/api/dcim/sites/', {'name': 'Versus', 'slug': 'versus', 'status': 'active'})
        maker = api.post('manufacturer', '/api/dcim/manufacturers/', {'name': 'Versus', 'slug': 'versus'})
        dtype = api.post('device type', '/api/dcim/device-types/',
                         {'manufacturer': maker['id'], 'model': 'Versus 1', 'slug': 'versus-1', 'u_height': 1})
        role = api.post('role', '/api/dcim/device-roles/', {'name': 'Versus', 'slug': 'versus', 'color': '00ff00'})
        devices = api.post('devices', '/api/dcim/devices/', [
            {'name': f'versus-{n:02}', 'device_type': dtype['id'], 'role': role['id'], 'site': site['id'],
             'status': 'active'} for n in range(1, DEVICES + 1)])
        device_ids = [d['id'] for d in devices]
        log(f'created {len(device_ids)} devices; waiting until NetBox\'s worker and the sidecar are idle')
        rq_redis = env.redis_client(env.REDIS_TASKS_DB)
        wait_idle(DBNAME, rq_redis, processes, timeout=300)

        # Warm-up: a few PATCHes delivered by both sides before the clock starts, so that neither
        # side's first-request costs (NetBox's worker loads its URLconf on its first job; the
        # sidecar opens its connections) land in the figures.
        tag = f'{int(time.time())}'
        if args.warmup:
            warm = [f'nbo-versus {tag} warm-up {i}' for i in range(args.warmup)]
            _, errors = patch_all(base_url, device_ids, warm, 1)
            if errors:
                raise env.SetupError('warm-up: ' + '; '.join(errors[:3]))
            if not wait_both(receiver, warm, 120, processes):
                raise env.SetupError('warm-up: the warm-up webhooks did not arrive from both sides within 120s')
            wait_idle(DBNAME, rq_redis, processes, timeout=120)
            log(f'warm-up: {args.warmup} PATCHes delivered by both sides')

        labels = [f'nbo-versus {tag} #{i}' for i in range(args.patches)]
        tracked = {p.name: p.pid for p in processes}
        postmaster = postmaster_pid(DBNAME)
        cpu_before = {name: cpu_ticks_of_group(pid) for name, pid in tracked.items()}
        cpu_before['postgres'] = pg_cluster_ticks(postmaster)
        machine_before = machine_ticks()
        load_before = loadavg()
        log(f'{args.patches} PATCHes of description, round robin over {DEVICES} devices, '
            f'{args.clients} client(s)')
        patches, errors = patch_all(base_url, device_ids, labels, args.clients)
        if errors:
            raise env.SetupError(f'{len(errors)} PATCH(es) failed: ' + '; '.join(errors[:3]))
        last_done = max(p['done'] for p in patches.values())
        log(f'PATCHes done; waiting up to {args.deadline}s for both sides to deliver all {args.patches}')
        complete = wait_both(receiver, labels, args.deadline, processes)
        machine_after = machine_ticks()
        cpu_after = {name: cpu_ticks_of_group(pid) for name, pid in tracked.items()}
        cpu_after['postgres'] = pg_cluster_ticks(postmaster)
        load_after = loadavg()
        if not complete:
            log('deadline passed: reporting what arrived')
        arrivals = arrivals_of(receiver)

        wc = None
        if args.rounds:
            wait_idle(DBNAME, rq_redis, processes, timeout=max(300, args.deadline))
            log(f'write cost: {args.rounds} rounds of {args.round_patches} PATCHes with the capture on and off, '
                f'clients {args.write_cost_clients}')
            wc = write_cost(args, base_url, device_ids, tag, processes, rq_redis, postmaster)
    finally:
        for p in reversed(processes):
            p.stop()
        receiver.stop()
        if api:
            api.close()

    first_start = min(p['start'] for p in patches.values())
    api_times = [p['done'] - p['start'] for p in patches.values()]
    hz = os.sysconf('SC_CLK_TCK')
    busy = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    figures = {
        'netbox': side_figures('netbox', arrivals, patches, first_start),
        'outbox': side_figures('outbox', arrivals, patches, first_start),
    }
    return {
        'what': 'the same stream of REST PATCHes of dcim.device description, one webhook rule delivered by '
                "NetBox's RQ worker and by netbox-outbox; e2e = receiver arrival - PATCH response at the client",
        'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'netbox_version': env.NETBOX_VERSION,
        'settings': {'patches': args.patches, 'devices': DEVICES, 'clients': args.clients, 'warmup': args.warmup,
                     'gunicorn_workers': args.gunicorn_workers, 'rq_workers': args.rq_workers,
                     'deadline_s': args.deadline, 'binary': str(binary), 'rounds': args.rounds,
                     'round_patches': args.round_patches, 'write_cost_clients': args.write_cost_clients,
                     'block_warmup': args.block_warmup},
        'complete': complete,
        'api': {
            'patch_ms': {'p50': ms(percentile(api_times, 50)), 'p95': ms(percentile(api_times, 95)),
                         'p99': ms(percentile(api_times, 99)), 'max': ms(max(api_times))},
            'patches_per_s': round(len(patches) / (last_done - first_start), 3),
            'duration_s': round(last_done - first_start, 3),
        },
        'sides': figures,
        'ratio_outbox_to_netbox': {
            'webhooks_per_s': ratio(figures['outbox']['webhooks_per_s'], figures['netbox']['webhooks_per_s']),
            'e2e_p50': ratio(figures['outbox']['e2e_ms']['p50'], figures['netbox']['e2e_ms']['p50']),
            'from_request_p50': ratio(figures['outbox']['from_request_ms']['p50'],
                                      figures['netbox']['from_request_ms']['p50']),
            # the brief's figure when the e2e ratio cannot be taken: how much earlier, in ms
            'e2e_p50_difference_ms': None if None in (figures['outbox']['e2e_ms']['p50'],
                                                      figures['netbox']['e2e_ms']['p50'])
            else round(figures['outbox']['e2e_ms']['p50'] - figures['netbox']['e2e_ms']['p50'], 1),
        },
        # CPU seconds per PATCH of each process group we started (the sidecar's includes nothing of
        # PostgreSQL's; neither does NetBox's); busy = all CPUs of the machine, whoever used them
        # postgres: the whole cluster (the postmaster and all its children), not only our database
        'cpu_ms_per_patch': {name: round((cpu_after[name] - cpu_before[name]) / hz * 1000 / len(patches), 2)
                             for name in cpu_before},
        'machine': {'cores': os.cpu_count(), 'loadavg_before': load_before, 'loadavg_after': load_after,
                    'busy_percent': round(100 * busy / total, 1) if total else None},
        'other_webhooks': sum(1 for a in arrivals if a['description'] not in patches),
        'write_cost': wc,
    }


# ------------------------------------------------------------------------------------------------
# The write-path cost of the capture: blocks of PATCHes with the capture's triggers on and off
# ------------------------------------------------------------------------------------------------

AUX_TRIGGERS = (('public.extras_taggeditem', 'netbox_outbox_capture_tag'),
                ('public.core_objectchange', 'netbox_outbox_capture_changelog'))


def trigger_state(dbname):
    """What pg_trigger says of the capture: enabled and disabled netbox_outbox_capture triggers,
    whether dcim_device has an enabled one, and how many of the two other triggers are enabled;
    plus the capture sequence's last value (every captured row draws one)."""
    with env.pg_connect(dbname) as conn:
        row = conn.execute("""
            select count(*) filter (where t.tgname = 'netbox_outbox_capture' and t.tgenabled <> 'D'),
                   count(*) filter (where t.tgname = 'netbox_outbox_capture' and t.tgenabled = 'D'),
                   coalesce(bool_or(t.tgname = 'netbox_outbox_capture' and t.tgenabled <> 'D'
                                    and t.tgrelid = 'public.dcim_device'::regclass), false),
                   count(*) filter (where t.tgname in ('netbox_outbox_capture_tag', 'netbox_outbox_capture_changelog')
                                      and t.tgenabled <> 'D'),
                   (select count(*) from netbox_outbox.watch where watched),
                   (select last_value from netbox_outbox.change_id_seq)
            from pg_trigger t where t.tgname like 'netbox\\_outbox\\_%'""").fetchone()
    return {'model_triggers': row[0], 'model_triggers_disabled': row[1], 'dcim_device': row[2],
            'aux_triggers': row[3], 'watched_tables': row[4], 'sequence': row[5]}


def set_capture(dbname, on):
    """Capture on: netbox_outbox.watch_all() and the two other triggers enabled. Off:
    netbox_outbox.unwatch_all() (unwatch() of every watched table) and the two disabled. One
    transaction. Returns how many tables watch_all()/unwatch_all() named."""
    with env.pg_connect(dbname, autocommit=False) as conn:
        conn.execute("set local lock_timeout = '60s'")
        fn = 'watch_all' if on else 'unwatch_all'
        tables = conn.execute(f'select count(*) from netbox_outbox.{fn}()').fetchone()[0]
        for table, trigger in AUX_TRIGGERS:
            conn.execute(f"alter table {table} {'enable' if on else 'disable'} trigger {trigger}")
        conn.commit()
    return tables


def check_state(state, on, baseline, when):
    if on:
        good = (state['model_triggers'] == baseline['model_triggers'] and state['model_triggers_disabled'] == 0
                and state['dcim_device'] and state['aux_triggers'] == len(AUX_TRIGGERS))
    else:
        good = (state['model_triggers'] == 0 and state['model_triggers_disabled'] == 0
                and not state['dcim_device'] and state['aux_triggers'] == 0)
    if not good:
        raise env.SetupError(f"capture {'on' if on else 'off'} {when}: pg_trigger disagrees: {state} "
                             f'(after migrate: {baseline})')


def write_cost(args, base_url, device_ids, tag, processes, rq_redis, postmaster):
    """The rounds of --rounds, for each client count of --write-cost-clients."""
    baseline = trigger_state(DBNAME)
    log(f"write cost: after migrate, {baseline['model_triggers']} netbox_outbox_capture triggers, "
        f"{baseline['aux_triggers']} others, {baseline['watched_tables']} watched tables")
    if not baseline['dcim_device'] or baseline['aux_triggers'] != len(AUX_TRIGGERS):
        raise env.SetupError(f'write cost: the capture is not fully installed after migrate: {baseline}')
    tracked = {p.name: p.pid for p in processes}
    hz = os.sysconf('SC_CLK_TCK')
    offset = 0
    results = []
    for clients in args.write_cost_clients:
        blocks = []
        for r in range(args.rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                cond = 'on' if on else 'off'
                named = set_capture(DBNAME, on)
                # Unmeasured PATCHes after the toggle, from as many clients as gunicorn has workers
                # (so that each worker likely serves one): the first requests after the triggers
                # are re-created can be slow, a cost of toggling that a deployment pays once.
                warm = [f'nbo-versus {tag} wc k{clients} r{r} {cond} warm-up {i}' for i in range(args.block_warmup)]
                warm_times = []
                if warm:
                    ids = device_ids[offset % len(device_ids):] + device_ids[:offset % len(device_ids)]
                    offset += len(warm)
                    done, errors = patch_all(base_url, ids, warm, min(args.gunicorn_workers, len(warm)))
                    if errors:
                        raise env.SetupError(f'write cost warm-up: {len(errors)} PATCH(es) failed: ' + '; '.join(errors[:3]))
                    warm_times = [round(done[w]['done'] - done[w]['start'], 5) for w in warm]
                wait_idle(DBNAME, rq_redis, processes, timeout=300)
                before = trigger_state(DBNAME)
                check_state(before, on, baseline, 'before the block')
                labels = [f'nbo-versus {tag} wc k{clients} r{r} {cond} #{i}' for i in range(args.round_patches)]
                ids = device_ids[offset % len(device_ids):] + device_ids[:offset % len(device_ids)]
                offset += len(labels)
                cpu0 = {name: cpu_ticks_of_group(pid) for name, pid in tracked.items()}
                cpu0['postgres'] = pg_cluster_ticks(postmaster)
                m0 = machine_ticks()
                patches, errors = patch_all(base_url, ids, labels, clients)
                if errors:
                    raise env.SetupError(f'write cost: {len(errors)} PATCH(es) failed: ' + '; '.join(errors[:3]))
                wait_idle(DBNAME, rq_redis, processes, timeout=300)
                cpu1 = {name: cpu_ticks_of_group(pid) for name, pid in tracked.items()}
                cpu1['postgres'] = pg_cluster_ticks(postmaster)
                m1 = machine_ticks()
                after = trigger_state(DBNAME)
                check_state(after, on, baseline, 'after the block')
                first = min(p['start'] for p in patches.values())
                last = max(p['done'] for p in patches.values())
                block = {
                    'clients': clients, 'round': r, 'capture': cond, 'tables_toggled': named,
                    'warmup_patch_s': warm_times,
                    'patch_s': [round(p['done'] - p['start'], 5) for p in patches.values()],
                    'duration_s': round(last - first, 4),
                    'patches_per_s': round(len(patches) / (last - first), 3),
                    'cpu_ms': {name: round((cpu1[name] - cpu0[name]) / hz * 1000, 1) for name in cpu0},
                    'busy_percent': round(100 * (m1[0] - m0[0]) / (m1[1] - m0[1]), 1) if m1[1] > m0[1] else None,
                    'captured_rows': after['sequence'] - before['sequence'],
                    'pg_trigger': {k: v for k, v in after.items() if k != 'sequence'},
                }
                blocks.append(block)
                log(f"write cost k={clients} round {r + 1}/{args.rounds} capture {cond}: "
                    f"p50 {ms(percentile(block['patch_s'], 50))} ms, {block['patches_per_s']:.2f} PATCHes/s, "
                    f"warm-up ms {[round(t * 1000) for t in warm_times]}, "
                    f"{block['captured_rows'] / len(patches):.1f} captured rows per PATCH, "
                    f"{after['model_triggers']}+{after['aux_triggers']} triggers")
        results.append(write_cost_figures(clients, blocks))
    set_capture(DBNAME, True)
    check_state(trigger_state(DBNAME), True, baseline, 'after the phase')
    return {'rounds': args.rounds, 'round_patches': args.round_patches,
            'triggers_after_migrate': {k: v for k, v in baseline.items() if k != 'sequence'},
            'by_clients': results}


def write_cost_figures(clients, blocks):
    conditions = {}
    for cond in ('on', 'off'):
        mine = [b for b in blocks if b['capture'] == cond]
        times = [t for b in mine for t in b['patch_s']]
        n = len(times)
        duration = sum(b['duration_s'] for b in mine)
        conditions[cond] = {
            'patches': n,
            'patch_ms': summary(times),
            'mean_ms': ms(sum(times) / n) if n else None,
            'patches_per_s': round(n / duration, 3) if duration else None,
            'cpu_ms_per_patch': {name: round(sum(b['cpu_ms'][name] for b in mine) / n, 2)
                                 for name in (mine[0]['cpu_ms'] if mine else {})},
            'captured_rows_per_patch': round(sum(b['captured_rows'] for b in mine) / n, 2) if n else None,
            'busy_percent': round(sum(b['busy_percent'] or 0 for b in mine) / len(mine), 1) if mine else None,
            # the unmeasured PATCHes right after each toggle
            'warmup_patch_ms': summary([t for b in mine for t in b['warmup_patch_s']]),
        }
    on, off = conditions['on'], conditions['off']
    # one pair per round (its on block and its off block, adjacent in time): their spread says how
    # much of a difference the noise alone makes
    paired = []
    for r in sorted({b['round'] for b in blocks}):
        pair = {b['capture']: b for b in blocks if b['round'] == r}
        if set(pair) == {'on', 'off'}:
            paired.append({
                'throughput': ratio(pair['on']['patches_per_s'], pair['off']['patches_per_s']),
                'latency_p50': ratio(percentile(pair['off']['patch_s'], 50), percentile(pair['on']['patch_s'], 50)),
            })
    ratios = {
        'throughput_with_over_without': ratio(on['patches_per_s'], off['patches_per_s']),
        'latency_p50_without_over_with': ratio(off['patch_ms']['p50'], on['patch_ms']['p50']),
        'latency_p95_without_over_with': ratio(off['patch_ms']['p95'], on['patch_ms']['p95']),
        'latency_p99_without_over_with': ratio(off['patch_ms']['p99'], on['patch_ms']['p99']),
        'latency_mean_without_over_with': ratio(off['mean_ms'], on['mean_ms']),
        'per_round_throughput': [p['throughput'] for p in paired],
        'per_round_latency_p50': [p['latency_p50'] for p in paired],
    }
    extra = {name: round(on['cpu_ms_per_patch'][name] - off['cpu_ms_per_patch'][name], 2)
             for name in on['cpu_ms_per_patch'] if name in off['cpu_ms_per_patch']}
    return {'clients': clients, 'conditions': conditions, 'ratios': ratios,
            'extra_cpu_ms_per_patch_with_capture': extra,
            'extra_patch_ms_p50_with_capture': None if None in (on['patch_ms']['p50'], off['patch_ms']['p50'])
            else round(on['patch_ms']['p50'] - off['patch_ms']['p50'], 1),
            'blocks': blocks}


def write_cost_report(wc):
    def fmt(v, spec='.1f'):
        return '-' if v is None else format(v, spec)

    def times(v):
        return 'n/a' if v is None else f'x{v:.3f}'

    lines = ['', f"Write-path cost of the capture: {wc['rounds']} rounds, each a block of {wc['round_patches']} "
             f"PATCHes with the capture on and one with it off (order alternating); "
             f"{wc['triggers_after_migrate']['model_triggers']} + {wc['triggers_after_migrate']['aux_triggers']} "
             'triggers when on, none when off (checked in pg_trigger before and after every block)']
    for res in wc['by_clients']:
        names = list(res['conditions']['on']['cpu_ms_per_patch'])
        lines.append('')
        lines.append(f"{res['clients']} client(s):")
        lines.append(f"  {'capture':<8} {'PATCHes':>7} {'p50 ms':>8} {'p95':>8} {'p99':>8} {'mean':>8} "
                     f"{'PATCHes/s':>9} {'rows/PATCH':>10} {'busy%':>6}   CPU ms per PATCH: " + ', '.join(names))
        for cond in ('on', 'off'):
            c = res['conditions'][cond]
            p = c['patch_ms']
            cpu = ', '.join(fmt(c['cpu_ms_per_patch'][n]) for n in names)
            lines.append(f"  {cond:<8} {c['patches']:>7} {fmt(p['p50']):>8} {fmt(p['p95']):>8} {fmt(p['p99']):>8} "
                         f"{fmt(c['mean_ms']):>8} {fmt(c['patches_per_s'], '.2f'):>9} "
                         f"{fmt(c['captured_rows_per_patch'], '.2f'):>10} {fmt(c['busy_percent']):>6}   {cpu}")
        r = res['ratios']
        lines.append(f"  with/without PATCHes/s {times(r['throughput_with_over_without'])}; without/with latency "
                     f"p50 {times(r['latency_p50_without_over_with'])}, p95 {times(r['latency_p95_without_over_with'])}, "
                     f"p99 {times(r['latency_p99_without_over_with'])}, mean {times(r['latency_mean_without_over_with'])}; "
                     f"p50 {fmt(res['extra_patch_ms_p50_with_capture'], '+.1f')} ms with the capture")
        per = lambda xs: ' '.join(fmt(x, '.3f') for x in xs)
        lines.append(f"  per round (on/off pairs): PATCHes/s ratio {per(r['per_round_throughput'])}; "
                     f"p50 latency ratio {per(r['per_round_latency_p50'])}")
        extra = ', '.join(f'{n} {v:+.1f}' for n, v in res['extra_cpu_ms_per_patch_with_capture'].items())
        lines.append(f'  extra CPU ms per PATCH with the capture: {extra}')
        w = {cond: res['conditions'][cond]['warmup_patch_ms'] for cond in ('on', 'off')}
        if any(v['p50'] is not None for v in w.values()):
            lines.append('  unmeasured warm-up PATCHes right after each toggle, ms p50/max: ' + '; '.join(
                f"{cond} {fmt(v['p50'])} / {fmt(v['max'])}" for cond, v in w.items()))
    return '\n'.join(lines)


def clone_template():
    """A clone of the template; retried while another session briefly holds a connection to the
    template (PostgreSQL refuses to copy a database someone is connected to)."""
    import psycopg
    for attempt in range(30):
        try:
            env.clone_template(DBNAME)
            return
        except psycopg.errors.ObjectInUse:
            if attempt == 29:
                raise
            time.sleep(2)


def report(result):
    def fmt(v, spec='.1f'):
        return '-' if v is None else format(v, spec)

    s = result['settings']
    lines = [f"netbox-outbox vs NetBox {result['netbox_version']}: {s['patches']} PATCHes of description "
             f"on {s['devices']} devices, {s['clients']} client(s), gunicorn {s['gunicorn_workers']} sync workers, "
             f"{s['rq_workers']} rqworker(s)", '']
    a = result['api']
    lines.append(f"API: PATCH ms p50/p95/p99/max {fmt(a['patch_ms']['p50'])} / {fmt(a['patch_ms']['p95'])} / "
                 f"{fmt(a['patch_ms']['p99'])} / {fmt(a['patch_ms']['max'])}, {a['patches_per_s']:.2f} PATCHes/s "
                 f"({a['duration_s']:.1f} s)")
    lines.append('')
    lines.append('e2e = webhook arrival - PATCH response back at the client (negative: before it); '
                 'from request = arrival - PATCH sent')
    lines.append(f"{'side':<14} {'delivered':>9} {'missing':>7} {'dups':>4} {'webhooks/s':>10} "
                 f"{'e2e ms p50':>10} {'p95':>8} {'p99':>8} {'max':>8} {'before resp':>11} "
                 f"{'from request p50':>16} {'p99':>8}")
    for side, name in (('netbox', 'NetBox (RQ)'), ('outbox', 'netbox-outbox')):
        f = result['sides'][side]
        e, q = f['e2e_ms'], f['from_request_ms']
        lines.append(f"{name:<14} {f['delivered']:>9} {f['missing']:>7} {f['duplicates']:>4} "
                     f"{fmt(f['webhooks_per_s'], '.2f'):>10} {fmt(e['p50']):>10} {fmt(e['p95']):>8} "
                     f"{fmt(e['p99']):>8} {fmt(e['max']):>8} {f['before_response']:>11} "
                     f"{fmt(q['p50']):>16} {fmt(q['p99']):>8}")
    r = result['ratio_outbox_to_netbox']
    lines.append('')
    def times(v, spec):
        return 'n/a' if v is None else f'x{v:{spec}}'

    diff = r['e2e_p50_difference_ms']
    if r['e2e_p50'] is not None:
        e2e = times(r['e2e_p50'], '.3f')
    elif diff is None:
        e2e = 'n/a'
    else:
        # a ratio of a negative and a positive latency means nothing: say how much earlier or later
        e2e = f"n/a (not both positive): netbox-outbox {abs(diff):.1f} ms {'earlier' if diff < 0 else 'later'}"
    lines.append(f"netbox-outbox / NetBox: webhooks/s {times(r['webhooks_per_s'], '.2f')}, e2e p50 {e2e}, "
                 f"from-request p50 {times(r['from_request_p50'], '.3f')}")
    mismatches = sum(f['request_id_mismatches'] for f in result['sides'].values())
    if mismatches:
        lines.append(f'warning: {mismatches} webhook(s) carry a request id other than their PATCH\'s')
    cpu = ', '.join(f'{name} {v:.1f}' for name, v in result['cpu_ms_per_patch'].items())
    lines.append(f'CPU ms per PATCH: {cpu}')
    m = result['machine']
    lines.append(f"machine: {m['cores']} cores, {fmt(m['busy_percent'])}% busy during the run, load average "
                 f"{' '.join(map(str, m['loadavg_before']))} before, {' '.join(map(str, m['loadavg_after']))} after")
    if not result['complete']:
        lines.append(f"INCOMPLETE: the deadline ({s['deadline_s']}s after the last PATCH) passed before both "
                     'sides had delivered everything')
    if result.get('write_cost'):
        lines.append(write_cost_report(result['write_cost']))
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-n', '--patches', type=int, default=int(os.environ.get('VERSUS_PATCHES', 300)),
                        help='PATCHes measured (default: $VERSUS_PATCHES or 300)')
    parser.add_argument('-k', '--clients', type=int, default=int(os.environ.get('VERSUS_CLIENTS', 1)),
                        help='concurrent REST clients (default: $VERSUS_CLIENTS or 1, sequential)')
    parser.add_argument('--warmup', type=int, default=5, help='PATCHes before the clock starts (default: 5)')
    parser.add_argument('--deadline', type=float, default=float(os.environ.get('VERSUS_DEADLINE', 300)),
                        help='seconds to wait after the last PATCH for every webhook (default: 300)')
    parser.add_argument('--gunicorn-workers', type=int, default=3, help='gunicorn sync workers (default: 3)')
    parser.add_argument('--rq-workers', type=int, default=1, help='NetBox RQ workers (default: 1)')
    parser.add_argument('--rounds', type=int, default=int(os.environ.get('VERSUS_ROUNDS', 6)),
                        help='write-cost rounds, each one block with the capture on and one off '
                             '(default: $VERSUS_ROUNDS or 6; 0 skips the write-cost phase)')
    parser.add_argument('--round-patches', type=int, default=int(os.environ.get('VERSUS_ROUND_PATCHES', 40)),
                        help='PATCHes per write-cost block (default: $VERSUS_ROUND_PATCHES or 40)')
    parser.add_argument('--block-warmup', type=int, default=6,
                        help='unmeasured PATCHes after each toggle of the capture (default: 6)')
    parser.add_argument('--write-cost-clients', default='1,4',
                        help='comma-separated client counts of the write-cost phase (default: 1,4)')
    parser.add_argument('--binary', help='this netbox-outbox binary instead of cargo build --release')
    parser.add_argument('--keep', action='store_true', help=f'keep the database {DBNAME}')
    parser.add_argument('--cache', required=True, help='the conformance cache directory (set by netbox-versus)')
    args = parser.parse_args()
    if args.patches < 1 or args.clients < 1 or args.warmup < 0:
        parser.error('--patches and --clients must be at least 1, --warmup at least 0')
    try:
        args.write_cost_clients = [int(k) for k in args.write_cost_clients.split(',') if k.strip()]
    except ValueError:
        parser.error('--write-cost-clients: comma-separated integers')
    if args.rounds < 0 or args.block_warmup < 0 or args.round_patches < 1 or any(k < 1 for k in args.write_cost_clients):
        parser.error('--rounds must be at least 0, --round-patches and each write-cost client count at least 1')

    workdir = OUT / 'netbox-versus'
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    # benches/out/ holds results only: keep it out of git without touching the repository's .gitignore
    gitignore = OUT / '.gitignore'
    if not gitignore.exists():
        gitignore.write_text('*\n')

    env.ensure_postgres()
    env.ensure_redis()
    if not env.database_exists(env.TEMPLATE_DB):
        raise env.SetupError(f'the NetBox template database {env.TEMPLATE_DB} does not exist: '
                             'run tests/conformance/run once (it builds it)')
    binary = Path(args.binary).resolve() if args.binary else env.cargo_build(REPO, workdir / 'cargo.log')
    if not binary.is_file():
        raise env.SetupError(f'{binary} does not exist')
    netbox = env.NetBox(sys.prefix)

    try:
        result = run(args, netbox, binary, workdir)
    finally:
        if args.keep:
            log(f'kept database {DBNAME} and {workdir}')
        else:
            env.drop_database(DBNAME)
            for db in (env.REDIS_TASKS_DB, env.REDIS_CACHING_DB):
                env.redis_client(db).flushdb()
    (OUT / 'netbox-versus.json').write_text(json.dumps(result, indent=1) + '\n')
    print(report(result))
    print(f'\nfigures: {OUT / "netbox-versus.json"}; logs: {workdir}')
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except (env.SetupError, ApiError) as e:
        print(f'netbox-versus: setup failed: {e}', file=sys.stderr)
        sys.exit(2)
