"""netbox-outbox's conformance suite against a real NetBox 4.7.3 (issue 3).

Run it with `tests/conformance/run`, which prepares the virtualenv and then runs this file with
it. For each configuration (without and with the netbox-outbox plugin) it clones the migrated
NetBox template database, applies netbox-outbox's migrations, starts NetBox (gunicorn), NetBox's
RQ worker and the sidecar, drives the scenario through NetBox's REST API, waits until both sides
have delivered everything, and pairs and compares every webhook. It writes the fidelity report to
tests/conformance/out/ and exits non-zero if anything differs outside normalise.py or a webhook is
unpaired outside the documented by-design cases.
"""

import argparse
import base64
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import compare
import environment as env
import report
from environment import log
from netbox_api import Api, ApiError
from normalise import OMITTED, Context
from receiver import Receiver
from scenario import SIGNED_SECRET, TEMPLATED_SECRET, Expectations, Scenario, ScenarioError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CATALOGUES = REPO / 'src' / 'netbox' / 'catalogue'


def catalogue_versions():
    """tools/catalogue/versions.py, which writes the merge patches and applies them (RFC 7386, as
    src/netbox/catalogue.rs does); loaded by path, as tools/ is no package."""
    spec = importlib.util.spec_from_file_location(
        'catalogue_versions', REPO / 'tools' / 'catalogue' / 'versions.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_catalogue():
    """The catalogue of the NetBox release under test, as the sidecar embeds it: 4.7.3's, with the
    release's merge patch applied when it has one (tools/catalogue/versions.py)."""
    catalogue = json.loads((CATALOGUES / 'netbox-4.7.3.json').read_text())
    patch = CATALOGUES / f'netbox-{env.NETBOX_VERSION}.patch.json'
    if patch.exists():
        catalogue = catalogue_versions().apply_patch(catalogue, json.loads(patch.read_text()))
    return catalogue
PLUGIN = 'netbox_outbox_plugin'


@dataclass
class Configuration:
    name: str
    plugin: bool
    # the capture mode the scenario runs in (the QuerySet.update() steps visit the other one too)
    capture_mode: str
    description: str


CONFIGURATIONS = [
    Configuration('no-plugin', False, 'all',
                  'NetBox without the plugin; capture_mode = all; the request block falls back'),
    Configuration('plugin', True, 'netbox',
                  'NetBox with netbox-outbox-plugin; capture_mode = netbox; the request block is exact'),
]


def catalogue_facts():
    """From netbox-outbox's model catalogue (generated from NetBox itself), what normalise.py
    needs: per object type, the data keys whose presence or value depends on the REST request
    and netbox-outbox does not compute (`annotation` fields: a viewset's own queryset annotations,
    such as a region's cumulative `site_count`), and the snapshot keys that hold JSON. `count`
    fields are not among them: netbox-outbox counts them as NetBox's viewsets do, and they are
    compared."""
    catalogue = load_catalogue()
    path_dependent, json_fields = {}, {}
    for name, model in catalogue['models'].items():
        keys = {}
        for f in model['serializer']:
            if f['kind'] == 'annotation' and f.get('when_missing') == 'omit':
                keys[f['name']] = OMITTED
            elif f['kind'] == 'annotation' and f.get('when_missing') == 'default':
                keys[f['name']] = f.get('default')
        if keys:
            path_dependent[name] = keys
        json_fields[name] = {s['name'] for s in model.get('snapshot', [])
                             if s.get('format') == 'json' or s.get('kind') == 'custom_fields'}
    return path_dependent, json_fields


def count_fields():
    """Per object type, its `count` data keys (NetBox's RelatedObjectCountFields)."""
    catalogue = load_catalogue()
    return {name: {f['name'] for f in model['serializer'] if f['kind'] == 'count'}
            for name, model in catalogue['models'].items()}


def unwatched_lists():
    """Per object type, its data keys listing rows of a model without event rules (the port
    mappings of a front or rear port), which the capture does not record."""
    catalogue = load_catalogue()
    models = catalogue['models']
    out = {}
    for name, model in models.items():
        keys = {f['name'] for f in model['serializer']
                if f['kind'] == 'related' and not models.get(f.get('model'), {}).get('event_rules', True)}
        if keys:
            out[name] = keys
    return out


def unordered_lists():
    """Per object type, its lists of object types that NetBox reads without an ordering."""
    catalogue = load_catalogue()
    out = {}
    for name, model in catalogue['models'].items():
        keys = {f['name'] for f in model['serializer'] if f['kind'] == 'content_types' and not f.get('order_by')}
        if keys:
            out[name] = keys
    return out


class Control:
    """The scenario's hooks into the run: the capture mode, the sidecar's progress, nbshell."""

    def __init__(self, netbox, root, dbname, mode, workdir):
        self.netbox = netbox
        self.root = root
        self.dbname = dbname
        self.mode = mode
        self.workdir = workdir
        self.processes = []

    def query(self, sql, params=()):
        with env.pg_connect(self.dbname) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def capture_mode(self, mode):
        log(f'capture_mode = {mode}')
        self.query("update netbox_outbox.setting set value = %s where name = 'capture_mode'", [mode])
        self.mode = mode

    def wait_caught_up(self, timeout=180):
        """Until the sidecar has read every committed change."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.processes:
                p.check()
            if self.query('select count(*) from netbox_outbox.unread_change')[0][0] == 0:
                return
            time.sleep(0.2)
        raise env.SetupError(f'the sidecar did not read the captured changes within {timeout}s')

    def nbshell(self, code):
        log(f'nbshell: {code}')
        self.netbox.shell(self.root, code, log_path=self.workdir / 'nbshell.log')


def wait_delivered(control, receiver, rq_redis, processes, timeout=600):
    """Until NetBox's queues are empty, the sidecar has nothing unread or pending, and no request
    arrived for 3 seconds."""
    from rq import Queue
    from rq.registry import StartedJobRegistry
    deadline = time.monotonic() + timeout
    last_count, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        for p in processes:
            p.check()
        busy = sum(Queue(q, connection=rq_redis).count + StartedJobRegistry(q, connection=rq_redis).count
                   for q in ('high', 'default', 'low'))
        unread = control.query('select count(*) from netbox_outbox.unread_change')[0][0]
        pending = control.query("select count(*) from netbox_outbox.delivery where state = 'pending'")[0][0]
        count = receiver.count()
        if count != last_count:
            last_count, quiet_since = count, time.monotonic()
        if busy == 0 and unread == 0 and pending == 0 and time.monotonic() - quiet_since >= 3:
            return
        time.sleep(0.5)
    raise env.SetupError(f'deliveries did not finish within {timeout}s '
                         f'(NetBox jobs busy: {busy}, unread changes: {unread}, pending deliveries: {pending})')


def wait_job(api, job, timeout=180):
    url = job['job']['url']
    path = url[url.index('/api/'):]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.get(path)['status']['value']
        if status in ('completed', 'failed', 'errored'):
            if status != 'completed':
                raise env.SetupError(f'background job {path} ended {status}: {api.get(path)}')
            return
        time.sleep(0.5)
    raise env.SetupError(f'background job {path} did not finish within {timeout}s')


SIDECAR_CONFIG = """# Written by tests/conformance.
database_url = "{url}"

[rules]
# deliver NetBox's own `webhook` rules too, so that both sides deliver the same rules
deliver_netbox_webhook_rules = true
refresh_interval = "200ms"

[delivery]
poll_interval = "200ms"
retry_schedule = ["1s", "2s", "4s"]
retry_jitter = 0

[assembly]
poll_interval = "200ms"

[metrics]
listen = ""

[log]
level = "info"

[shutdown]
grace_period = "5s"
"""


def run_configuration(cfg, netbox, binary, out, keep):
    workdir = out / cfg.name
    workdir.mkdir(parents=True)
    dbname = f"nbo_conformance_{cfg.name.replace('-', '_')}"
    log(f'=== configuration {cfg.name}: {cfg.description}')
    started = time.monotonic()

    env.clone_template(dbname)
    env.claim_redis_databases()
    root = netbox.write_instance(workdir / 'instance', dbname, [PLUGIN] if cfg.plugin else [])
    env.run([str(binary), 'migrate', '--database-url', env.database_url(dbname)],
            log_path=workdir / 'migrate.log')
    control = Control(netbox, root, dbname, cfg.capture_mode, workdir)
    control.capture_mode(cfg.capture_mode)
    netbox.shell(root, '\n'.join([
        'from users.models import Token, User',
        f"u = User.objects.create_superuser({env.API_USER!r}, 'conformance@example.com', 'not-a-password')",
        f"Token(user=u, version=1, token={env.API_TOKEN!r}, write_enabled=True).save()",
    ]), log_path=workdir / 'nbshell.log')

    receiver = Receiver(workdir / 'received.jsonl').start()
    port = env.free_port()
    processes = []
    api = None
    try:
        nb_env = netbox.env(root)
        processes.append(env.Process(
            'gunicorn', [str(netbox.gunicorn), '--bind', f'127.0.0.1:{port}', '--workers', '2', '--timeout', '300',
                         'netbox.wsgi'], workdir / 'gunicorn.log', env=nb_env, cwd=workdir))
        processes.append(env.Process(
            'rqworker', [str(netbox.command), 'rqworker', 'high', 'default', 'low'], workdir / 'rqworker.log',
            env=nb_env, cwd=workdir))
        sidecar_config = workdir / 'netbox-outbox.toml'
        sidecar_config.write_text(SIDECAR_CONFIG.format(url=env.database_url(dbname)))
        sidecar_env = {k: v for k, v in os.environ.items()
                       if not k.startswith('NETBOX_OUTBOX_') and k != 'DATABASE_URL'}
        processes.append(env.Process('sidecar', [str(binary), 'run', '--config', str(sidecar_config)],
                                     workdir / 'sidecar.log', env=sidecar_env, cwd=workdir))

        control.processes = processes
        api = Api(f'http://127.0.0.1:{port}', env.API_TOKEN, workdir / 'steps.jsonl')
        status = api.wait_ready([p.check for p in processes])
        log(f"NetBox {status.get('netbox-version')} up on port {port}; plugins: {status.get('plugins')}")
        if cfg.plugin and PLUGIN not in (status.get('plugins') or {}):
            raise env.SetupError(f'the plugin is not loaded: /api/status/ says plugins = {status.get("plugins")}')

        if cfg.plugin:
            # the plugin's request context, checked inside NetBox (plugin_check.py)
            output = netbox.shell(root, f"exec(open({str(HERE / 'plugin_check.py')!r}).read())")
            if 'plugin check: ok' not in (output or ''):
                raise env.SetupError(f'plugin_check.py did not pass: {output}')
            log('plugin check: ok')
        scenario = Scenario(api, receiver, cfg.plugin, control)
        scenario_started = time.monotonic()
        scenario.run(lambda job: wait_job(api, job))
        log(f'scenario done: {len(api.steps)} REST calls in {time.monotonic() - scenario_started:.0f}s; '
            'waiting for deliveries')
        wait_delivered(control, receiver, env.redis_client(env.REDIS_TASKS_DB), processes)
        stats = delivery_stats(control)
    finally:
        for p in reversed(processes):
            p.stop()
        receiver.stop()
        if api:
            api.close()

    (workdir / 'run.json').write_text(json.dumps({'expect': dataclasses.asdict(scenario.expect), 'stats': stats},
                                                  indent=1, default=str))
    analysis = analyse(cfg, receiver.snapshot(), api.steps, scenario.expect, stats)
    analysis.duration_s = round(time.monotonic() - started, 1)
    if not keep:
        env.drop_database(dbname)
    else:
        log(f'kept database {dbname} and {workdir}')
    return analysis


def analyse(cfg, received, steps, expect, stats):
    log(f'{cfg.name}: received {sum(r.side == "netbox" for r in received)} requests from NetBox and '
        f'{sum(r.side == "outbox" for r in received)} from netbox-outbox')
    secrets = {'signed': SIGNED_SECRET, 'templated': TEMPLATED_SECRET}
    path_dependent, json_fields = catalogue_facts()
    ctx = Context(cfg.plugin, secrets, path_dependent, json_fields, env.PG_USER,
                  mirror_paths={f'/hook/{ours}': f'/hook/{theirs}' for ours, theirs in expect.mirrors.items()},
                  count_fields=count_fields(), unwatched_lists=unwatched_lists(),
                  unordered_lists=unordered_lists())
    ctx.capture_mode = cfg.capture_mode
    by_id = {s['request_id']: s for s in steps if s.get('request_id')}
    analysis = compare.analyse(cfg.name, received, ctx, expect, by_id.get)
    analysis.rest_calls = len(steps)
    for state, n in stats['deliveries'].items():
        analysis.counts[f'outbox_deliveries_{state}'] = n
    if stats['rejected']:
        analysis.failures += [f'netbox-outbox rejected a delivery: {r}' for r in stats['rejected']]
    failed = stats['netbox_failed_jobs']
    if failed:
        analysis.failures.append(f'{failed} NetBox RQ job(s) failed (see out/{cfg.name}/rqworker.log)')
    # differences listed in compare.KNOWN_OPEN are reported as differing, and do not fail the run
    unexplained = analysis.counts.get('differing', 0) - analysis.counts.get('differing_known', 0)
    if unexplained:
        analysis.failures.append(f"{unexplained} paired webhook(s) differ")
    return analysis


def reanalyse(cfg, workdir):
    """The analysis of a finished run, from its recordings (--reanalyse)."""
    from receiver import Received
    received = []
    for line in (workdir / 'received.jsonl').read_text().splitlines():
        r = json.loads(line)
        received.append(Received(r['seq'], r['at'], r.get('mono', 0.0), r['method'], r['target'], [tuple(h) for h in r['headers']],
                                 base64.b64decode(r['body_b64'])))
    steps = [json.loads(line) for line in (workdir / 'steps.jsonl').read_text().splitlines()]
    run = json.loads((workdir / 'run.json').read_text())
    expect = Expectations(**run['expect'])
    expect.queryset_update_all = [tuple(x) for x in expect.queryset_update_all]
    expect.queryset_update_netbox = [tuple(x) for x in expect.queryset_update_netbox]
    analysis = analyse(cfg, received, steps, expect, run['stats'])
    analysis.duration_s = None
    return analysis


def delivery_stats(control):
    from rq.registry import FailedJobRegistry
    rows = control.query('select state, count(*) from netbox_outbox.delivery group by state')
    rejected = control.query("select webhook_name, event_rule_name, last_error from netbox_outbox.delivery "
                             "where state in ('rejected', 'dead') order by id limit 20")
    redis = env.redis_client(env.REDIS_TASKS_DB)
    failed = sum(FailedJobRegistry(q, connection=redis).count for q in ('high', 'default', 'low'))
    return {'deliveries': dict(rows), 'rejected': [list(r) for r in rejected], 'netbox_failed_jobs': failed}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', action='append', choices=[c.name for c in CONFIGURATIONS],
                        help='run only this configuration (repeatable; default: all)')
    parser.add_argument('--out', default=str(HERE / ('out' if env.NETBOX_VERSION == '4.7.3' else f'out-{env.NETBOX_VERSION}')),
                        help='report directory (default: %(default)s)')
    parser.add_argument('--keep', action='store_true', help='keep the databases of the run')
    parser.add_argument('--binary', help='use this netbox-outbox binary instead of cargo build --release')
    parser.add_argument('--update-docs', action='store_true',
                        help='also write the summary table to docs/fidelity.md')
    parser.add_argument('--cache', required=True, help='the cache directory (set by run)')
    parser.add_argument('--started', type=float, default=time.time(), help='when run started (set by run)')
    parser.add_argument('--reanalyse', action='store_true',
                        help='only pair, compare and report the recordings of the last run in --out')
    parser.add_argument('--prepare', action='store_true',
                        help='only make sure the template database of this NetBox version exists')
    args = parser.parse_args()
    log(f'NetBox {env.NETBOX_VERSION}')
    if args.prepare:
        env.ensure_postgres()
        env.ensure_redis()
        built = env.ensure_template(env.NetBox(sys.prefix), args.cache)
        log(f'template database {env.TEMPLATE_DB} ' + ('built' if built else 'already there'))
        return 0

    out = Path(args.out)
    configurations = [c for c in CONFIGURATIONS if not args.config or c.name in args.config]
    if args.reanalyse:
        # the timings are those of the run that recorded what is reanalysed
        try:
            timings = json.loads((out / 'fidelity.json').read_text())['timings_s']
        except (OSError, ValueError, KeyError):
            timings = {'total': 0}
        analyses = []
        for cfg in configurations:
            if (out / cfg.name / 'run.json').exists():
                analysis = reanalyse(cfg, out / cfg.name)
                analysis.configuration = cfg
                analyses.append(analysis)
        return finish(args, out, analyses, timings)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    timings = {}
    t = time.monotonic()
    env.ensure_postgres()
    env.ensure_redis()
    binary = Path(args.binary) if args.binary else env.cargo_build(REPO, out / 'cargo.log')
    timings['build'] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    netbox = env.NetBox(sys.prefix)
    built = env.ensure_template(netbox, args.cache)
    timings['template' + (' (built)' if built else ' (cached)')] = round(time.monotonic() - t, 1)

    analyses = []
    for cfg in configurations:
        analysis = run_configuration(cfg, netbox, binary, out, args.keep)
        analysis.configuration = cfg
        analyses.append(analysis)
        timings[cfg.name] = analysis.duration_s

    timings['total'] = round(time.time() - args.started, 1)
    return finish(args, out, analyses, timings)


def event_models():
    """The models the catalogue says NetBox can send events for (the README lists every one)."""
    catalogue = load_catalogue()
    return sorted(name for name, model in catalogue['models'].items() if model.get('event_rules'))


def finish(args, out, analyses, timings):
    duration = timings['total']
    models = event_models()
    md = report.write(out, analyses, timings, models)
    if args.update_docs:
        (REPO / 'docs').mkdir(exist_ok=True)
        (REPO / 'docs' / 'fidelity.md').write_text(report.summary_document(analyses, timings, models))
        report.update_readme(REPO / 'README.md', analyses, timings, models)
        log('wrote docs/fidelity.md and the table in README.md')
    print(md['summary'])
    failures = [(a.name, f) for a in analyses for f in a.failures]
    for name, f in failures:
        print(f'FAIL [{name}] {f}')
    print(f'\nconformance: {len(analyses)} configuration(s) in {duration / 60:.1f} min '
          f"({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}); report: {out}/fidelity.md")
    # identical, identical after a documented difference, and unpaired by design are counted
    # apart and never added together; failed: each differing pair and each other failure
    identical = sum(a.counts.get('identical', 0) for a in analyses)
    documented = sum(a.counts.get('documented', 0) for a in analyses)
    by_design = sum(len(a.by_design) for a in analyses)
    known = sum(a.counts.get('differing_known', 0) + a.counts.get('unpaired_known', 0) for a in analyses)
    failed = sum(a.counts.get('differing', 0) - a.counts.get('differing_known', 0) for a in analyses) + sum(
        1 for a in analyses for f in a.failures if not f.endswith('paired webhook(s) differ'))
    print(f'conformance: {identical} identical, {documented} identical after a documented difference, '
          f'{by_design} unpaired by design, {known} differing or unpaired and known (open, listed in '
          f'compare.KNOWN_OPEN), {failed} failed')
    return 1 if failures else 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except (env.SetupError, ApiError, ScenarioError) as e:
        print(f'conformance: setup failed: {e}', file=sys.stderr)
        sys.exit(2)
